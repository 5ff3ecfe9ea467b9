"""RetinaFace (MobileNet-0.25 / ResNet-50): network, anchors and targets, loss, photo detector, training.
Registers the ``retinaface`` detector."""
from common.registry import DETECTORS, DetectorSpec
from detection.retinaface.config import CALIBRATION_SET, RETINAFACE_DEFAULTS, retinaface_from_config
from detection.retinaface.training import run_retinaface_training

DETECTORS.register("retinaface", DetectorSpec(RETINAFACE_DEFAULTS, retinaface_from_config,
                                              run_retinaface_training, calibration_set=CALIBRATION_SET))
