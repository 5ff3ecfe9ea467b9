"""YOLO-style anchor-free face detector (CSP backbone, PAN, decoupled heads, SimOTA): network, targets, loss,
photo detector, mosaic data, pseudo-labelling by an injected teacher, training. Registers the ``yolo`` detector;
its trainer takes a ``teacher_factory`` (the composition root supplies the fused detectors)."""
from common.registry import DETECTORS, DetectorSpec
from detection.yolo.config import CALIBRATION_SET, NAME, YOLO_DEFAULTS, yolo_from_config
from detection.yolo.training import run_yolo_training

DETECTORS.register(NAME, DetectorSpec(YOLO_DEFAULTS, yolo_from_config, run_yolo_training,
                                      train_parts=("teacher_factory",), calibration_set=CALIBRATION_SET))
