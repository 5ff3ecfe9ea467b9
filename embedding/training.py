"""Embedding training: identity folders → aligned chips → P×K batches → triplet (and/or ArcFace) loss, through the
shared Trainer. Validation is face verification on pairs of held-out identities (ROC AUC picks the best checkpoint).

Every checkpoint records the identities the run trained on (``train_identities``) and validated on
(``val_identities``), with the chip alignment and input normalisation, so that ``embedder_from_checkpoint`` rebuilds
the exact test-time ``Embedder`` and evaluate.py can refuse to score a model on people it has seen
(``training_identities``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import DataLoader

from common.errors import InputError
from common.checkpoint import CheckpointError, load_checkpoint, model_state_from_file
from common.config import ConfigError, save_config
from common.lfw import lfw_fold_identities
from common.engine import Trainer, init_distributed, is_main_process, resolve_device
from common.registry import EMBEDDERS, build_model
from embedding.align import ARCFACE_TEMPLATE_112, scaled_template
from embedding.degrade import chip_face_width, degrade_chips
from embedding.data import (ALIGN_MODES, DEFAULT_AUGMENTATION, IdentityFolderDataset, PKSampler, cache_folder,
                            collate_chips, prepare_chips, scan_identity_folders,
                            split_identities)
from embedding.dlib_landmarks import LANDMARKER_FILE, LandmarkerAlignment, landmarker_alignment
from embedding.embedder import Alignment, Embedder, file_sha256
from embedding.losses import MINING, ArcFaceHead, TripletLoss, arcface_terms

LOSS_TYPES = ("triplet", "arcface", "both", "distill")  # distill: the distillation term alone (no labels used)
PUBLISHED = "published"  # model.weights: start from the published weights of model.embedder
DEFAULT_INPUT_MEAN, DEFAULT_INPUT_STD = 127.5, 128.0  # (x - 127.5) / 128, as facenet-pytorch and MobileFaceNet

EMBEDDING_DEFAULTS = {
    "stage": "embedding",
    # embedder: the registered embedder whose chip alignment and input normalisation training uses (built with
    # random weights just to read them); null = chip_size px chips on the ArcFace template, (x - 127.5) / 128.
    # embedding_dim: null = the model's own; weights: a state_dict or checkpoint file to start from.
    "model": {"name": "mobilefacenet", "embedder": "mobilefacenet", "weights": None, "embedding_dim": None,
              "chip_size": None},
    # root/<identity>/<image>. align: none (images already are aligned chips: the central crop_fraction is resized)
    # or mtcnn (detect + 5-point alignment, once, cached under cache_dir). lfw_people + lfw_train_folds restrict the
    # identities to LFW View-2 folds (1-based); identities: an explicit list. Identities with fewer than
    # min_images images are not used; val_fraction of the rest are held out for verification pairs.
    "data": {"root": None, "cache_dir": "runs/embedding/chips", "align": "mtcnn", "crop_fraction": 1.0,
             "lfw_people": None,
             "lfw_train_folds": [], "identities": None, "min_images": 2, "val_fraction": 0.1, "split_seed": 42,
             "images_per_identity": 4, "fewer_than_k": "replace", "val_max_pairs": 3000, "augment": True,
             "augmentation": dict(DEFAULT_AUGMENTATION)},
    # distill (small faces): with a teacher (a registered embedder with the model's chips), a degraded_fraction of
    # each batch is shown to the model as faces face_px wide (embedding.degrade), and 1 - cosine between the
    # model's embedding and the teacher's of the clean chip is added with this weight (loss.type distill: alone).
    # Validation then also scores clean against val_face_px chips (auc_small), which picks the best epoch.
    "loss": {"type": "triplet", "mining": "batch_hard", "margin": 0.2, "arcface_scale": 64.0,
             "arcface_margin": 0.5, "arcface_weight": 1.0,
             "distill": {"teacher": None, "weight": 1.0, "degraded_fraction": 0.75, "face_px": [12.0, 48.0],
                         "val_face_px": 20.0}},
    # batch_size = P identities × data.images_per_identity images
    "train": {"epochs": 50, "batch_size": 64, "lr": 1e-3, "weight_decay": 5e-4, "grad_clip": 10.0,
              "num_workers": 2, "device": "auto", "seed": 0, "amp": True, "checkpoint_every": 10},
    "output": {"checkpoint_dir": "runs/embedding/checkpoints", "log_dir": "runs/embedding/logs", "resume": None,
               "auto_resume": True},
}


class EmbeddingNet(nn.Module):
    """The trained module: a registered backbone, plus the ArcFace head when the loss uses one.
    ``forward(images)`` → (B, D) embeddings; ``forward(images, labels)`` with a head → (embeddings, logits)."""

    def __init__(self, backbone: nn.Module, head: ArcFaceHead | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        embeddings = self.backbone(images)
        if self.head is None or labels is None:
            return embeddings
        return embeddings, self.head(embeddings, labels)


BACKBONE_PREFIX = "backbone."


def build_backbone(model_cfg: dict) -> nn.Module:
    kwargs = {} if model_cfg["embedding_dim"] is None else {"embedding_dim": model_cfg["embedding_dim"]}
    try:
        return build_model(model_cfg["name"], **kwargs)
    except TypeError as error:
        raise ConfigError(f"model {model_cfg['name']!r} cannot be built with {kwargs}: {error}") from None


def chip_conventions(model_cfg: dict) -> tuple[Alignment, list[float], list[float]]:
    """(alignment, mean, std) training uses: the registered embedder's, or the defaults at model.chip_size."""
    if model_cfg["embedder"]:
        embedder = EMBEDDERS.get(model_cfg["embedder"])(weights=None, device="cpu")
        alignment = embedder.alignment
        if model_cfg["chip_size"] not in (None, alignment.size):
            raise ConfigError(f"model.chip_size {model_cfg['chip_size']} differs from the {model_cfg['embedder']} "
                              f"embedder's {alignment.size}; set one of them only")
        return alignment, embedder.mean.flatten().tolist(), embedder.std.flatten().tolist()
    if not model_cfg["chip_size"]:
        raise ConfigError("set model.embedder (a registered embedder) or model.chip_size")
    size = model_cfg["chip_size"]
    template = tuple(map(tuple, scaled_template(size, ARCFACE_TEMPLATE_112).tolist()))
    return Alignment(size, template, 0.0), [DEFAULT_INPUT_MEAN] * 3, [DEFAULT_INPUT_STD] * 3


# ---- data ------------------------------------------------------------------------------------------------
def identity_pool(data_cfg: dict) -> dict[str, list[Path]]:
    """{identity: source images} the config selects, before chips are made."""
    if not data_cfg["root"]:
        raise ConfigError("no training data: set data.root (a folder of root/<identity>/<image>)")
    wanted = None
    if data_cfg["lfw_train_folds"]:
        if not data_cfg["lfw_people"]:
            raise ConfigError("data.lfw_train_folds needs data.lfw_people (LFW's people.txt)")
        wanted = lfw_fold_identities(data_cfg["lfw_people"], data_cfg["lfw_train_folds"])
    if data_cfg["identities"] is not None:
        listed = set(data_cfg["identities"])
        wanted = sorted(listed if wanted is None else listed & set(wanted))
    images = scan_identity_folders(data_cfg["root"], wanted)
    return {name: paths for name, paths in images.items() if len(paths) >= data_cfg["min_images"]}


def _distributed_rank() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def prepare_data(cfg: dict, alignment: Alignment, device: torch.device, show_progress: bool = True,
                 detector_factory=None):
    """(train chips, val chips) as {identity: chip paths}. Rank 0 makes missing chips; the others wait, then
    read the same cache. ``data.align: mtcnn`` finds the faces with ``detector_factory(device)``."""
    data = cfg["data"]
    if data["align"] not in ALIGN_MODES:
        raise ConfigError(f"data.align must be one of {', '.join(ALIGN_MODES)}, got {data['align']!r}")
    pool = identity_pool(data)
    cache = cache_folder(data["cache_dir"], data["align"], alignment, data["crop_fraction"])
    rank, _ = _distributed_rank()
    chips = report = None
    for turn in (0, 1):  # rank 0 prepares first; the others then find every chip made
        if (rank == 0) == (turn == 0):
            detector = None
            if data["align"] == "mtcnn" and rank == 0:
                if detector_factory is None:
                    raise ConfigError("data.align: mtcnn needs a face detector; train through train.py (or "
                                      "pipeline.train_embedder), which supplies MTCNN")
                detector = detector_factory(str(device))
            chips, report = prepare_chips(pool, cache, data["align"], alignment, data["crop_fraction"], detector,
                                          show_progress=show_progress and rank == 0)
        if dist.is_initialized() and turn == 0:
            dist.barrier()
    if is_main_process() and (report.unreadable or report.no_face or report.skipped_files):
        print(f"chips: {report.chips} in {cache}; skipped {len(report.skipped_files)} source images "
              f"(this run: {report.unreadable} unreadable, {report.no_face} without a face; "
              f"see {cache / 'skipped.tsv'})")
    chips = {name: paths for name, paths in chips.items() if len(paths) >= data["min_images"]}
    train_names, val_names = split_identities(list(chips), data["val_fraction"], data["split_seed"])
    return {n: chips[n] for n in train_names}, {n: chips[n] for n in val_names}


# ---- verification metric ---------------------------------------------------------------------------------
def verification_pairs(labels: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """((M, 2) index pairs, (M,) same-identity flags): up to ``max_pairs`` same-identity pairs and as many
    different-identity pairs, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    first, second = np.triu_indices(len(labels), k=1)
    same = labels[first] == labels[second]
    positives = np.flatnonzero(same)
    negatives = np.flatnonzero(~same)
    count = min(len(positives), len(negatives), max_pairs)
    chosen = np.concatenate([rng.choice(positives, count, replace=False), rng.choice(negatives, count, replace=False)])
    return np.stack([first[chosen], second[chosen]], 1), same[chosen]


def verification_metrics(embeddings: torch.Tensor, labels, max_pairs: int = 3000, seed: int = 0,
                         second: torch.Tensor | None = None) -> dict:
    """ROC AUC and best-threshold accuracy of cosine similarity on balanced same/different pairs; ``second``: the
    same images embedded another way (e.g. as small faces), each pair's second image taken from it."""
    labels = np.asarray(labels)
    pairs, same = verification_pairs(labels, max_pairs, seed)
    if len(pairs) == 0 or same.all():
        raise InputError("verification needs same-identity and different-identity pairs: at least two identities, "
                         "one of them with two images")
    normalised = F.normalize(embeddings.float(), dim=1)
    others = normalised if second is None else F.normalize(second.float(), dim=1)
    similarity = (normalised[pairs[:, 0]] * others[pairs[:, 1]]).sum(1).numpy()
    false_positive_rate, true_positive_rate, _ = roc_curve(same, similarity)
    balanced_accuracy = ((true_positive_rate + 1 - false_positive_rate) / 2).max()  # pairs are balanced
    return {"auc": float(roc_auc_score(same, similarity)), "accuracy": float(balanced_accuracy),
            "pairs": float(len(pairs))}


# ---- task ------------------------------------------------------------------------------------------------
class EmbeddingTask:
    """The training step and validation the Trainer calls; ``teacher`` (an ``Embedder``): small-face distillation
    (``loss.distill``) on chips whose faces are ``chip_face_px`` wide."""

    def __init__(self, cfg: dict, mean, std, device: torch.device, teacher: Embedder | None = None,
                 chip_face_px: float | None = None):
        loss = cfg["loss"]
        if loss["type"] not in LOSS_TYPES:
            raise ConfigError(f"loss.type must be one of {', '.join(LOSS_TYPES)}, got {loss['type']!r}")
        if loss["mining"] not in MINING:
            raise ConfigError(f"loss.mining must be one of {', '.join(MINING)}, got {loss['mining']!r}")
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
        self.use_triplet = loss["type"] in ("triplet", "both")
        self.use_arcface = loss["type"] in ("arcface", "both")
        self.triplet = TripletLoss(loss["margin"], loss["mining"])
        self.arcface_weight = loss["arcface_weight"]
        self.val_max_pairs, self.val_seed = cfg["data"]["val_max_pairs"], cfg["data"]["split_seed"]
        self.distill = loss["distill"]
        self.teacher, self.chip_face_px = teacher, chip_face_px
        if self.teacher is not None:
            self.teacher.model.to(device).eval().requires_grad_(False)
            self.teacher_mean, self.teacher_std = self.teacher.mean.to(device), self.teacher.std.to(device)
        self.generator = torch.Generator().manual_seed(cfg["train"]["seed"])

    def normalize(self, chips: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 → float input, as ``Embedder.preprocess``."""
        return (chips.to(self.device).float() - self.mean) / self.std

    def degrade(self, chips: torch.Tensor, count: int, face_px: tuple[float, float]) -> torch.Tensor:
        """``chips`` with ``count`` of them, drawn at random, degraded to faces of ``face_px`` (low, high) px."""
        chosen = torch.randperm(len(chips), generator=self.generator)[:count]
        low, high = face_px
        sizes = low + torch.rand(count, generator=self.generator) * (high - low)
        degraded = chips.clone()
        degraded[chosen] = degrade_chips(chips[chosen], sizes, self.chip_face_px, self.generator)
        return degraded

    def step(self, model, batch) -> dict:
        chips, labels = batch
        labels = labels.to(self.device)
        shown = chips
        if self.teacher is not None:
            with torch.no_grad():
                target = F.normalize(self.teacher.model(
                    (chips.to(self.device).float() - self.teacher_mean) / self.teacher_std).float(), dim=1)
            shown = self.degrade(chips, round(self.distill["degraded_fraction"] * len(chips)),
                                 tuple(self.distill["face_px"]))
        if self.use_arcface:
            embeddings, logits = model(self.normalize(shown), labels)
        else:
            embeddings = model(self.normalize(shown))
        if self.teacher is not None and not (self.use_triplet or self.use_arcface):  # loss.type distill
            distill = (1 - (F.normalize(embeddings.float(), dim=1) * target).sum(1)).mean()
            return {"distill_loss": distill.detach(), "loss": self.distill["weight"] * distill}
        terms = self.triplet(embeddings, labels)
        total = terms.pop("loss")
        terms["triplet_loss"] = total
        if self.teacher is not None:
            distill = (1 - (F.normalize(embeddings.float(), dim=1) * target).sum(1)).mean()
            terms["distill_loss"] = distill
            total = total + self.distill["weight"] * distill
        if self.use_arcface:
            arcface = arcface_terms(logits.float(), labels)
            terms.update(arcface)
            weighted = self.arcface_weight * arcface["arcface_loss"]
            total = total + weighted if self.use_triplet else weighted
        if not self.use_triplet:
            terms = {k: v.detach() for k, v in terms.items()}
        terms["loss"] = total
        return terms

    def embed(self, model, loader) -> tuple[torch.Tensor, np.ndarray]:
        embeddings, labels = [], []
        for chips, batch_labels in loader:
            embeddings.append(model(self.normalize(chips)).float().cpu())
            labels.append(batch_labels.numpy())
        return torch.cat(embeddings), np.concatenate(labels)

    def evaluate(self, model, loader) -> dict:
        embeddings, labels = self.embed(model, loader)
        metrics = verification_metrics(embeddings, labels, self.val_max_pairs, self.val_seed)
        if self.teacher is not None:  # clean chips against the same chips at val_face_px, degraded alike each time
            generator_state = self.generator.get_state()
            self.generator.manual_seed(self.val_seed)
            face_px = float(self.distill["val_face_px"])
            small, _ = self.embed(model, ((self.degrade(chips, len(chips), (face_px, face_px)), batch_labels)
                                          for chips, batch_labels in loader))
            self.generator.set_state(generator_state)
            cross = verification_metrics(embeddings, labels, self.val_max_pairs, self.val_seed, second=small)
            metrics.update({"auc_small": cross["auc"], "accuracy_small": cross["accuracy"]})
        return metrics


def plain_loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
    """In order, unsharded: every process validates on the whole set and gets the same metric."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_chips)


def alignment_record(alignment: Alignment) -> dict:
    record = {"size": alignment.size, "template": [list(p) for p in alignment.template], "margin": alignment.margin,
              "key": alignment.key}
    if isinstance(alignment, LandmarkerAlignment):  # chips cut from dlib's landmarker: rebuilt from the same file
        record["landmarker_sha256"] = alignment.landmarker.file_hash
    return record


def alignment_from_record(record: dict, path) -> Alignment:
    """The chip alignment a checkpoint was trained with (``alignment_record``)."""
    template = tuple(map(tuple, record["template"]))
    if "landmarker_sha256" not in record:
        return Alignment(record["size"], template, record["margin"])
    alignment = landmarker_alignment(template, record["margin"], record["size"])
    if alignment.landmarker.file_hash != record["landmarker_sha256"]:
        raise CheckpointError(f"{path} was trained on chips from dlib's landmarker with SHA-256 "
                              f"{record['landmarker_sha256'][:16]}…, not the installed {LANDMARKER_FILE} "
                              f"({alignment.landmarker.file_hash[:16]}…)")
    return alignment


def distillation_teacher(cfg: dict, alignment: Alignment, device: torch.device) -> Embedder | None:
    """The frozen teacher ``loss.distill.teacher`` names (None without one); it must cut the model's chips."""
    name = cfg["loss"]["distill"]["teacher"]
    if name is None:
        if cfg["loss"]["type"] == "distill":
            raise ConfigError("loss.type distill needs loss.distill.teacher (a registered embedder)")
        return None
    teacher = EMBEDDERS.get(name)(device=device)
    if teacher.alignment.key != alignment.key:
        raise ConfigError(f"loss.distill.teacher {name} cuts other chips ({teacher.alignment.key}) than the model "
                          f"({alignment.key}); set model.embedder: {name}")
    return teacher


def run_embedding_training(cfg: dict, detector_factory=None) -> list[dict]:
    """Train an embedder; ``detector_factory(device)`` gives the photo detector ``data.align: mtcnn`` aligns with."""
    device = resolve_device(cfg["train"]["device"])
    init_distributed(device)
    rank, world_size = _distributed_rank()
    tcfg, data = cfg["train"], cfg["data"]
    torch.manual_seed(tcfg["seed"])
    k = data["images_per_identity"]
    if tcfg["batch_size"] % k:
        raise ConfigError(f"train.batch_size {tcfg['batch_size']} must be a multiple of data.images_per_identity "
                          f"{k} (batches are P identities × K images)")
    alignment, mean, std = chip_conventions(cfg["model"])
    train_chips, val_chips = prepare_data(cfg, alignment, device, detector_factory=detector_factory)
    augmentation = data["augmentation"] if data["augment"] else None
    train_set = IdentityFolderDataset(train_chips, augmentation, seed=tcfg["seed"])
    sampler = PKSampler(train_set.labels, tcfg["batch_size"] // k, k, seed=tcfg["seed"], rank=rank,
                        world_size=world_size, fewer_than_k=data["fewer_than_k"], min_images=data["min_images"])
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=tcfg["num_workers"],
                              collate_fn=collate_chips)
    val_loader = None
    if len(val_chips) >= 2:
        val_loader = plain_loader(IdentityFolderDataset(val_chips), tcfg["batch_size"],
                                  tcfg["num_workers"])

    backbone = build_backbone(cfg["model"])
    if cfg["model"]["weights"] == PUBLISHED:
        if not cfg["model"]["embedder"]:
            raise ConfigError(f"model.weights: {PUBLISHED} needs model.embedder, whose published weights to start from")
        backbone.load_state_dict(EMBEDDERS.get(cfg["model"]["embedder"])(device="cpu").model.state_dict())
    elif cfg["model"]["weights"]:
        backbone.load_state_dict(_backbone_state(model_state_from_file(cfg["model"]["weights"])))
    teacher = distillation_teacher(cfg, alignment, device)
    head = None
    if cfg["loss"]["type"] in ("arcface", "both"):
        with torch.no_grad():
            dim = backbone.eval()(torch.zeros(2, 3, alignment.size, alignment.size)).shape[1]
        head = ArcFaceHead(dim, len(train_set.identities), cfg["loss"]["arcface_scale"], cfg["loss"]["arcface_margin"])
    model = EmbeddingNet(backbone, head)
    task = EmbeddingTask(cfg, mean, std, device, teacher, chip_face_width(alignment.template))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(tcfg["epochs"], 1),
                                                           eta_min=tcfg["lr"] * 0.01)
    extra = {"train_identities": train_set.identities, "val_identities": sorted(val_chips),
             "alignment": alignment_record(alignment), "normalization": {"mean": mean, "std": std}}
    out = cfg["output"]
    trainer = Trainer(model, optimizer, scheduler, task.step, out["checkpoint_dir"], out["log_dir"],
                      cfg["model"]["name"], device, tcfg["epochs"], copy.deepcopy(cfg), evaluate_fn=task.evaluate,
                      grad_clip=tcfg["grad_clip"], amp=tcfg["amp"], checkpoint_every=tcfg["checkpoint_every"],
                      best_metric=("auc_small" if teacher else "auc") if val_loader else "loss",
                      best_mode="max" if val_loader else "min",
                      seed=tcfg["seed"], extra=extra)
    if is_main_process():
        save_config(cfg, out["checkpoint_dir"])
        print(f"embedding training: {len(train_set.identities)} identities ({len(train_set)} chips, "
              f"{len(sampler)} P×K batches per epoch per process), {len(val_chips)} validation identities")
    resume = out["resume"] or (trainer.auto_resume_path() if out["auto_resume"] else None)
    if resume:
        trainer.resume(resume)
    return trainer.fit(train_loader, val_loader)


# ---- what evaluate.py needs ------------------------------------------------------------------------------
def _backbone_state(state: dict) -> dict:
    """The backbone's weights from an EmbeddingNet state (keys ``backbone.*``) or a bare backbone state."""
    if any(key.startswith(BACKBONE_PREFIX) for key in state):
        return {key[len(BACKBONE_PREFIX):]: value for key, value in state.items() if key.startswith(BACKBONE_PREFIX)}
    return state


def _embedding_checkpoint(path) -> dict:
    state = load_checkpoint(path)
    missing = [key for key in ("train_identities", "alignment", "normalization") if key not in state]
    if missing or (state.get("config") or {}).get("stage") != "embedding":
        raise CheckpointError(f"{path} is not an embedding-training checkpoint (no {', '.join(missing) or 'stage'})")
    return state


def embedder_from_checkpoint(path, device: str | torch.device = "cpu", batch_size: int = 64) -> Embedder:
    """The test-time Embedder of a trained checkpoint: its backbone, chip alignment and normalisation."""
    state = _embedding_checkpoint(path)
    model_cfg = state["config"]["model"]
    backbone = build_backbone(model_cfg)
    backbone.load_state_dict(_backbone_state(state["model"]))
    alignment = alignment_from_record(state["alignment"], path)
    return Embedder(f"{model_cfg['name']}-trained", backbone, alignment, state["normalization"]["mean"],
                    state["normalization"]["std"], weights_hash=file_sha256(path), device=device,
                    batch_size=batch_size)


def training_identities(path) -> set[str]:
    """Every identity a checkpoint's run saw: trained on, or held out to pick the best epoch. A model must not be
    scored on pairs of these people."""
    state = _embedding_checkpoint(path)
    return set(state["train_identities"]) | set(state.get("val_identities", []))
