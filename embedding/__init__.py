"""Face embedders: networks, chip alignment, the ``Embedder`` that runs them, and embedding training. Importing
this package registers every embedder (``common.registry.EMBEDDERS``) and its networks (``MODELS``)."""
from embedding import dlib_resnet, facenet, mobilefacenet, omz_reid, sface

__all__ = ["dlib_resnet", "facenet", "mobilefacenet", "omz_reid", "sface"]
