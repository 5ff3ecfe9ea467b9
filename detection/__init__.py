"""Face detectors. Importing this package registers every detector (``common.registry.DETECTORS``); each
detector package has the same shape: ``model``, ``targets``/``loss``, ``postprocess``, ``detector`` (photos in,
``Detections`` out), ``config`` (schema, defaults, the detector a config describes) and ``training``."""
from detection import blazeface, mtcnn, retinaface, yolo, yunet

__all__ = ["blazeface", "mtcnn", "retinaface", "yolo", "yunet"]
