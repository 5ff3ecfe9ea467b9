"""RetinaFace: the public MobileNet-0.25 checkpoint in our module, detection figures on real photos, small faces
by tiles and scales, anchors/targets/loss, and a short from-scratch training on real photos."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from common.boxes import box_iou
from common.io import read_image
from common.registry import build_model
from detection.data.readers import read_annotations, read_dlib_xml
from detection.evaluation import evaluate_detector, load_benchmark
from detection.retinaface.detector import load_weights, retinaface_detector
from detection.retinaface.loss import RetinaFaceLoss
from detection.retinaface.postprocess import RetinaFacePostprocessor
from detection.retinaface.targets import FLAVORS, RetinaFaceAnchors, RetinaFaceTargetBuilder
from pipeline import default_config_path, detection_config, detector_from_config
from tests.blazeface_data import overfit_crops
from tests.conftest import shared_path

CHECKPOINT = ("models", "retinaface", "mobilenet0.25_Final.pth")


@pytest.fixture(scope="module")
def detector():
    shared_path(*CHECKPOINT)
    return detector_from_config(detection_config("retinaface", default_config_path("retinaface")), "cpu")


def test_public_checkpoint_fills_every_parameter():
    state = torch.load(shared_path(*CHECKPOINT), map_location="cpu", weights_only=True)
    model = build_model("retinaface_mnet025", leaky_slope=FLAVORS["1mb"].leaky_slope)
    assert set(model.state_dict()) == set(state)
    load_weights(model, shared_path(*CHECKPOINT))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_wrong_or_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="other backbone"):
        load_weights(build_model("retinaface_r50"), shared_path(*CHECKPOINT))
    with pytest.raises(FileNotFoundError, match="mobilenet0.25_Final.pth"):
        retinaface_detector(tmp_path / "absent.pth")


def test_imagenet_backbone_weights_from_local_files(tmp_path):
    """torchvision's ResNet-50 state dict, and the MobileNet-0.25 ``.tar`` layout ({"state_dict": module.*} with
    its classifier), fill the backbone and nothing else."""
    import torchvision

    resnet = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(resnet, tmp_path / "resnet50.pth")
    model = build_model("retinaface_r50", backbone_weights=tmp_path / "resnet50.pth")
    assert torch.equal(model.body.layer4[2].conv3.weight, resnet["layer4.2.conv3.weight"])
    body = build_model("retinaface_mnet025").body.state_dict()
    body = {key: torch.randn_like(value) if value.is_floating_point() else value for key, value in body.items()}
    torch.save({"epoch": 1, "state_dict": {**{f"module.{k}": v for k, v in body.items()},
                                           "module.fc.weight": torch.zeros(1000, 256)}}, tmp_path / "mnet.tar")
    model = build_model("retinaface_mnet025", backbone_weights=tmp_path / "mnet.tar")
    assert torch.equal(model.body.stage3[1][3].weight, body["stage3.1.3.weight"])
    with pytest.raises(ValueError, match="not resnet50 ImageNet weights"):
        build_model("retinaface_r50", backbone_weights=tmp_path / "mnet.tar")


def test_model_outputs_one_row_per_anchor():
    model = build_model("retinaface_mnet025").eval()
    boxes, logits, landmarks = model(torch.zeros(1, 3, 96, 160))
    anchors = RetinaFaceAnchors().cxcywh(96, 160)
    assert boxes.shape == (1, len(anchors), 4) and logits.shape == (1, len(anchors), 2)
    assert landmarks.shape == (1, len(anchors), 10)
    assert len(anchors) == (12 * 20 + 6 * 10 + 3 * 5) * 2


def test_dlib_testing_ap(detector):
    curve = evaluate_detector(detector, load_benchmark(shared_path("data", "detection", "dlib_faces", "testing.xml")))
    assert curve.num_ground_truth == 25
    assert curve.ap == pytest.approx(1.0)
    precision, recall = curve.at_threshold(0.9)  # the config's operating threshold
    assert recall == 1.0 and precision == 1.0


def test_landmarks_follow_the_project_order(detector):
    """Against dlib's 68-point annotations: every point within 11 % of the face width, on average within 5 %;
    swapping left and right would put the eyes ~40 % away."""
    xml = shared_path("data", "detection", "dlib_faces", "testing_with_face_landmarks.xml")
    errors = []
    for annotation in read_annotations(xml):
        found = detector.detect([read_image(annotation.image_path)])[0]
        iou = box_iou(torch.as_tensor(annotation.boxes), found.boxes)  # (G, D)
        for face, best in enumerate(iou.argmax(dim=1)):
            if iou[face, best] >= 0.5:
                width = annotation.boxes[face, 2] - annotation.boxes[face, 0]
                errors.append(np.linalg.norm(found.landmarks[best].numpy() - annotation.landmarks[face], axis=1)
                              / width)
    errors = np.array(errors)  # (faces, 5)
    assert len(errors) == 25
    assert errors.max() < 0.11 and errors.mean(axis=0).max() < 0.05


@pytest.mark.slow
def test_compreface_nose_points(detector):
    items = load_benchmark(shared_path("data", "faces_in_photos", "compreface", "annotations.json"))
    curve = evaluate_detector(detector, items)
    assert curve.num_ground_truth == 46
    assert curve.ap == pytest.approx(1.0)
    assert curve.at_threshold(0.9)[1] == 1.0


def small_face_photo(face_width: int):
    """A dlib face shrunk to ``face_width`` px, pasted on a grey 640 × 480 photo → (photo, face box)."""
    annotation = read_dlib_xml(shared_path("data", "detection", "dlib_faces", "testing.xml"))[4]
    image = read_image(annotation.image_path)
    x1, y1, x2, y2 = annotation.boxes[0].astype(int)
    width, height = x2 - x1, y2 - y1
    left, top = max(0, x1 - width // 2), max(0, y1 - height // 2)
    scale = face_width / width
    crop = cv2.resize(image[top:y2 + height // 2, left:x2 + width // 2], None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA)
    photo = np.full((480, 640, 3), 128, dtype=np.uint8)
    origin_x, origin_y = 350, 250
    photo[origin_y:origin_y + crop.shape[0], origin_x:origin_x + crop.shape[1]] = crop
    box = (np.array([x1 - left, y1 - top, x2 - left, y2 - top]) * scale + [origin_x, origin_y] * 2)
    return photo, torch.tensor(box, dtype=torch.float32)[None]


def test_planned_passes_find_a_face_too_small_for_the_whole_photo():
    """A 14 px face at long side 320 is 7 px, under the smallest (10 px) anchor: missed on the whole photo,
    found at the planner's passes for 14-px faces (one at scale 16/14, tiled when the input may only be 256)."""
    weights = shared_path(*CHECKPOINT)
    photo, face = small_face_photo(14)

    def hits(**options) -> int:
        found = retinaface_detector(weights, long_side=320, **options).detect([photo])[0]
        return int((box_iou(found.boxes, face)[:, 0] >= 0.5).sum()) if len(found) else 0

    assert hits() == 0
    assert hits(min_face_px=14) == 1
    assert hits(min_face_px=14, max_input_side=256) == 1


def test_targets_decode_back_to_the_faces():
    anchors = RetinaFaceAnchors.of_flavor("1mb")
    builder = RetinaFaceTargetBuilder(anchors, 160)
    boxes = torch.tensor([[20.0, 30.0, 60.0, 80.0], [100.0, 90.0, 112.0, 104.0]])
    points = torch.rand(2, 5, 2) * (boxes[:, None, 2:] - boxes[:, None, :2]) + boxes[:, None, :2]
    points[1] = float("nan")  # the second face has no landmarks
    targets = builder([{"boxes": boxes, "landmarks": points, "ignore": torch.zeros(2, dtype=torch.bool)}])
    positive = targets["labels"][0] == 1
    assert positive.sum() >= 2
    anchor_boxes = builder.anchors_cxcywh[positive]
    decoded = anchors.coder.decode(targets["box_offsets"][0][positive], anchor_boxes)
    assert torch.allclose(decoded, targets["boxes"][0][positive], atol=1e-4)
    matched_faces = {tuple(b.tolist()) for b in targets["boxes"][0][positive]}
    assert matched_faces == {tuple(b.tolist()) for b in boxes}  # every face has an anchor, even the 12 px one
    valid = targets["landmark_valid"][0]
    first_face = positive & valid
    assert first_face.any() and not (valid & ~positive).any()
    decoded_points = anchors.coder.decode_points(targets["landmark_offsets"][0][first_face],
                                                 builder.anchors_cxcywh[first_face])
    assert torch.allclose(decoded_points, points[0].expand_as(decoded_points), atol=1e-4)


def test_postprocess_recovers_boxes_from_perfect_outputs():
    anchors = RetinaFaceAnchors.of_flavor("1mb")
    builder = RetinaFaceTargetBuilder(anchors, 160)
    boxes = torch.tensor([[20.0, 30.0, 60.0, 80.0]])
    targets = builder([{"boxes": boxes, "landmarks": torch.full((1, 5, 2), 40.0), "ignore": torch.zeros(1).bool()}])
    logits = torch.stack([(targets["labels"] != 1).float(), (targets["labels"] == 1).float()], dim=-1) * 10
    found = RetinaFacePostprocessor(anchors, 0.5, 0.4)(targets["box_offsets"], logits,
                                                        targets["landmark_offsets"].flatten(2), 160, 160)[0]
    assert len(found) == 1
    assert torch.allclose(found.boxes, boxes, atol=1e-3)
    assert torch.allclose(found.landmarks, torch.full((1, 5, 2), 40.0), atol=1e-3)


def _loss_inputs(num_anchors=50, positives=(3, 7)):
    labels = torch.zeros(1, num_anchors, dtype=torch.long)
    labels[0, list(positives)] = 1
    labels[0, 10] = -1  # ignored
    targets = {"labels": labels, "boxes": torch.tensor([10.0, 10.0, 30.0, 30.0]).expand(1, num_anchors, 4).clone(),
               "box_offsets": torch.randn(1, num_anchors, 4), "landmark_offsets": torch.randn(1, num_anchors, 5, 2),
               "landmark_valid": labels == 1}
    anchors = torch.tensor([20.0, 20.0, 16.0, 16.0]).expand(num_anchors, 4)
    return targets, anchors


def test_loss_mines_three_negatives_per_positive():
    targets, anchors = _loss_inputs()
    loss = RetinaFaceLoss(anchors, RetinaFaceAnchors().coder, hard_negative_ratio=3.0)
    # Perfect regression; logits 0 (loss log 2) everywhere except 20 confidently wrong negatives (loss ~5).
    logits = torch.zeros(1, 50, 2)
    wrong = [i for i in range(50) if targets["labels"][0, i] == 0][:20]
    logits[0, wrong, 1] = 5.0
    terms = loss(targets["box_offsets"], logits, targets["landmark_offsets"].flatten(2), targets)
    assert float(terms["loss_box"]) == 0.0 and float(terms["loss_landmarks"]) == 0.0
    per_wrong = float(torch.nn.functional.cross_entropy(torch.tensor([[0.0, 5.0]]), torch.tensor([0])))
    expected = (2 * np.log(2) + 6 * per_wrong) / 2  # 2 positives, the 6 hardest negatives, per positive
    assert float(terms["loss_cls"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("options", [{"use_focal_loss": True}, {"box_loss": "giou"}])
def test_focal_and_giou_options_train(options):
    targets, anchors = _loss_inputs()
    loss = RetinaFaceLoss(anchors, RetinaFaceAnchors().coder, **options)
    offsets = torch.zeros(1, 50, 4, requires_grad=True)
    logits = torch.zeros(1, 50, 2, requires_grad=True)
    terms = loss(offsets, logits, torch.zeros(1, 50, 10), targets)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and offsets.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    if options.get("box_loss") == "giou":
        # anchor (12..28)² vs face (10..30)²: IoU 256/400, enclosing box = the face → GIoU loss 1 - 0.64
        assert terms["loss_box"].item() == pytest.approx(1 - 256 / 400, rel=1e-5)


def test_infer_cli_with_retinaface(tmp_path):
    import infer

    image = shared_path("data", "detection", "dlib_faces", "2008_002470.jpg")
    out = tmp_path / "dets.json"
    assert infer.main(["--detector", "retinaface", "--input", str(image), "--out", str(out)]) == 0
    faces = json.loads(out.read_text())[str(image)]
    assert len(faces) == 6 and all(face["score"] >= 0.9 for face in faces)


@pytest.mark.slow
def test_overfit_a_few_real_photos(tmp_path):
    """From scratch on 8 dlib face crops (no augmentation, validated on the same crops): loss falls tenfold,
    AP@0.5 rises from ~0 to ≥ 0.9."""
    history = overfit_crops("retinaface", tmp_path, lr=5e-3)
    first, last = history[0], history[-1]
    assert first["val/ap50"] < 0.1
    assert last["val/ap50"] >= 0.9, last
    assert last["train/loss"] < first["train/loss"] / 10
