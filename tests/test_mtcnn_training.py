"""MTCNN training on the real dlib photos: sample labels, targets the cascade decodes back, the loss, overfitting,
resuming, and fine-tuning facenet-pytorch's weights without losing AP."""
from __future__ import annotations

import argparse
import shutil

import pytest
import torch

from common.boxes import box_iou
from common.config import ConfigError, build_config
from detection.data.readers import read_annotations
from detection.mtcnn.loss import MTCNNLoss, classification_metrics
from detection.mtcnn.model import load_pretrained_mtcnn, normalize
from detection.mtcnn.targets import (LANDMARK, NEGATIVE, NEGATIVE_IOU, PART, PART_IOU, POSITIVE, POSITIVE_IOU,
                                     STAGE_INPUT_SIZES, MTCNNSampleDataset, decode_boxes, flip_shift, generate_samples)
from detection.mtcnn.config import MTCNN_DEFAULTS
from detection.mtcnn.training import (NET_CLASSES, cascade_proposer, load_weights_file,
                                      run_mtcnn_training)
from tests.conftest import ROOT, shared_path

DLIB = ("data", "detection", "dlib_faces")
# Fewer crops per photo than the defaults, for CPU-sized tests.
SMALL_SAMPLING = {"negatives_per_image": 20, "negatives_near_face": 2, "shifted_per_face": 8, "landmarks_per_face": 4}


@pytest.fixture(scope="module")
def train_xml():
    return shared_path(*DLIB, "training_with_face_landmarks.xml")


@pytest.fixture(scope="module")
def annotations(train_xml):
    return read_annotations(train_xml)


@pytest.fixture(scope="module")
def facenet_nets():
    pytest.importorskip("facenet_pytorch")
    return dict(zip(("pnet", "rnet", "onet"), load_pretrained_mtcnn()))


@pytest.fixture(scope="module")
def samples(annotations, facenet_nets):
    """Each stage's samples, R-Net's and O-Net's with hard samples proposed by the imported cascade."""
    from detection.mtcnn.detector import MTCNNDetector

    detector = MTCNNDetector(*(facenet_nets[name] for name in ("pnet", "rnet", "onet")))
    return {"pnet": generate_samples(annotations, "pnet", seed=3),
            "rnet": generate_samples(annotations, "rnet", seed=3, proposer=cascade_proposer(detector, "pnet")),
            "onet": generate_samples(annotations, "onet", seed=3, proposer=cascade_proposer(detector, "rnet"))}


def config(tmp_path, **overrides):
    base = {"train.device": "cpu", "train.num_workers": 0, "train.amp": False, "train.checkpoint_every": 0,
            "output.checkpoint_dir": str(tmp_path / "ckpt"), "output.log_dir": str(tmp_path / "logs"),
            "mtcnn.sampling": SMALL_SAMPLING}
    base.update(overrides)
    return build_config(MTCNN_DEFAULTS, None, base)


# ---------------------------------------------------------------- samples


@pytest.mark.parametrize("stage", ["pnet", "rnet", "onet"])
def test_samples_are_labelled_by_iou_and_decode_to_their_face(stage, samples, annotations):
    s = samples[stage]
    size = STAGE_INPUT_SIZES[stage]
    assert s.crops.shape == (len(s), 3, size, size) and s.crops.dtype == torch.uint8
    counts = s.counts()
    assert counts["positive"] > 50 and counts["part"] > 50 and counts["negative"] > 100, counts
    assert (counts["landmark"] > 50) == (stage == "onet"), counts
    for i in range(len(s)):
        annotation = annotations[int(s.image_indices[i])]
        ious = box_iou(s.crop_boxes[i:i + 1], torch.as_tensor(annotation.boxes))[0]
        best, label = int(ious.argmax()), int(s.labels[i])
        if label == NEGATIVE:
            assert ious.max() < NEGATIVE_IOU
            continue
        assert ious.max() >= (POSITIVE_IOU if label in (POSITIVE, LANDMARK) else PART_IOU)
        if label == PART:
            assert ious.max() < POSITIVE_IOU
        # The cascade's decoding of the target offsets gives back the face exactly.
        decoded = decode_boxes(s.crop_boxes[i:i + 1], s.box_targets[i:i + 1], stage)[0]
        torch.testing.assert_close(decoded, torch.as_tensor(annotation.boxes[best]), atol=1e-3, rtol=0)
        if label == LANDMARK:
            side = s.crop_boxes[i, 2] - s.crop_boxes[i, 0]
            xs = s.crop_boxes[i, 0] + s.landmark_targets[i, :5] * side
            ys = s.crop_boxes[i, 1] + s.landmark_targets[i, 5:] * side
            points = torch.as_tensor(annotation.landmarks[best])
            torch.testing.assert_close(torch.stack([xs, ys], 1), points, atol=1e-3, rtol=0)
            assert s.landmark_targets[i].min() >= 0 and s.landmark_targets[i].max() <= 1
    # Hard samples from the cascade's proposals: footprints that are no random whole-pixel squares.
    if stage != "pnet":
        assert (s.crop_boxes != s.crop_boxes.round()).any(dim=1).sum() > 20


def test_samples_are_deterministic_from_the_seed(annotations):
    a = generate_samples(annotations, "onet", SMALL_SAMPLING, seed=5)
    again = generate_samples(annotations, "onet", SMALL_SAMPLING, seed=5)
    other = generate_samples(annotations, "onet", SMALL_SAMPLING, seed=6)
    assert all(torch.equal(getattr(a, k), getattr(again, k)) for k in ("crops", "labels", "box_targets",
                                                                        "landmark_targets", "crop_boxes"))
    assert len(a) != len(other) or not torch.equal(a.crops, other.crops)
    # A photo's samples do not depend on the other photos.
    alone = generate_samples(annotations[:2], "onet", SMALL_SAMPLING, seed=5)
    assert torch.equal(alone.crops, a[a.image_indices < 2].crops)


@pytest.mark.parametrize("stage", ["pnet", "rnet", "onet"])
def test_imported_nets_agree_with_the_samples(stage, samples, facenet_nets):
    """facenet-pytorch's nets, trained elsewhere, classify our crops and (O-Net) place landmarks where our targets
    say: crops, colour order, normalisation and landmark convention match what the nets expect."""
    s = samples[stage]
    with torch.no_grad():
        outputs = facenet_nets[stage](normalize(s.crops))
    logits = outputs[-1].flatten(1)
    accuracy = float(classification_metrics(logits, s.labels)["accuracy"])
    # Measured 0.934 / 0.964 / 0.996; the same crops in BGR order give 0.863 / 0.966 / 0.988, transposed 0.89 / 0.81
    # / 0.73.
    assert accuracy >= {"pnet": 0.91, "rnet": 0.94, "onet": 0.99}[stage], accuracy
    if stage == "onet":
        is_landmark = s.labels == LANDMARK
        error = (outputs[1][is_landmark] - s.landmark_targets[is_landmark]).abs().mean()
        assert error < 0.023, error  # of the crop side; measured 0.0198 (BGR 0.0263, transposed 0.118)


@pytest.mark.parametrize("stage", ["pnet", "rnet", "onet"])
def test_flip_mirrors_boxes_and_swaps_landmarks(stage, samples):
    s = samples[stage]
    dataset = MTCNNSampleDataset(s, {"flip_p": 1.0, "brightness": 0.0, "contrast": 0.0})
    faces = torch.nonzero((s.labels == POSITIVE) | (s.labels == LANDMARK)).flatten()[:50]
    for i in faces.tolist():
        crop, label, boxes, points = dataset[i]
        assert torch.equal(crop, s.crops[i].flip(-1)) and int(label) == int(s.labels[i])
        footprint = s.crop_boxes[i:i + 1]
        q, side = footprint[0, 0], footprint[0, 2] - footprint[0, 0]
        face = decode_boxes(footprint, s.box_targets[i:i + 1], stage)[0]
        mirrored = torch.stack([2 * q + side - face[2], face[1], 2 * q + side - face[0], face[3]])
        torch.testing.assert_close(decode_boxes(footprint, boxes[None], stage)[0], mirrored, atol=1e-3, rtol=0)
        if int(label) == LANDMARK:
            original = s.landmark_targets[i]
            assert points[0] == pytest.approx(1 - original[1]) and points[1] == pytest.approx(1 - original[0])
            assert points[5] == pytest.approx(original[6]) and points[2] == pytest.approx(1 - original[2])
            assert points[3] == pytest.approx(1 - original[4])
    assert flip_shift(s.crop_boxes[:1], stage).numel() == 1


def test_augmentation_is_seeded_by_epoch_and_index(samples):
    s = samples["rnet"]
    dataset = MTCNNSampleDataset(s, {}, seed=1)
    again = MTCNNSampleDataset(s, {}, seed=1)
    dataset.set_epoch(3)
    again.set_epoch(3)
    for i in range(0, len(s), 97):
        assert all(torch.equal(a, b) for a, b in zip(dataset[i], again[i]))
    again.set_epoch(4)
    assert any(not torch.equal(dataset[i][0], again[i][0]) for i in range(20))


# ---------------------------------------------------------------- loss


def test_loss_keeps_the_hardest_70_percent_and_masks_each_task():
    torch.manual_seed(0)
    labels = torch.tensor([POSITIVE] * 4 + [NEGATIVE] * 6 + [PART] * 3 + [LANDMARK] * 2)
    logits = torch.randn(len(labels), 2, requires_grad=True)
    boxes, landmarks = torch.randn(len(labels), 4, requires_grad=True), torch.randn(len(labels), 10, requires_grad=True)
    box_targets, landmark_targets = torch.randn(len(labels), 4), torch.rand(len(labels), 10)
    loss = MTCNNLoss(cls_weight=1.0, box_weight=0.5, landmark_weight=2.0, ohem_keep=0.7)
    terms = loss(logits, boxes, landmarks, labels, box_targets, landmark_targets)

    per_sample = torch.nn.functional.cross_entropy(logits[:10].detach(), labels[:10], reduction="none")
    assert terms["loss_cls"] == pytest.approx(float(per_sample.sort(descending=True).values[:7].mean()))
    has_box = slice(0, 4), slice(10, 13)
    box_errors = torch.cat([((boxes[s].detach() - box_targets[s]) ** 2).sum(1) for s in has_box])
    assert terms["loss_box"] == pytest.approx(float(box_errors.mean()))
    landmark_errors = ((landmarks[13:].detach() - landmark_targets[13:]) ** 2).sum(1)
    assert terms["loss_landmarks"] == pytest.approx(float(landmark_errors.mean()))
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["loss_cls"] + 0.5 * terms["loss_box"]
                                                + 2.0 * terms["loss_landmarks"]))
    terms["loss"].backward()
    assert logits.grad[10:].abs().sum() == 0  # part and landmark samples are no face/non-face samples
    assert boxes.grad[4:10].abs().sum() == 0 and boxes.grad[13:].abs().sum() == 0
    assert landmarks.grad[:13].abs().sum() == 0

    # A batch of negatives only: box and landmark terms are 0 and still backpropagate (DDP needs every parameter).
    only_negatives = torch.zeros(5, dtype=torch.int64)
    logits, boxes = torch.randn(5, 2, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    terms = loss(logits, boxes, None, only_negatives, torch.zeros(5, 4), torch.zeros(5, 10))
    assert terms["loss_box"] == 0 and terms["loss_landmarks"] == 0
    terms["loss"].backward()
    assert boxes.grad is not None


def test_loss_rejects_unflattened_pnet_maps():
    with pytest.raises(ValueError, match="flatten"):
        MTCNNLoss()(torch.zeros(2, 2, 1, 1), torch.zeros(2, 4, 1, 1), None, torch.zeros(2, dtype=torch.int64),
                    torch.zeros(2, 4), torch.zeros(2, 10))


# ---------------------------------------------------------------- config and flags


def test_flags_map_to_config_keys_and_the_shipped_config_loads(tmp_path):
    from pipeline.config import detection_config
    from pipeline.flags import add_detection_flags, detection_overrides

    parser = argparse.ArgumentParser()
    add_detection_flags(parser)
    args = parser.parse_args(["--mtcnn-stage", "rnet", "--epochs", "3", "--lr", "0.01", "--pretrained",
                              "--no-auto-resume", "--train-data", "a.xml", "--checkpoint-dir", str(tmp_path)])
    yaml_path = ROOT / "configs" / "detection_mtcnn.yaml"
    cfg = detection_config("mtcnn", yaml_path, detection_overrides(args, "mtcnn"))  # train.py's path
    assert cfg["mtcnn"]["stage"] == "rnet" and cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.01
    assert cfg["model"]["pretrained"] is True and cfg["output"]["auto_resume"] is False
    assert cfg["data"]["train"] == "a.xml" and cfg["output"]["checkpoint_dir"] == str(tmp_path)
    assert cfg["mtcnn"]["onet"]["task_weights"] == {"cls": 1.0, "box": 0.5, "landmarks": 1.0}
    shipped = build_config(MTCNN_DEFAULTS, ROOT / "configs" / "detection_mtcnn.yaml")
    assert (ROOT / shipped["data"]["train"]).exists() or not (ROOT.parent / "shared").exists()
    with pytest.raises(ConfigError, match="mtcnn.stage"):
        run_mtcnn_training(config(tmp_path, **{"mtcnn.stage": "qnet"}))
    with pytest.raises(ConfigError, match="unknown key 'mtcnn.sampling.negatives'"):
        config(tmp_path, **{"mtcnn.sampling": {"negatives": 3}})


# ---------------------------------------------------------------- training


def test_resume_continues_the_same_loss_curve(tmp_path, train_xml):
    common = {"data.train": str(train_xml), "data.val": None, "data.val_fraction": 0.25, "mtcnn.stage": "pnet",
              "train.batch_size": 32, "train.lr": 1e-3, "train.epochs": 3}
    full = run_mtcnn_training(config(tmp_path / "full", **common, **{"train.checkpoint_every": 1}))["pnet"]
    after_epoch_1 = tmp_path / "full" / "ckpt" / "MTCNN_pnet_epoch1.pth"
    resumed = run_mtcnn_training(config(tmp_path / "resumed", **common,
                                        **{"output.resume": str(after_epoch_1)}))["pnet"]
    assert [r["epoch"] for r in resumed] == [2, 3]
    for uninterrupted, continued in zip(full[1:], resumed):
        assert continued["train/loss"] == pytest.approx(uninterrupted["train/loss"], rel=1e-5)
        assert continued["val/loss"] == pytest.approx(uninterrupted["val/loss"], rel=1e-5)
    exported = load_weights_file(tmp_path / "resumed" / "ckpt" / "mtcnn.pth")
    assert set(exported) == {"pnet", "rnet", "onet"}
    with pytest.raises(ConfigError, match="holds pnet weights"):
        run_mtcnn_training(config(tmp_path / "other", **{**common, "mtcnn.stage": "onet",
                                                        "output.resume": str(after_epoch_1)}))


@pytest.mark.slow
def test_interrupted_cascade_resumes_where_it_stopped(tmp_path, train_xml):
    """A run of all three stages stopped after O-Net's first epoch: the rerun skips P-Net and R-Net, mines O-Net's
    samples with their checkpoints, finishes O-Net as the uninterrupted run did and exports the same cascade."""
    overrides = {"data.train": str(train_xml), "data.val": str(train_xml), "mtcnn.stage": "all",
                 "model.pretrained": True, "train.epochs": 2, "train.batch_size": 64, "train.lr": 1e-4,
                 "train.checkpoint_every": 1, "mtcnn.eval.cascade_ap_stages": []}
    full = run_mtcnn_training(config(tmp_path / "full", **overrides))
    assert [len(full[stage]) for stage in ("pnet", "rnet", "onet")] == [2, 2, 2]
    shutil.copytree(tmp_path / "full" / "ckpt", tmp_path / "cut" / "ckpt")
    cut = tmp_path / "cut" / "ckpt"
    for path in [cut / "mtcnn.pth", *cut.glob("MTCNN_onet_*.pth")]:
        if path.name != "MTCNN_onet_epoch1.pth":
            path.unlink()
    for tag in ("last", "best"):  # what the first O-Net epoch leaves
        shutil.copy(cut / "MTCNN_onet_epoch1.pth", cut / f"MTCNN_onet_{tag}.pth")
    resumed = run_mtcnn_training(config(tmp_path / "cut", **overrides))
    assert resumed["pnet"] == [] and resumed["rnet"] == []
    assert [r["epoch"] for r in resumed["onet"]] == [2]
    assert resumed["onet"][0]["train/loss"] == pytest.approx(full["onet"][1]["train/loss"], rel=1e-5)
    assert resumed["onet"][0]["val/loss"] == pytest.approx(full["onet"][1]["val/loss"], rel=1e-5)
    a, b = load_weights_file(tmp_path / "full" / "ckpt" / "mtcnn.pth"), load_weights_file(cut / "mtcnn.pth")
    for stage in a:
        for key in a[stage]:
            torch.testing.assert_close(a[stage][key], b[stage][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pnet", "rnet", "onet"])
def test_each_net_overfits_real_crops(stage, tmp_path, train_xml, annotations):
    """From a random initialisation, each net learns a few hundred real crops of the training photos by heart."""
    cfg = config(tmp_path, **{"data.train": str(train_xml), "data.val": str(train_xml), "data.augment": False,
                              "mtcnn.stage": stage, "mtcnn.hard_samples": False, "mtcnn.eval.cascade_ap_stages": [],
                              "model.pretrained": False, "train.epochs": 30, "train.batch_size": 32,
                              "train.lr": 5e-3, "train.weight_decay": 0.0})
    history = run_mtcnn_training(cfg)[stage]
    first, last = history[0], history[-1]
    print(f"{stage} overfit: loss {first['train/loss']:.4f} -> {last['train/loss']:.4f}, accuracy "
          f"{first['train/accuracy']:.3f} -> {last['train/accuracy']:.3f}, box error {first['val/box_error']:.4f} -> "
          f"{last['val/box_error']:.4f}" + (f", landmark error {first['val/landmark_error']:.4f} -> "
                                            f"{last['val/landmark_error']:.4f}" if stage == "onet" else ""))
    assert last["train/loss"] < 0.1 * first["train/loss"], (first["train/loss"], last["train/loss"])
    assert last["train/accuracy"] >= 0.99 and first["train/accuracy"] < 0.9
    assert last["val/box_error"] < 0.8 * first["val/box_error"]
    if stage == "onet":
        assert last["val/landmark_error"] < 0.6 * first["val/landmark_error"]
    # The last epoch's net, in eval mode, knows every training crop (made again from the same seed). (mtcnn.pth
    # holds the best epoch on the validation crops, cut from the same photos with another seed.)
    net = NET_CLASSES[stage]()
    net.load_state_dict(load_weights_file(tmp_path / "ckpt" / f"MTCNN_{stage}_final.pth")[stage])
    train_samples = generate_samples(annotations, stage, SMALL_SAMPLING, seed=cfg["train"]["seed"])
    with torch.no_grad():
        logits = net.eval()(normalize(train_samples.crops))[-1].flatten(1)
    assert float(classification_metrics(logits, train_samples.labels)["accuracy"]) >= 0.99


@pytest.mark.slow
def test_fine_tuning_facenet_weights_keeps_cascade_ap(tmp_path, train_xml):
    """Three short stages of fine-tuning from facenet-pytorch's weights on the 4 training photos (the best epochs
    chosen on crops of those photos) keep the cascade's AP@0.5 on dlib testing.xml (25 faces), which neither
    training nor the choice of epoch saw, within 2 points of the imported weights' AP."""
    from detection.mtcnn.detector import mtcnn_detector
    from detection.evaluation import evaluate_detector, load_benchmark

    pytest.importorskip("facenet_pytorch")
    test_items = load_benchmark(shared_path(*DLIB, "testing.xml"))
    before = evaluate_detector(mtcnn_detector(device="cpu"), test_items).ap
    assert before >= 0.9  # the imported cascade sees these faces (measured 1.0)
    cfg = config(tmp_path, **{"data.train": str(train_xml), "data.val": str(train_xml),
                              "mtcnn.sampling": {}, "model.pretrained": True, "train.epochs": 3,
                              "train.batch_size": 128, "train.lr": 1e-4})
    histories = run_mtcnn_training(cfg)
    after = evaluate_detector(mtcnn_detector(weights=str(tmp_path / "ckpt" / "mtcnn.pth"), device="cpu"),
                              test_items).ap
    last = histories["onet"][-1]
    print(f"cascade AP@0.5 on testing.xml: imported {before:.3f}, fine-tuned {after:.3f}; O-Net val accuracy "
          f"{last['val/accuracy']:.3f}, box error {last['val/box_error']:.4f}")
    assert after >= before - 0.02
    assert last["val/accuracy"] >= 0.97


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_train_py(tmp_path):
    """torchrun, two CPU processes, the shipped config, one epoch per stage: rank 0 alone writes checkpoints and
    every rank goes on to the next stage with the same weights."""
    import json
    import os
    import subprocess
    import sys

    shared_path(*DLIB, "training_with_face_landmarks.xml")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
         "train.py", "--stage", "detection", "--config", "configs/detection_mtcnn.yaml", "--mtcnn-stage", "all",
         "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--num-workers", "0", "--no-auto-resume",
         "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"), "--set", "train.amp=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and "val/ap50" in records[2]  # one epoch per stage, written by rank 0 only
    exported = load_weights_file(tmp_path / "c" / "mtcnn.pth")
    assert not any(key.startswith("module.") for state in exported.values() for key in state)
