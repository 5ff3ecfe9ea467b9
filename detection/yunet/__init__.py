"""YuNet (libfacedetection.train's 76k-parameter anchor-free detector with 5 landmarks): network, points, loss,
photo detector, training. Registers the ``yunet`` detector."""
from common.registry import DETECTORS, DetectorSpec
from detection.yunet.config import CALIBRATION_SET, NAME, YUNET_DEFAULTS, yunet_from_config
from detection.yunet.training import run_yunet_training

DETECTORS.register(NAME, DetectorSpec(YUNET_DEFAULTS, yunet_from_config, run_yunet_training,
                                      calibration_set=CALIBRATION_SET))
