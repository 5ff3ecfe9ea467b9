"""Face detection data: annotation readers (``readers``) and the augmenting dataset (``dataset``)."""
