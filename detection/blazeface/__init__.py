"""BlazeFace: trainable network (``model``) and MediaPipe .tflite weight import (``mediapipe_import``)."""
from .mediapipe_import import MediaPipeImportError, load_mediapipe_weights
from .model import BlazeFace, fuse_batchnorm

__all__ = ["BlazeFace", "MediaPipeImportError", "fuse_batchnorm", "load_mediapipe_weights"]
