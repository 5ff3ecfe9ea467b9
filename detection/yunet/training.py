"""YuNet training: config schema, data, model, SimOTA loss and the shared trainer, wired together."""
from __future__ import annotations

import torch

from common.config import ConfigError
from common.engine import init_distributed, resolve_device
from common.points import SimOTAAssigner
from common.registry import build_model
from detection.data.dataset import FaceDetectionDataset
from detection.data.readers import read_train_val
from detection.training import PointDetectorTask, fit_detector
from detection.yunet.config import resolve_weights
from detection.yunet.detector import MODELS, load_weights, preprocess
from detection.yunet.loss import YuNetLoss
from detection.yunet.postprocess import YuNetPostprocessor
from detection.yunet.targets import INPUT_MULTIPLE


def yunet_task(cfg: dict, device: torch.device) -> PointDetectorTask:
    """The YuNet pieces the trainer calls: one training step, validation, and image grids."""
    loss = dict(cfg["loss"])
    assigner = SimOTAAssigner(loss.pop("center_radius"), loss.pop("candidate_topk"), loss.pop("iou_weight"))
    return PointDetectorTask(preprocess, YuNetLoss(assigner, **loss),
                             YuNetPostprocessor(cfg["eval"]["score_threshold"], cfg["eval"]["nms_iou"]),
                             INPUT_MULTIPLE, device)


def build_yunet_model(cfg: dict) -> torch.nn.Module:
    model_cfg = cfg["model"]
    if model_cfg["name"] not in MODELS:
        raise ConfigError(f"unknown model.name {model_cfg['name']!r}; choose from {', '.join(MODELS)}")
    model = build_model(model_cfg["name"])
    if model_cfg["pretrained"]:
        if not model_cfg["weights"]:
            raise ConfigError("model.pretrained needs model.weights (e.g. ../shared/models/yunet/yunet_n.pth) or "
                              "--weights")
        load_weights(model, resolve_weights(model_cfg["weights"]))
    return model


def run_yunet_training(cfg: dict) -> list[dict]:
    device = resolve_device(cfg["train"]["device"])
    init_distributed(device)
    tcfg = cfg["train"]
    if tcfg["input_size"] % INPUT_MULTIPLE:
        raise ConfigError(f"train.input_size must be a multiple of {INPUT_MULTIPLE}, got {tcfg['input_size']}")
    torch.manual_seed(tcfg["seed"])
    model = build_yunet_model(cfg)
    train, val = read_train_val(cfg["data"])
    augmentation = cfg["data"]["augmentation"] if cfg["data"]["augment"] else None
    train_set = FaceDetectionDataset(train, tcfg["input_size"], augmentation, seed=tcfg["seed"])
    val_set = FaceDetectionDataset(val, tcfg["input_size"], None)
    return fit_detector(model, yunet_task(cfg, device), train_set, val_set, cfg, "YuNet", device)
