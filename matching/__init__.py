"""Verification and identification over embeddings, nothing else: pair verifiers (``verifier``), the LFW / user-pairs
10-fold protocol (``protocol``) and open-set identification against a gallery (``identification``)."""
