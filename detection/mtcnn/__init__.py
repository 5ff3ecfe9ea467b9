"""MTCNN (Zhang et al. 2016): P-Net, R-Net, O-Net (``model``), the three-stage cascade on whole photos
(``detector``) and its box/crop helpers (``postprocess``). Weights import from facenet-pytorch."""
