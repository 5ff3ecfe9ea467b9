"""BlazeFace: trainable network (``model``) and MediaPipe .tflite weight import (``mediapipe_import``)."""
from .model import BlazeFace, fuse_batchnorm

__all__ = ["BlazeFace", "fuse_batchnorm"]
