"""Embedding training: losses with hand-computed values, P×K sampling, LFW folds, chips, a real tiny run on LFW,
resume, checkpoint contents (training identities), and DDP on gloo."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.config import ConfigError
from common.io import read_image
from common.registry import EMBEDDERS, MODELS, register_embedder, register_model
from common.lfw import lfw_fold_identities, read_lfw_people_folds
from embedding.data import (DEFAULT_AUGMENTATION, DatasetError, IdentityFolderDataset, PKSampler, prepare_chips,
                            scan_identity_folders)
from embedding.align import scaled_template
from embedding.degrade import chip_face_width, degrade_chips
from embedding.embedder import Alignment, Embedder
from embedding.losses import ArcFaceHead, TripletLoss, pairwise_distances, semi_hard_triplet
from embedding.training import (EMBEDDING_DEFAULTS, distillation_teacher, embedder_from_checkpoint,
                                training_identities, verification_metrics)
from tests.conftest import ROOT, shared_path

TINY_MODEL = "test_tiny_embedding_net"
TINY_CHIP = 48


class TinyEmbeddingNet(nn.Module):
    """(B, 3, S, S) → (B, D): three strided conv/BN/ReLU blocks, global average pooling, a linear projection."""

    def __init__(self, embedding_dim: int = 32):
        super().__init__()
        layers, channels = [], 3
        for width in (16, 32, 64):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, 64)
        self.project = nn.Linear(channels, embedding_dim)

    def forward(self, images):
        return self.project(self.features(images))


if TINY_MODEL not in MODELS:
    register_model(TINY_MODEL)(TinyEmbeddingNet)


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def chord(delta_degrees: float) -> float:
    """Distance between unit vectors ``delta_degrees`` apart."""
    return 2 * math.sin(math.radians(delta_degrees) / 2)


# Four unit embeddings: identity 0 at 0° and 50°, identity 1 at 80° and 210°.
ANGLES = [0, 50, 80, 210]
LABELS = torch.tensor([0, 0, 1, 1])
MARGIN = 0.2


def four_embeddings(scale: float = 3.0) -> torch.Tensor:
    return torch.tensor([unit(a) for a in ANGLES], dtype=torch.float64) * scale


# ---- losses ----------------------------------------------------------------------------------------------
def test_pairwise_distances_are_chords():
    distances = pairwise_distances(four_embeddings(1.0))
    for i, a in enumerate(ANGLES):
        for j, b in enumerate(ANGLES):
            expected = chord(min(abs(a - b), 360 - abs(a - b)))
            assert distances[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_batch_hard_triplet_loss_exact_values():
    terms = TripletLoss(MARGIN, "batch_hard")(four_embeddings(), LABELS)
    # Per anchor: farthest positive − nearest negative + margin.
    anchor_losses = [max(0.0, chord(50) - chord(80) + MARGIN),  # anchor 0° : −0.24 → 0
                     chord(50) - chord(30) + MARGIN,  # 50° : 0.5276
                     chord(130) - chord(30) + MARGIN,  # 80° : 1.4950
                     chord(130) - chord(150) + MARGIN]  # 210°: 0.0808
    assert anchor_losses[0] == 0 and min(anchor_losses[1:]) > 0.08
    assert terms["loss"].item() == pytest.approx(sum(anchor_losses) / 4, abs=1e-6)  # float32
    assert terms["active_triplet_fraction"].item() == pytest.approx(0.75)
    assert terms["embedding_norm"].item() == pytest.approx(3.0)  # before normalisation


def test_semi_hard_picks_the_nearest_farther_negative_or_else_the_farthest():
    distances = pairwise_distances(four_embeddings(1.0))
    losses, d_ap, d_an = semi_hard_triplet(distances, LABELS, MARGIN)
    # Pairs in order (0,1) (1,0) (2,3) (3,2). For anchor 50°, the negative at 80° (0.52) is nearer than the positive
    # (0.85), so semi-hard takes 210° (1.97), which batch-hard would not. Anchor 80° has no negative farther than
    # its positive (1.81): it takes the farthest, 0° (1.29).
    expected_negatives = [chord(80), chord(160), chord(80), chord(150)]
    assert d_an.tolist() == pytest.approx(expected_negatives, abs=1e-6)
    assert d_ap.tolist() == pytest.approx([chord(50), chord(50), chord(130), chord(130)], abs=1e-6)
    expected = [0.0, 0.0, chord(130) - chord(80) + MARGIN, chord(130) - chord(150) + MARGIN]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    terms = TripletLoss(MARGIN, "semi_hard")(four_embeddings(), LABELS)
    assert terms["loss"].item() == pytest.approx(sum(expected) / 4, abs=1e-6)
    assert terms["active_triplet_fraction"].item() == pytest.approx(0.5)


def test_triplet_loss_rejects_a_batch_without_triplets_and_bad_settings():
    with pytest.raises(ValueError, match="no \\(anchor, positive, negative\\) triplet"):
        TripletLoss()(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="loss.mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=0.0)


def test_arcface_logits_exact_values():
    head = ArcFaceHead(2, 2, scale=2.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # On the class-0 centre: θ = 0 → s·cos(0 + m); the other class s·cos(90°) = 0.
    logits = head(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))
    assert logits[0].tolist() == pytest.approx([2 * math.cos(0.5), 0.0], abs=1e-6)
    # θ = 60° from class 0: s·cos(60° + 0.5 rad).
    logits = head(torch.tensor([unit(60)]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(math.radians(60) + 0.5), abs=1e-6)
    assert logits[0, 1].item() == pytest.approx(2 * math.cos(math.radians(30)), abs=1e-6)
    # θ = 180°: θ + m passes π, so the target logit is s·(cos θ − m·sin m).
    logits = head(torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(2 * (-1 - 0.5 * math.sin(0.5)), abs=1e-6)


# ---- P×K sampler -----------------------------------------------------------------------------------------
# 13 identities: identity i has 1 + (i % 6) images, so identities 0, 6, 12 have one image only.
SAMPLER_LABELS = [i for i in range(13) for _ in range(1 + i % 6)]


def batches(sampler: PKSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return [[index for index, _ in batch] for batch in sampler]


def test_pk_sampler_batches_are_p_identities_by_k_images():
    labels = np.array(SAMPLER_LABELS)
    sampler = PKSampler(SAMPLER_LABELS, identities_per_batch=3, images_per_identity=4, seed=1)
    epoch = batches(sampler, 0)
    assert len(epoch) == len(sampler) == 10 // 3  # 10 identities have ≥ 2 images
    seen = set()
    for batch in epoch:
        assert len(batch) == 12
        identities, counts = np.unique(labels[batch], return_counts=True)
        assert len(identities) == 3 and (counts == 4).all()
        for identity in identities:
            members = np.flatnonzero(labels == identity)
            drawn = np.array(batch)[labels[batch] == identity]
            # an identity with fewer than K images shows every one of them; with ≥ K, K distinct ones
            assert set(drawn) == set(members) if len(members) < 4 else len(set(drawn)) == 4
        seen.update(identities.tolist())
    assert not seen & {0, 6, 12}  # one image: no positive, never sampled
    skip = PKSampler(SAMPLER_LABELS, 3, 4, seed=1, fewer_than_k="skip")
    assert {int(labels[i]) for batch in batches(skip, 0) for i in batch} <= {3, 4, 5, 9, 10, 11}


def test_pk_sampler_is_deterministic_per_epoch_and_shards_identities_across_ranks():
    make = lambda rank: PKSampler(SAMPLER_LABELS, 2, 2, seed=7, rank=rank, world_size=2)  # noqa: E731
    assert batches(make(0), 3) == batches(make(0), 3)
    assert batches(make(0), 3) != batches(make(0), 4)
    labels = np.array(SAMPLER_LABELS)
    for epoch in range(3):
        rank_identities = [{int(labels[i]) for batch in batches(make(r), epoch) for i in batch} for r in (0, 1)]
        assert len(make(0)) == len(make(1)) == 2  # 10 identities → 5 per rank → 2 batches of P = 2
        assert rank_identities[0] and rank_identities[1] and not rank_identities[0] & rank_identities[1]
    keys = [key for batch in make(1) for _, key in batch]
    assert len(set(keys)) == len(keys) and all(key[0] == 1 for key in keys)  # augmentation keys differ per draw


def test_pk_sampler_needs_enough_identities():
    with pytest.raises(DatasetError, match="fewer than P=8"):
        PKSampler(SAMPLER_LABELS, 8, 2, world_size=2)


# ---- LFW folds, folders, chips ---------------------------------------------------------------------------
def test_lfw_fold_identities_are_disjoint_and_cover_people_txt():
    people = shared_path("data", "lfw", "people.txt")
    folds = read_lfw_people_folds(people)
    assert len(folds) == 10 and len(folds[0]) == 601 and folds[0]["Abdel_Madi_Shabneh"] == 1
    names = [set(fold) for fold in folds]
    assert all(not names[i] & names[j] for i in range(10) for j in range(i + 1, 10))
    nine = lfw_fold_identities(people, range(1, 10))
    assert set(nine) == set().union(*names[:9]) and not set(nine) & names[9]
    with pytest.raises(ConfigError, match="fold 11 does not exist"):
        lfw_fold_identities(people, [11])


def write_jpeg(path: Path, seed: int) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8))


def test_identity_folders_errors_and_unreadable_images_are_skipped_and_counted(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        scan_identity_folders(tmp_path / "missing")
    (tmp_path / "root").mkdir()
    with pytest.raises(DatasetError, match="no identity folders"):
        scan_identity_folders(tmp_path / "root")
    (tmp_path / "root" / "empty_person").mkdir()
    with pytest.raises(DatasetError, match="holds an image"):
        scan_identity_folders(tmp_path / "root")
    for i in range(3):
        write_jpeg(tmp_path / "root" / "alice" / f"a{i}.jpg", i)
    (tmp_path / "root" / "alice" / "broken.jpg").write_bytes(b"not a jpeg")
    write_jpeg(tmp_path / "root" / "bob" / "b0.jpg", 9)
    found = scan_identity_folders(tmp_path / "root")
    assert sorted(found) == ["alice", "bob"] and len(found["alice"]) == 4  # the empty folder is left out
    with pytest.raises(DatasetError, match="1 requested identities have no images.*empty_person"):
        scan_identity_folders(tmp_path / "root", ["alice", "empty_person"])
    alignment = Alignment(32, ((10.0, 12.0), (22.0, 12.0), (16.0, 17.0), (11.0, 23.0), (21.0, 23.0)))
    chips, report = prepare_chips(found, tmp_path / "cache", "none", alignment, crop_fraction=0.5,
                                  show_progress=False)
    assert report.unreadable == 1 and report.made == 4 and report.chips == 4
    assert len(chips["alice"]) == 3 and read_image(chips["alice"][0]).shape == (32, 32, 3)
    assert "broken.jpg" in (tmp_path / "cache" / "skipped.tsv").read_text()
    _, again = prepare_chips(found, tmp_path / "cache", "none", alignment, crop_fraction=0.5, show_progress=False)
    assert again.made == 0 and again.unreadable == 0 and again.chips == 4  # cached; the broken file not retried
    with pytest.raises(DatasetError, match="needs a face detector to make 5 missing chips"):
        prepare_chips(found, tmp_path / "cache2", "mtcnn", alignment, show_progress=False)

    plain = IdentityFolderDataset(chips)
    assert plain.identities == ["alice", "bob"] and plain.labels == [0, 0, 0, 1] and plain[3][0].shape == (3, 32, 32)
    flip_only = {**DEFAULT_AUGMENTATION, "flip_p": 1.0, "colour_p": 0.0, "blur_p": 0.0}
    assert torch.equal(IdentityFolderDataset(chips, flip_only)[0][0], plain[0][0].flip(-1))
    jitter = IdentityFolderDataset(chips, {**DEFAULT_AUGMENTATION, "colour_p": 1.0}, seed=3)
    assert torch.equal(jitter[(0, (0, 0, 1))][0], jitter[(0, (0, 0, 1))][0])  # same draw key: same augmentation
    assert not torch.equal(jitter[(0, (0, 0, 1))][0], jitter[(0, (0, 0, 2))][0])  # a second draw of the image


def test_verification_metrics_on_separable_and_random_embeddings():
    labels = np.repeat(np.arange(5), 4)
    separable = torch.eye(5)[labels] + 0.01 * torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    metrics = verification_metrics(separable, labels)
    assert metrics["auc"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["pairs"] == 60  # 30 same + 30 different
    noise = verification_metrics(torch.randn(20, 5, generator=torch.Generator().manual_seed(1)), labels)
    assert 0.25 < noise["auc"] < 0.75


# ---- real runs on LFW chips ------------------------------------------------------------------------------
def lfw_identities(count: int, min_images: int = 4) -> list[str]:
    folds = read_lfw_people_folds(shared_path("data", "lfw", "people.txt"))
    return sorted(name for name, n in folds[0].items() if n >= min_images)[:count]


def tiny_config(tmp_path: Path, identities: list[str], epochs: int, **changes) -> dict:
    """A YAML-ready config: the tiny net on 48-px central crops of LFW deepfunneled (no detection needed)."""
    cfg = {
        "stage": "embedding",
        "model": {"name": TINY_MODEL, "embedder": None, "chip_size": TINY_CHIP},
        "data": {"root": str(shared_path("data", "lfw", "deepfunneled")), "cache_dir": str(tmp_path / "chips"),
                 "align": "none", "crop_fraction": 0.5, "identities": identities, "val_fraction": 0.2,
                 "images_per_identity": 4, "val_max_pairs": 500},
        "loss": {"type": "triplet", "mining": "batch_hard", "margin": 0.2},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "num_workers": 0,
                  "device": "cpu", "seed": 0, "checkpoint_every": 1},
        "output": {"checkpoint_dir": str(tmp_path / "ckpt"), "log_dir": str(tmp_path / "logs"), "auto_resume": True},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


def train_cli(tmp_path: Path, cfg: dict, *extra: str) -> list[dict]:
    import train
    path = tmp_path / "embedding.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert train.main(["--stage", "embedding", "--config", str(path), *extra]) == 0
    lines = (Path(cfg["output"]["checkpoint_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train_identity_auc(embedder, identities: list[str], cache: Path) -> float:
    chips, labels = [], []
    for label, name in enumerate(identities):
        for path in sorted((cache / name).glob("*.png")):
            chips.append(read_image(path))
            labels.append(label)
    return verification_metrics(embedder.embed_chips(np.stack(chips)), labels)["auc"]


@pytest.mark.slow
def test_tiny_lfw_run_learns_records_identities_and_rebuilds_its_embedder(tmp_path):
    torch.set_num_threads(1)
    identities = lfw_identities(16)
    cfg = tiny_config(tmp_path, identities, epochs=20, data__val_fraction=0.25, train__batch_size=16, train__lr=1e-3)
    history = train_cli(tmp_path, cfg)
    assert [r["epoch"] for r in history] == list(range(1, 21))
    first, last = history[0], history[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"]
    assert 0 <= last["train/active_triplet_fraction"] <= 1 and last["train/embedding_norm"] > 0
    assert 0 <= last["val/auc"] <= 1 and "val/accuracy" in last

    best = tmp_path / "ckpt" / f"{TINY_MODEL}_best.pth"
    state = load_checkpoint(best)
    train_names, val_names = state["train_identities"], state["val_identities"]
    assert (len(train_names), len(val_names)) == (12, 4) and not set(train_names) & set(val_names)
    assert set(train_names) | set(val_names) == set(identities)
    assert training_identities(best) == set(identities)
    assert state["alignment"]["size"] == TINY_CHIP and state["normalization"]["mean"] == [127.5] * 3

    # Pairs AUC on the training identities: random init vs trained.
    cache = next((tmp_path / "chips").iterdir())
    final = embedder_from_checkpoint(tmp_path / "ckpt" / f"{TINY_MODEL}_final.pth")
    torch.manual_seed(0)
    untrained = embedder_from_checkpoint(best)
    untrained.model.load_state_dict(TinyEmbeddingNet().state_dict())
    before, after = train_identity_auc(untrained, train_names, cache), train_identity_auc(final, train_names, cache)
    assert after > before + 0.2 and after > 0.75, (before, after)  # measured 0.51 → 0.83
    assert final.alignment.size == TINY_CHIP and final.embed_chips(np.zeros((2, 48, 48, 3), np.uint8)).shape == (2, 32)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    identities = lfw_identities(16)
    full = train_cli(tmp_path / "full", tiny_config(tmp_path / "full", identities, epochs=3, data__val_fraction=0.0))
    resumed_cfg = tiny_config(tmp_path / "resumed", identities, epochs=3, data__val_fraction=0.0)
    resumed_cfg["data"]["cache_dir"] = str(tmp_path / "full" / "chips")
    resumed = train_cli(tmp_path / "resumed", resumed_cfg, "--resume",
                        str(tmp_path / "full" / "ckpt" / f"{TINY_MODEL}_epoch2.pth"))
    assert [r["epoch"] for r in resumed] == [3]
    assert resumed[0]["train/loss"] == pytest.approx(full[-1]["train/loss"], rel=1e-5)
    final_full = load_checkpoint(tmp_path / "full" / "ckpt" / f"{TINY_MODEL}_final.pth")["model"]
    final_resumed = load_checkpoint(tmp_path / "resumed" / "ckpt" / f"{TINY_MODEL}_final.pth")["model"]
    for key, value in final_full.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-5, atol=1e-6)


def test_trainer_saves_extra_entries_in_every_checkpoint_and_refuses_clashes(tmp_path):
    from torch.utils.data import TensorDataset
    from common.engine import Trainer, make_loader
    model = nn.Linear(2, 1)
    make = lambda extra: Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None,  # noqa: E731
                                 lambda m, batch: {"loss": m(batch[0]).pow(2).mean()}, tmp_path / "ckpt",
                                 tmp_path / "logs", "Toy", torch.device("cpu"), 2, {}, checkpoint_every=1, extra=extra)
    loader = make_loader(TensorDataset(torch.ones(4, 2)), 2, True, 0, None, seed=0)
    make({"train_identities": ["a", "b"]}).fit(loader)
    for path in (tmp_path / "ckpt").glob("*.pth"):
        assert load_checkpoint(path)["train_identities"] == ["a", "b"]
    with pytest.raises(ValueError, match=r"\['epoch'\] clash"):
        make({"epoch": 3})


@pytest.mark.slow
def test_arcface_head_trains_with_triplets_and_other_checkpoints_are_refused(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, lfw_identities(8), epochs=1, loss__type="both", data__val_fraction=0.0)
    history = train_cli(tmp_path, cfg)
    assert {"train/arcface_loss", "train/triplet_loss", "train/arcface_accuracy"} <= set(history[0])
    state = load_checkpoint(tmp_path / "ckpt" / f"{TINY_MODEL}_final.pth")
    assert state["model"]["head.weight"].shape == (8, 32) and len(state["train_identities"]) == 8
    embedder = embedder_from_checkpoint(tmp_path / "ckpt" / f"{TINY_MODEL}_final.pth")
    assert embedder.embed_chips(np.zeros((1, 48, 48, 3), np.uint8)).shape == (1, 32)
    other = tmp_path / "other.pth"
    save_checkpoint(other, model=nn.Linear(2, 2), config={"stage": "detection"})
    with pytest.raises(CheckpointError, match="not an embedding-training checkpoint"):
        training_identities(other)


def test_train_cli_rejects_detection_flags_and_unknown_keys(tmp_path):
    import train
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"stage": "embedding", "loss": {"marign": 0.3}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="Did you mean 'margin'"):
        train.main(["--stage", "embedding", "--config", str(path)])
    with pytest.raises(ConfigError, match="--variant do not apply to --stage embedding"):
        train.main(["--stage", "embedding", "--variant", "front"])
    assert EMBEDDING_DEFAULTS["stage"] == "embedding"
    for name in ("embedding_facenet.yaml", "embedding_mobilefacenet.yaml"):
        shipped = yaml.safe_load((ROOT / "configs" / name).read_text())
        from common.config import build_config
        assert build_config(EMBEDDING_DEFAULTS, ROOT / "configs" / name)["loss"]["margin"] == shipped["loss"]["margin"]


DDP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import tests.test_embedding_training  # registers the tiny model
import train
sys.exit(train.main(["--stage", "embedding", "--config", {config!r}]))
"""


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tmp_path):
    cfg = tiny_config(tmp_path, lfw_identities(16), epochs=2, data__val_fraction=0.25, train__batch_size=8)
    config = tmp_path / "embedding.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), config=str(config)), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29531", str(script)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes
    state = load_checkpoint(tmp_path / "ckpt" / f"{TINY_MODEL}_final.pth")
    assert len(state["train_identities"]) == 12 and len(state["val_identities"]) == 4


# ---- small-face distillation -----------------------------------------------------------------------------
TINY_TEACHER = "test_tiny_teacher"


def _tiny_teacher(weights=None, device="cpu", **_):
    torch.manual_seed(7)
    alignment = Alignment(TINY_CHIP, tuple(map(tuple, scaled_template(TINY_CHIP).tolist())))
    return Embedder(TINY_TEACHER, TinyEmbeddingNet(), alignment, (127.5,) * 3, (128.0,) * 3, "seed7", device=device)


if TINY_TEACHER not in EMBEDDERS.names():
    register_embedder(TINY_TEACHER)(_tiny_teacher)


def test_degraded_chips_keep_only_a_small_faces_detail():
    chips = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    chips[:, :, ::2] = 255  # 1-px stripes
    width = chip_face_width(scaled_template(96))
    degraded = degrade_chips(chips, torch.tensor([12.0, 200.0]), width, torch.Generator().manual_seed(0))
    assert degraded.shape == chips.shape and degraded.dtype == torch.uint8
    assert degraded[0, 0, 30:60, 48].float().diff().abs().max() < 40  # a 12-px face has no 1-px stripes
    assert torch.equal(degraded[1], chips[1])  # a face already smaller than 200 px is left alone
    again = degrade_chips(chips, torch.tensor([12.0, 200.0]), width, torch.Generator().manual_seed(0))
    assert torch.equal(degraded, again)


@pytest.mark.slow
def test_distillation_pulls_small_face_embeddings_to_the_teachers(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, lfw_identities(16), epochs=8, data__val_fraction=0.25, train__batch_size=16,
                      train__lr=3e-3, model__embedder=TINY_TEACHER, model__chip_size=None, model__weights="published")
    cfg["loss"] = {"type": "distill", "distill": {"teacher": TINY_TEACHER, "face_px": [8.0, 16.0],
                                                  "val_face_px": 10.0}}
    history = train_cli(tmp_path, cfg)
    first, last = history[0], history[-1]
    assert last["train/distill_loss"] < 0.6 * first["train/distill_loss"], (first, last)
    assert {"val/auc", "val/auc_small"} <= set(last)
    best = load_checkpoint(tmp_path / "ckpt" / f"{TINY_MODEL}_best.pth")
    assert best["best_metric"] == max(record["val/auc_small"] for record in history)


def test_distillation_needs_a_teacher_with_the_models_chips():
    cfg = {"loss": {"type": "distill", "distill": {"teacher": None}}}
    with pytest.raises(ConfigError, match="needs loss.distill.teacher"):
        distillation_teacher(cfg, None, torch.device("cpu"))
    cfg["loss"]["distill"]["teacher"] = TINY_TEACHER
    other = Alignment(64, tuple(map(tuple, scaled_template(64).tolist())))
    with pytest.raises(ConfigError, match="cuts other chips"):
        distillation_teacher(cfg, other, torch.device("cpu"))
