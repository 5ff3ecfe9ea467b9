"""``train.py --stage detection --config configs/detection_mtcnn.yaml``: MTCNN trained stage by stage.

P-Net learns from random crops of the photos; R-Net from random crops plus the boxes the trained P-Net proposes on
the same photos (hard samples); O-Net from random crops, landmark crops and the boxes P-Net + R-Net propose. Each
stage is one run of the shared ``Trainer`` named ``MTCNN_<stage>`` (checkpoints ``MTCNN_pnet_best.pth`` etc. in
``output.checkpoint_dir``, resumable); the stage's best checkpoint is what the next stage mines with. At the end
``<checkpoint_dir>/mtcnn.pth`` holds ``{"pnet": state_dict, "rnet": ..., "onet": ...}``, which
``mtcnn_detector(weights=...)`` (``model.weights`` of the config) loads.

Stages not trained in a run come from the same checkpoint folder when an earlier run trained them
(``MTCNN_<stage>_best.pth``), else from ``model.weights``, else facenet-pytorch's weights (``model.pretrained``),
else a random initialisation.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from torchvision.utils import draw_bounding_boxes, make_grid

from common.errors import InputError
from common.checkpoint import CheckpointError, atomic_save, load_checkpoint, model_state_from_file
from common.config import ConfigError, save_config
from common.engine import Trainer, init_distributed, is_main_process, make_loader, resolve_device
from common.io import read_image
from common.metrics import average_precision
from detection.data.readers import FaceAnnotation, read_train_val
from detection.mtcnn.detector import MTCNNDetector
from detection.mtcnn.loss import BOX_LOSSES, MTCNNLoss, classification_metrics
from detection.mtcnn.model import ONet, PNet, RNet, load_facenet_weights, normalize
from detection.mtcnn.targets import (LANDMARK, NEGATIVE, PART, POSITIVE, STAGES, MTCNNSampleDataset, MTCNNSamples,
                                     Proposer, collate_samples, decode_boxes, describe, footprints_of_boxes,
                                     generate_samples)

NET_CLASSES = {"pnet": PNet, "rnet": RNet, "onet": ONet}
EXPORT_NAME = "mtcnn.pth"


# ---------------------------------------------------------------- config checks and nets


def stages_to_train(cfg: dict) -> tuple[str, ...]:
    stage = cfg["mtcnn"]["stage"]
    if stage == "all":
        return STAGES
    if stage not in STAGES:
        raise ConfigError(f"mtcnn.stage must be one of pnet, rnet, onet, all; got {stage!r}")
    return (stage,)


def _check_config(cfg: dict) -> None:
    if cfg["detector"] != "mtcnn":
        raise ConfigError(f"detector is {cfg['detector']!r}; MTCNN training needs detector: mtcnn")
    m = cfg["mtcnn"]
    if m["box_loss"] not in BOX_LOSSES:
        raise ConfigError(f"mtcnn.box_loss must be one of {', '.join(BOX_LOSSES)}, got {m['box_loss']!r}")
    for stage in STAGES:
        for key in ("epochs", "lr"):
            value = m[stage][key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"mtcnn.{stage}.{key} must be a positive number or null, got {value!r}")
        if set(m[stage]["task_weights"]) != {"cls", "box", "landmarks"}:
            raise ConfigError(f"mtcnn.{stage}.task_weights needs exactly cls, box, landmarks")
    for section in ("mining", "eval"):
        if len(m[section]["thresholds"]) != 3:
            raise ConfigError(f"mtcnn.{section}.thresholds must be three probabilities (P-Net, R-Net, O-Net)")
    unknown = set(m["eval"]["cascade_ap_stages"]) - set(STAGES)
    if unknown:
        raise ConfigError(f"mtcnn.eval.cascade_ap_stages: unknown stages {sorted(unknown)}")


def _net_of_state(state: dict) -> str | None:
    """Which of P-Net, R-Net, O-Net a state dict fits exactly, if any."""
    for name, cls in NET_CLASSES.items():
        reference = cls().state_dict()
        if set(state) == set(reference) and all(state[k].shape == reference[k].shape for k in reference):
            return name
    return None


def load_weights_file(path: str | Path) -> dict[str, dict]:
    """``{net: state_dict}`` from a ``mtcnn.pth`` (all three) or one net's checkpoint / state dict."""
    state = model_state_from_file(path)
    if isinstance(state, dict) and set(STAGES) <= set(state):
        return {name: (state[name]["model"] if "model" in state[name] else state[name]) for name in STAGES}
    net = _net_of_state(state) if isinstance(state, dict) else None
    if net is None:
        raise CheckpointError(f"{path} holds neither {{pnet, rnet, onet}} state dicts (mtcnn.pth) nor the weights "
                              "of one MTCNN net")
    return {net: state}


def initial_nets(cfg: dict, trained_here: tuple[str, ...] = ()) -> dict[str, torch.nn.Module]:
    """The three nets as a run starts them: ``model.weights`` where it has a net, else facenet-pytorch's weights
    when ``model.pretrained``, else a random initialisation. A net this run does not train (not in
    ``trained_here``) comes from this checkpoint folder instead when an earlier run trained it there
    (``MTCNN_<net>_best.pth``)."""
    nets = {name: cls() for name, cls in NET_CLASSES.items()}
    given = load_weights_file(cfg["model"]["weights"]) if cfg["model"]["weights"] else {}
    sources = {}
    for name, net in nets.items():
        path = None if name in trained_here else best_checkpoint(cfg, name)
        if path is not None:
            net.load_state_dict(load_checkpoint(path)["model"])
            sources[name] = str(path)
        elif name in given:
            net.load_state_dict(given[name])
            sources[name] = str(cfg["model"]["weights"])
        elif cfg["model"]["pretrained"]:
            load_facenet_weights(net)
            sources[name] = "facenet-pytorch"
    untrained = [name for name in STAGES[:STAGES.index(trained_here[-1])] if name not in sources and
                 name not in trained_here] if trained_here and cfg["mtcnn"]["hard_samples"] else []
    if untrained and is_main_process():
        print(f"warning: {', '.join(untrained)} would mine hard samples with random weights: train them first "
              "(--mtcnn-stage all, or the same --checkpoint-dir), or pass --pretrained / --weights")
    return nets


def checkpoint_name(stage: str) -> str:
    return f"MTCNN_{stage}"


def best_checkpoint(cfg: dict, stage: str) -> Path | None:
    """The checkpoint whose weights a stage hands on: its best, else its final one."""
    for tag in ("best", "final"):
        path = Path(cfg["output"]["checkpoint_dir"]) / f"{checkpoint_name(stage)}_{tag}.pth"
        if path.is_file():
            return path
    return None


def export_cascade(nets: dict[str, torch.nn.Module], path: str | Path) -> Path:
    """``{"pnet": state_dict, "rnet": ..., "onet": ...}``, what ``mtcnn_detector(weights=path)`` loads."""
    return atomic_save({name: {k: v.detach().cpu() for k, v in nets[name].state_dict().items()} for name in STAGES},
                       path)


# ---------------------------------------------------------------- data


def _cascade(nets: dict[str, torch.nn.Module], section: dict, device: torch.device) -> MTCNNDetector:
    """The detector on copies of the nets (it switches them to eval mode and channels_last)."""
    return MTCNNDetector(*(copy.deepcopy(nets[name]) for name in STAGES), device=device,
                         min_face=section["min_face"], thresholds=section["thresholds"], factor=section["factor"])


def cascade_proposer(detector: MTCNNDetector, through: str) -> Proposer:
    """The footprints of the boxes the cascade hands to the net after ``through`` (pnet or rnet) on one photo: the
    R-Net / O-Net inputs the detector would crop. Uses the detector's own stages, so mining and detection agree."""
    if through not in ("pnet", "rnet"):
        raise ValueError(f"proposals come after pnet or rnet, not {through!r}")
    return lambda image: footprints_of_boxes(detector.propose(image, through))


def stage_samples(cfg: dict, stage: str, annotations: list[FaceAnnotation], nets: dict, device: torch.device,
                  seed: int) -> MTCNNSamples:
    m = cfg["mtcnn"]
    proposer = None
    if stage != "pnet" and m["hard_samples"]:
        proposer = cascade_proposer(_cascade(nets, m["mining"], device), "pnet" if stage == "rnet" else "rnet")
    return generate_samples(annotations, stage, m["sampling"], seed, proposer, progress=is_main_process())


# ---------------------------------------------------------------- one stage


def _flat(outputs: tuple, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A net's outputs as (face_logits (B, 2), box_offsets (B, 4), landmarks (B, 10) or None)."""
    if stage == "onet":
        boxes, landmarks, logits = outputs
        return logits, boxes, landmarks
    boxes, logits = outputs
    return logits.flatten(1), boxes.flatten(1), None  # P-Net on 12×12 crops: 1×1 maps


class MTCNNStageTask:
    """What the trainer calls for one net: a training step, validation on held-out samples (and, for the stages in
    ``mtcnn.eval.cascade_ap_stages``, AP@0.5 of the whole cascade on the validation photos), and image grids."""

    def __init__(self, cfg: dict, stage: str, device: torch.device, nets: dict | None = None,
                 val_photos: list[FaceAnnotation] | None = None):
        self.stage, self.device = stage, device
        weights = cfg["mtcnn"][stage]["task_weights"]
        self.loss = MTCNNLoss(weights["cls"], weights["box"], weights["landmarks"], cfg["mtcnn"]["ohem_keep"],
                              cfg["mtcnn"]["box_loss"])
        self.eval_cfg, self.nets, self.val_photos = cfg["mtcnn"]["eval"], nets, val_photos

    def _forward(self, model, crops):
        return _flat(model(normalize(crops.to(self.device))), self.stage)

    def step(self, model, batch) -> dict:
        crops, labels, box_targets, landmark_targets = batch
        logits, boxes, landmarks = self._forward(model, crops)
        terms = self.loss(logits, boxes, landmarks, labels.to(self.device), box_targets.to(self.device),
                          landmark_targets.to(self.device))
        terms.update(classification_metrics(logits, labels))
        return terms

    def evaluate(self, model, loader) -> dict:
        """Figures over the whole validation set (not averaged per batch)."""
        outputs, targets = [], []
        for crops, labels, box_targets, landmark_targets in loader:
            logits, boxes, landmarks = self._forward(model, crops)
            outputs.append((logits, boxes, landmarks))
            targets.append((labels, box_targets, landmark_targets))
        logits, boxes = torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
        landmarks = torch.cat([o[2] for o in outputs]) if self.stage == "onet" else None
        labels, box_targets, landmark_targets = (torch.cat(t).to(self.device) for t in zip(*targets))
        metrics = {k: float(v) for k, v in self.loss(logits, boxes, landmarks, labels, box_targets,
                                                      landmark_targets).items()}
        metrics.update({k: float(v) for k, v in classification_metrics(logits, labels).items()})
        has_box = (labels == POSITIVE) | (labels == PART)
        if has_box.any():
            metrics["box_error"] = float((boxes[has_box] - box_targets[has_box]).abs().mean())
        if landmarks is not None and (labels == LANDMARK).any():
            is_landmark = labels == LANDMARK
            metrics["landmark_error"] = float((landmarks[is_landmark] - landmark_targets[is_landmark]).abs().mean())
        if self.val_photos:
            metrics["ap50"] = self.cascade_ap(model)
        return metrics

    def cascade_ap(self, model) -> float:
        nets = {**self.nets, self.stage: model}
        detector = _cascade(nets, self.eval_cfg, self.device)
        return cascade_average_precision(detector, self.val_photos)

    def visualize(self, model, batch, max_images: int = 16) -> torch.Tensor:
        """Validation crops (scaled to 96 px): ground-truth box green, predicted box red; red border = the net
        calls it a face."""
        order = torch.argsort((batch[1] == NEGATIVE).to(torch.int64), stable=True)  # faces first, then negatives
        chosen = torch.cat([order[:max_images // 2], order.flip(0)[:max_images - max_images // 2]]).unique()
        crops, labels, box_targets, _ = (t[chosen] for t in batch)
        logits, boxes, _ = self._forward(model, crops)
        size = crops.shape[-1]
        footprints = torch.tensor([[0.0, 0.0, size, size]]).expand(len(crops), 4)
        scale = 96 / size
        drawn = []
        for crop, label, target, box, logit, footprint in zip(crops, labels, box_targets, boxes.cpu(), logits.cpu(),
                                                               footprints):
            image = torch.nn.functional.interpolate(crop[None].float(), size=96, mode="nearest")[0].to(torch.uint8)
            if int(label) in (POSITIVE, PART, LANDMARK):
                gt = decode_boxes(footprint[None], target[None], self.stage) * scale
                image = draw_bounding_boxes(image, gt, colors="lime", width=1)
            pred = decode_boxes(footprint[None], box[None].float(), self.stage) * scale
            pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], 1)
            image = draw_bounding_boxes(image, pred, colors="red", width=1)
            if int(logit.argmax()) == 1:
                image = draw_bounding_boxes(image, torch.tensor([[0.0, 0.0, 95.0, 95.0]]), colors="red", width=2)
            drawn.append(image)
        return make_grid(drawn, nrow=8)


def cascade_average_precision(detector, annotations: list[FaceAnnotation]) -> float:
    """AP@0.5 of a photo-in detector over annotated photos (``ignore`` faces neither help nor hurt)."""
    scored = []
    for annotation in annotations:
        found = detector.detect([read_image(annotation.image_path)])[0]
        scored.append({"pred_boxes": found.boxes, "pred_scores": found.scores, "gt_boxes": annotation.boxes,
                       "gt_ignore": annotation.ignore})
    return average_precision(scored).ap


def _resume_stage(path: str | Path) -> str:
    """The net whose weights a checkpoint holds."""
    net = _net_of_state(load_checkpoint(path)["model"])
    if net is None:
        raise CheckpointError(f"{path} is not a checkpoint of an MTCNN net")
    return net


def train_stage(cfg: dict, stage: str, nets: dict, train_annotations, val_annotations, device: torch.device,
                val_photos, resume: str | Path | None) -> list[dict]:
    """Train ``nets[stage]`` in place with the shared trainer; afterwards it holds the stage's best weights."""
    tcfg, out = cfg["train"], cfg["output"]
    scfg = cfg["mtcnn"][stage]
    epochs = int(scfg["epochs"] or tcfg["epochs"])
    lr = float(scfg["lr"] or tcfg["lr"])
    model = nets[stage]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tcfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr * 0.01)
    with_ap = bool(val_photos) and stage in cfg["mtcnn"]["eval"]["cascade_ap_stages"]
    task = MTCNNStageTask(cfg, stage, device, nets, val_photos if with_ap else None)
    has_val = bool(val_annotations)
    trainer = Trainer(model, optimizer, scheduler, task.step, out["checkpoint_dir"], out["log_dir"],
                      checkpoint_name(stage), device, epochs, copy.deepcopy(cfg), evaluate_fn=task.evaluate,
                      visualize_fn=task.visualize, grad_clip=tcfg["grad_clip"], amp=tcfg["amp"],
                      checkpoint_every=tcfg["checkpoint_every"],
                      best_metric="ap50" if with_ap else "loss", best_mode="max" if with_ap else "min",
                      seed=tcfg["seed"])
    resume = resume or (trainer.auto_resume_path() if out["auto_resume"] else None)
    if resume and load_checkpoint(resume)["epoch"] >= epochs and best_checkpoint(cfg, stage) is not None:
        # Finished in an earlier run: no samples to make, its best weights go on to the next stage.
        if trainer.writer is not None:
            trainer.writer.close()
        model.load_state_dict(load_checkpoint(best_checkpoint(cfg, stage))["model"])
        if is_main_process():
            print(f"{checkpoint_name(stage)}: already trained for {epochs} epochs ({resume}); using its weights")
        return []
    seed = tcfg["seed"]
    train_samples = stage_samples(cfg, stage, train_annotations, nets, device, seed)
    if len(train_samples) == 0:
        raise InputError(f"no {stage} training samples could be made from {cfg['data']['train']}: are there faces "
                         f"of at least mtcnn.sampling.min_face_size = {cfg['mtcnn']['sampling']['min_face_size']} px?")
    # Validation crops are cut with another seed: held-out crops even when the validation photos are the training ones.
    val_samples = stage_samples(cfg, stage, val_annotations, nets, device, seed + 1) if has_val else None
    if is_main_process():
        print(f"{checkpoint_name(stage)} samples: train {describe(train_samples)}"
              + (f"; val {describe(val_samples)}" if val_samples is not None else ""))
    augmentation = cfg["data"]["augmentation"] if cfg["data"]["augment"] else None
    train_set = MTCNNSampleDataset(train_samples, augmentation, seed=seed)
    train_loader = make_loader(train_set, tcfg["batch_size"], True, tcfg["num_workers"], collate_samples, seed)
    val_loader = (make_loader(MTCNNSampleDataset(val_samples), tcfg["batch_size"], False, tcfg["num_workers"],
                              collate_samples, seed) if val_samples is not None and len(val_samples) else None)
    if resume:
        trainer.resume(resume)
    history = trainer.fit(train_loader, val_loader)
    if dist.is_initialized():
        dist.barrier()  # rank 0 alone writes the checkpoints; every rank goes on with the same best weights
    model.load_state_dict(load_checkpoint(best_checkpoint(cfg, stage), map_location="cpu")["model"])
    return history


def run_mtcnn_training(cfg: dict) -> dict[str, list[dict]]:
    """Train the stages of ``mtcnn.stage`` in order; returns ``{stage: per-epoch history}`` (empty for a stage an
    earlier run already finished) and writes ``<checkpoint_dir>/mtcnn.pth``."""
    _check_config(cfg)
    stages = stages_to_train(cfg)
    device = resolve_device(cfg["train"]["device"])
    init_distributed(device)
    torch.manual_seed(cfg["train"]["seed"])
    out = cfg["output"]
    resume_stage = _resume_stage(out["resume"]) if out["resume"] else None
    if resume_stage is not None and resume_stage not in stages:
        raise ConfigError(f"--resume {out['resume']} holds {resume_stage} weights, but this run trains "
                          f"{', '.join(stages)}")
    train_annotations, val_annotations = read_train_val(cfg["data"])
    nets = initial_nets(cfg, stages)
    if is_main_process():
        save_config(cfg, out["checkpoint_dir"])
    ap_stages = set(cfg["mtcnn"]["eval"]["cascade_ap_stages"]) & set(stages)
    val_photos = list(val_annotations) if ap_stages and val_annotations else None
    histories = {}
    for stage in stages:
        histories[stage] = train_stage(cfg, stage, nets, train_annotations, val_annotations, device, val_photos,
                                       out["resume"] if stage == resume_stage else None)
    if is_main_process():
        path = export_cascade(nets, Path(out["checkpoint_dir"]) / EXPORT_NAME)
        print(f"MTCNN cascade written to {path}")
    return histories


__all__ = ["EXPORT_NAME", "MTCNNStageTask", "cascade_average_precision", "cascade_proposer", "export_cascade",
           "initial_nets", "load_weights_file", "run_mtcnn_training", "stages_to_train", "train_stage"]
