"""Face detection data: annotation readers (one box convention: float32 xyxy pixels)."""
from detection.data.readers import (
    ANNOTATION_FORMATS,
    LANDMARK_NAMES,
    AnnotationError,
    FaceAnnotation,
    detect_format,
    read_annotations,
    read_coco,
    read_csv,
    read_dlib_xml,
    read_retinaface_label,
    read_wider_txt,
    split_by_image,
)

__all__ = [
    "ANNOTATION_FORMATS",
    "LANDMARK_NAMES",
    "AnnotationError",
    "FaceAnnotation",
    "detect_format",
    "read_annotations",
    "read_coco",
    "read_csv",
    "read_dlib_xml",
    "read_retinaface_label",
    "read_wider_txt",
    "split_by_image",
]
