"""MTCNN (Zhang et al. 2016): P-Net, R-Net, O-Net (``model``), the three-stage cascade on whole photos
(``detector``), its box/crop helpers (``postprocess``) and stage-by-stage training. Weights import from
facenet-pytorch. Registers the ``mtcnn`` detector."""
from common.registry import DETECTORS, DetectorSpec
from detection.mtcnn.config import CALIBRATION_SET, MTCNN_DEFAULTS, mtcnn_from_config
from detection.mtcnn.training import run_mtcnn_training

DETECTORS.register("mtcnn", DetectorSpec(MTCNN_DEFAULTS, mtcnn_from_config, run_mtcnn_training,
                                         calibration_set=CALIBRATION_SET))
