"""BlazeFace (MediaPipe's short-range face detector and a 256-px back variant): network, MediaPipe .tflite weight
import, anchors and targets, loss, photo detector, training. Registers the ``blazeface`` detector."""
from common.registry import DETECTORS, DetectorSpec
from detection.blazeface.config import BLAZEFACE_DEFAULTS, CALIBRATION_SET, blazeface_from_config
from detection.blazeface.training import run_blazeface_training

DETECTORS.register("blazeface", DetectorSpec(BLAZEFACE_DEFAULTS, blazeface_from_config,
                                             run_blazeface_training, calibration_set=CALIBRATION_SET))
