"""YOLO face detector: shapes, decoding, SimOTA known answers, loss, mosaics, overfitting real faces, and the
teacher → student pseudo-label training with its cache and resume."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from common.config import ConfigError
from detection.yolo.detector import yolo_detector
from detection.data.dataset import FaceDetectionDataset, collate_detection
from detection.data.readers import FaceAnnotation, read_annotations
from pipeline import detection_config
from detection.yolo.model import YoloFace
from detection.yolo.mosaic import MosaicDataset
from detection.yolo.postprocess import YoloPostprocessor
from detection.yolo.pseudo_labels import annotations_from_labels, collect_images
from common.points import UNASSIGNED, SimOTAAssigner, decode_boxes, decode_landmarks, encode_landmarks
from detection.yolo.targets import anchor_points
from detection.yolo.training import yolo_task
from tests.conftest import shared_path

DLIB_LANDMARKS_XML = ("data", "detection", "dlib_faces", "training_with_face_landmarks.xml")


def yolo_cfg(**train):
    cfg = detection_config("yolo", None)
    cfg["train"].update(train)
    return cfg


def test_outputs_cover_every_location_of_the_three_levels():
    model = YoloFace(width=0.25, depth=0.33).eval()
    with torch.no_grad():
        boxes, logits, landmarks = model(torch.rand(2, 3, 96, 160))
    locations = 12 * 20 + 6 * 10 + 3 * 5  # strides 8, 16, 32
    assert boxes.shape == (2, locations, 4) and logits.shape == (2, locations)
    assert landmarks.shape == (2, locations, 10)
    points, strides = anchor_points(96, 160)
    assert points.shape == (locations, 2) and strides.tolist().count(32.0) == 15
    assert points[0].tolist() == [4.0, 4.0] and points[-1].tolist() == [144.0, 80.0]
    # the untrained head starts at the 1% prior everywhere
    assert torch.sigmoid(logits).mean().item() == pytest.approx(0.01, abs=0.01)
    with pytest.raises(ValueError, match="multiples of 32"):
        anchor_points(100, 160)
    wider = YoloFace(width=0.5, depth=0.33)
    assert sum(p.numel() for p in wider.parameters()) > 3 * sum(p.numel() for p in model.parameters())


def test_decoding_is_relative_to_the_cell_and_stride():
    points, strides = torch.tensor([[12.0, 20.0]]), torch.tensor([8.0])
    raw = torch.tensor([[0.5, -1.0, 0.0, np.log(2.0)]])
    assert decode_boxes(raw, points, strides).tolist() == [[12.0, 4.0, 20.0, 20.0]]  # centre (16, 12), 8 × 16
    landmarks = torch.tensor([[[10.0, 18.0], [14.0, 18.0], [12.0, 20.0], [10.0, 24.0], [14.0, 24.0]]])
    encoded = encode_landmarks(landmarks, points, strides)
    assert torch.allclose(decode_landmarks(encoded, points, strides), landmarks)


def test_simota_takes_dynamic_k_best_locations():
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    points = torch.tensor([[4.0, 4.0], [12.0, 12.0], [20.0, 20.0], [28.0, 28.0], [100.0, 100.0]])
    strides = torch.full((5,), 8.0)
    probs = torch.full((5,), 0.5)
    assigner = SimOTAAssigner(center_radius=2.5, candidate_topk=10, iou_weight=3.0)
    # IoUs with the face 1, 0.5, 0.25, 0 → k = int(1.75) = 1: only the exact box
    pred = torch.tensor([[0, 0, 32, 32], [0, 0, 32, 16], [0, 0, 16, 16], [60, 60, 70, 70], [0, 0, 32, 32.]])
    assigned, ious = assigner(pred, probs, points, strides, gt)
    assert assigned.tolist() == [0, UNASSIGNED, UNASSIGNED, UNASSIGNED, UNASSIGNED]
    assert ious.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # the far location has the exact box but is no candidate
    # IoUs 1, 0.9375, 0.25 → k = int(2.19) = 2: the two best
    pred[1] = torch.tensor([0, 0, 32, 30.])
    assigned, ious = assigner(pred, probs, points, strides, gt)
    assert assigned.tolist() == [0, 0, UNASSIGNED, UNASSIGNED, UNASSIGNED]
    assert ious[1].item() == pytest.approx(0.9375)
    # a confident face probability lowers the cost: at equal IoU the location that already says "face" wins
    pred = torch.tensor([[0, 0, 32, 16], [0, 0, 32, 16], [0, 0, 16, 16], [60, 60, 70, 70], [0, 0, 32, 32.]])
    assigned, _ = assigner(pred, torch.tensor([0.5, 0.98, 0.5, 0.5, 0.5]), points, strides, gt)
    assert assigned.tolist() == [UNASSIGNED, 0, UNASSIGNED, UNASSIGNED, UNASSIGNED]


def test_simota_gives_a_location_wanted_by_two_faces_to_the_cheaper_one():
    faces = torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 36.0, 36.0]])
    points, strides = torch.tensor([[16.0, 16.0], [200.0, 200.0]]), torch.tensor([8.0, 8.0])
    pred = torch.tensor([[1.0, 1.0, 33.0, 33.0], [0.0, 0.0, 32.0, 32.0]])
    assigned, ious = SimOTAAssigner()(pred, torch.full((2,), 0.5), points, strides, faces)
    assert assigned.tolist() == [0, UNASSIGNED]  # IoU 961/1087 with the first face, 841/1207 with the second
    assert ious[0].item() == pytest.approx(961 / 1087)
    empty, _ = SimOTAAssigner()(pred, torch.full((2,), 0.5), points, strides, torch.zeros(0, 4))
    assert empty.tolist() == [UNASSIGNED, UNASSIGNED]


def check_point_loss(task, model: torch.nn.Module, terms_named: set[str]) -> None:
    """An anchor-free detector's training step on a face with landmarks, a face without and an ignored one, and
    an empty image: finite terms (``terms_named`` among them) and gradients, and an image whose faces are all
    ignored makes no positives and no box loss (YOLO here, YuNet in tests/test_yunet.py)."""
    images = torch.randint(0, 255, (3, 3, 128, 128), dtype=torch.uint8)
    points = torch.tensor([[40.0, 40], [60, 40], [50, 50], [42, 60], [58, 60]])
    targets = [
        {"boxes": torch.tensor([[30.0, 28, 70, 72]]), "landmarks": points[None], "ignore": torch.tensor([False])},
        {"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 120, 120]]),
         "landmarks": torch.full((2, 5, 2), float("nan")), "ignore": torch.tensor([False, True])},
        {"boxes": torch.zeros(0, 4), "landmarks": torch.zeros(0, 5, 2), "ignore": torch.zeros(0, dtype=torch.bool)},
    ]
    terms = task.step(model, (images, targets))
    assert set(terms) >= {"loss", "loss_box", "loss_landmarks", *terms_named}
    assert all(torch.isfinite(value) for value in terms.values())
    assert terms["num_positive"] >= 2 and terms["loss_landmarks"] > 0
    terms["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    only_ignored = [{**targets[1], "ignore": torch.tensor([True, True])}]
    ignored = task.step(model, (images[1:2], only_ignored))
    assert ignored["num_positive"] == 0 and ignored["loss_box"] == 0


def test_loss_terms_are_finite_and_ignored_faces_make_no_positives():
    check_point_loss(yolo_task(yolo_cfg(), torch.device("cpu")), YoloFace(), {"loss_obj"})


def test_postprocess_decodes_one_confident_location():
    points, _ = anchor_points(64, 64)
    count = len(points)
    box, logits, marks = torch.zeros(1, count, 4), torch.full((1, count), -10.0), torch.zeros(1, count, 10)
    index = 9  # stride 8, row 1, column 1: centre (12, 12)
    logits[0, index] = 5.0
    box[0, index] = torch.tensor([0.0, 0.0, np.log(2.0), np.log(3.0)])
    found = YoloPostprocessor(score_threshold=0.5)(box, logits, marks, 64, 64)[0]
    assert len(found) == 1 and found.boxes.tolist() == [[4.0, 0.0, 20.0, 24.0]]
    assert found.landmarks[0, 2].tolist() == [12.0, 12.0]


def test_mosaic_tiles_several_photos_and_replays_an_epoch():
    annotations = read_annotations(shared_path(*DLIB_LANDMARKS_XML))
    cfg = yolo_cfg()
    mosaic = {**cfg["data"]["mosaic"], "p": 1.0, "grids": [3]}
    dataset = MosaicDataset(annotations, 256, cfg["data"]["augmentation"], mosaic, seed=3)
    image, target = dataset[0]
    again, same = dataset[0]
    assert torch.equal(image, again) and torch.equal(target["boxes"], same["boxes"])
    faces_per_photo = max(len(a.boxes) for a in annotations)
    assert len(target["boxes"]) > faces_per_photo  # nine photos: more faces than any one photo has
    assert (target["boxes"] >= 0).all() and (target["boxes"] <= 256).all()
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], image)
    with pytest.raises(ValueError, match="empty"):
        MosaicDataset([], 256, None, mosaic)


def face_crops(folder, size: int = 128) -> list[FaceAnnotation]:
    """Square crops around each dlib training face (2.5 × its size), the faces inside each crop."""
    crops = []
    for annotation in read_annotations(shared_path(*DLIB_LANDMARKS_XML)):
        image = cv2.imread(str(annotation.image_path))
        for number, box in enumerate(annotation.boxes):
            centre, side = (box[:2] + box[2:]) / 2, 2.5 * (box[2:] - box[:2]).max()
            x1, y1 = np.maximum(centre - side / 2, 0).astype(int)
            x2, y2 = x1 + int(side), y1 + int(side)
            inside = ((annotation.boxes[:, :2] >= [x1, y1]) & (annotation.boxes[:, 2:] <= [x2, y2])).all(1)
            path = folder / f"{annotation.image_path.stem}_{number}.png"
            scale = size / side
            cv2.imwrite(str(path), cv2.resize(image[y1:y2, x1:x2], (size, size)))
            offset = np.array([x1, y1], dtype=np.float32)
            boxes = (annotation.boxes[inside].reshape(-1, 2, 2) - offset) * scale
            crops.append(FaceAnnotation(path, boxes.reshape(-1, 4), (annotation.landmarks[inside] - offset) * scale,
                                        np.zeros(int(inside.sum()), dtype=bool)))
    return crops


@pytest.mark.slow
def test_overfits_real_face_crops(tmp_path):
    torch.manual_seed(0)
    crops = face_crops(tmp_path)[:4]
    batch = collate_detection([FaceDetectionDataset(crops, 128)[i] for i in range(len(crops))])
    task = yolo_task(yolo_cfg(), torch.device("cpu"))
    model = YoloFace()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = task.evaluate(model.eval(), [batch])["ap50"]
    losses = []
    for _ in range(40):
        terms = task.step(model.train(), batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    with torch.no_grad():
        after = task.evaluate(model.eval(), [batch])["ap50"]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    assert before < 0.2 and after > 0.8, (before, after)  # untrained: every score is the 1% prior


def test_pseudo_label_flags_belong_to_yolo():
    import train
    with pytest.raises(ConfigError, match="yolo only"):
        train.main(["--stage", "detection", "--detector", "blazeface", "--pseudo-labels", "fusion", "--images", "x"])


def test_cached_labels_become_faces_and_ignore_regions(tmp_path):
    face = {"box": [10, 10, 50, 50], "landmarks": [[20, 20], [40, 20], [30, 30], [22, 40], [38, 40]]}
    labels = {str(tmp_path / "a.jpg"): [{**face, "score": 0.9}, {**face, "score": 0.4}, {**face, "score": 0.1}],
              str(tmp_path / "b.jpg"): []}
    first, second = annotations_from_labels(labels, keep_threshold=0.6, ignore_threshold=0.25)
    assert first.ignore.tolist() == [False, True] and first.landmarks.shape == (2, 5, 2)
    assert len(second.boxes) == 0
    for name in ("c.jpg", "d.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in collect_images([tmp_path])] == ["c.jpg", "d.png"]
    assert [p.name for p in collect_images([tmp_path / "d.png", tmp_path], max_images=1)][-1] == "d.png"
    assert len(collect_images([tmp_path / "d.png", tmp_path], max_images=1)) == 2
    with pytest.raises(FileNotFoundError, match="neither an image nor a folder"):
        collect_images([tmp_path / "missing"])


@pytest.mark.slow
def test_pseudo_label_training_caches_labels_and_resumes(tmp_path, monkeypatch):
    import train
    from pipeline import training

    shared_path("models", "retinaface", "mobilenet0.25_Final.pth")  # the teacher fuses RetinaFace too
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("007_B.jpg", "010_2.jpg", "011_3.jpg"):
        shutil.copy(shared_path("data", "faces_in_photos", "compreface", name), photos / name)
    run = tmp_path / "run"
    common = ["--stage", "detection", "--detector", "yolo", "--pseudo-labels", "fusion", "--images", str(photos),
              "--device", "cpu", "--num-workers", "0", "--batch-size", "2", "--checkpoint-dir", str(run),
              "--log-dir", str(tmp_path / "logs"), "--set", "train.input_size=128", "--set", "data.val_fraction=0.34"]
    assert train.main([*common, "--epochs", "1"]) == 0
    cache = json.loads((run / "pseudo_labels.json").read_text())
    assert "retinaface" in cache["teacher"] and len(cache["labels"]) == 3
    assert sum(face["score"] >= 0.6 for faces in cache["labels"].values() for face in faces) >= 3
    assert (run / "yolo_last.pth").is_file() and (run / "yolo_best.pth").is_file()

    def no_teacher(section):
        raise AssertionError("the cached labels should have been reused")
    monkeypatch.setitem(training.TRAINING_PARTS, "teacher_factory", no_teacher)
    assert train.main([*common, "--epochs", "2"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    detector = yolo_detector(weights=run / "yolo_last.pth", device="cpu", score_threshold=0.0)
    found = detector.detect([cv2.cvtColor(cv2.imread(str(photos / "010_2.jpg")), cv2.COLOR_BGR2RGB)])[0]
    assert found.landmarks.shape[1:] == (5, 2)
    with pytest.raises(ValueError, match="does not fit YoloFace"):
        yolo_detector(weights=run / "yolo_last.pth", width=0.5)
