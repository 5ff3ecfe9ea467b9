"""YuNet: libfacedetection.train's checkpoint in our module, raw-output and detection parity with OpenCV's
``cv2.dnn`` / ``cv2.FaceDetectorYN`` on the published ONNX file, points and loss, detection figures on real photos,
small faces by the planner, and a short from-scratch training on real photos.

Raw outputs: |ours - OpenCV| <= 2e-5 (measured on these photos: 7e-6 at most; raw outputs reach 2.5). Detections:
boxes and landmarks within 0.01 px, scores within 1e-4 (``FaceDetectorYN`` returns them rounded by its own
arithmetic)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from common.boxes import box_iou
from common.io import read_image
from common.points import decode_boxes, decode_landmarks
from common.registry import build_model
from detection.evaluation import evaluate_detector, load_benchmark
from detection.yunet.detector import load_weights, preprocess, yunet_detector
from detection.yunet.postprocess import YuNetPostprocessor, face_scores
from detection.yunet.targets import yunet_points
from detection.yunet.training import yunet_task
from pipeline import default_config_path, detection_config, detector_from_config
from tests.blazeface_data import overfit_crops
from tests.conftest import shared_path
from tests.test_retinaface import small_face_photo
from tests.test_yolo import check_point_loss

CHECKPOINT = ("models", "yunet", "yunet_n.pth")
ONNX_FILE = ("models", "yunet", "yunet_n_640_640.onnx")
ONNX_SIDE = 640  # the published ONNX file's fixed input
PHOTOS = ("detection/dlib_faces/2008_002470.jpg", "detection/dlib_faces/2007_007763.jpg",
          "faces_in_photos/compreface/016_8.jpg", "faces_in_photos/compreface/009_C.jpg")
RAW_TOL = 2e-5
SCORE_TOL = 1e-4
BOX_TOL_PX = 1e-2
LEVELS = (8, 16, 32)


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return load_weights(build_model("yunet_n"), shared_path(*CHECKPOINT)).eval()


@pytest.fixture(scope="module")
def photos_640() -> list[np.ndarray]:
    """Real photos squashed to the ONNX file's 640×640, RGB."""
    return [cv2.resize(read_image(shared_path("data", *path.split("/"))), (ONNX_SIDE, ONNX_SIDE),
                       interpolation=cv2.INTER_AREA) for path in PHOTOS]


def test_published_checkpoint_fills_every_parameter(network, tmp_path):
    assert sum(p.numel() for p in network.parameters()) == 75_856  # the published parameter count
    torch.save({"state_dict": {"backbone.model0.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not fit YuNet"):
        load_weights(build_model("yunet_n"), tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="yunet_n.pth"):
        load_weights(build_model("yunet_n"), tmp_path / "missing.pth")


def test_raw_outputs_match_opencv_on_the_onnx_file(network, photos_640):
    net = cv2.dnn.readNetFromONNX(str(shared_path(*ONNX_FILE)))
    names = net.getUnconnectedOutLayersNames()
    for photo in photos_640:
        blob = cv2.dnn.blobFromImage(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))  # (1, 3, 640, 640) BGR 0-255
        net.setInput(blob)
        reference = dict(zip(names, net.forward(names)))
        with torch.no_grad():
            inputs = preprocess(torch.from_numpy(photo).permute(2, 0, 1)[None])
            assert torch.equal(inputs, torch.from_numpy(blob))
            boxes, cls, obj, landmarks = network(inputs)
        ours = {"bbox": boxes, "cls": torch.sigmoid(cls)[..., None], "obj": torch.sigmoid(obj)[..., None],
                "kps": landmarks}
        for key, value in ours.items():
            expected = np.concatenate([reference[f"{key}_{stride}"] for stride in LEVELS], axis=1)
            assert np.abs(value.numpy() - expected).max() <= RAW_TOL, key


def test_detections_match_face_detector_yn(photos_640):
    """The same faces, boxes, landmarks and scores as OpenCV's FaceDetectorYN at its threshold and NMS."""
    score_threshold, nms_iou = 0.5, 0.3
    reference = cv2.FaceDetectorYN.create(str(shared_path(*ONNX_FILE)), "", (ONNX_SIDE, ONNX_SIDE), score_threshold,
                                          nms_iou, 5000)
    ours = yunet_detector(shared_path(*CHECKPOINT), score_threshold=score_threshold, nms_iou=nms_iou,
                          long_side=ONNX_SIDE)
    total = 0
    for photo in photos_640:
        _, faces = reference.detect(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))  # (N, 15): x y w h, 5 points, score
        found = ours.detect([photo])[0]
        assert len(found) == len(faces)
        total += len(found)
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
        assert np.abs(found.boxes.numpy() - boxes).max() <= BOX_TOL_PX
        assert np.abs(found.landmarks.numpy().reshape(-1, 10) - faces[:, 4:14]).max() <= BOX_TOL_PX
        assert np.abs(found.scores.numpy() - faces[:, 14]).max() <= SCORE_TOL
    assert total >= 10


def test_points_sit_on_cell_corners():
    points, strides = yunet_points(64, 96)
    assert len(points) == 8 * 12 + 4 * 6 + 2 * 3
    assert points[:2].tolist() == [[0.0, 0.0], [8.0, 0.0]] and points[12].tolist() == [0.0, 8.0]
    assert points[-1].tolist() == [64.0, 32.0] and strides[-1] == 32
    with pytest.raises(ValueError, match="multiples of 32"):
        yunet_points(64, 100)
    # the face score is OpenCV's: the geometric mean of class and objectness probabilities
    score = face_scores(torch.tensor([0.0]), torch.tensor([np.log(0.8 / 0.2)]))
    assert score.item() == pytest.approx(np.sqrt(0.5 * 0.8))


def test_postprocess_decodes_one_confident_location():
    points, strides = yunet_points(64, 64)
    count = len(points)
    box, cls, obj, marks = (torch.zeros(1, count, 4), torch.full((1, count), -10.0), torch.full((1, count), -10.0),
                            torch.zeros(1, count, 10))
    index = 9  # stride 8, row 1, column 1: the point (8, 8)
    cls[0, index], obj[0, index] = 6.0, 6.0
    box[0, index] = torch.tensor([0.5, 0.0, np.log(2.0), np.log(3.0)])
    found = YuNetPostprocessor(score_threshold=0.5)(box, cls, obj, marks, 64, 64)[0]
    assert len(found) == 1 and found.boxes.tolist() == [[4.0, -4.0, 20.0, 20.0]]
    assert found.landmarks[0, 2].tolist() == [8.0, 8.0]
    assert torch.allclose(decode_boxes(box[0, index:index + 1], points[index:index + 1], strides[index:index + 1]),
                          found.boxes)
    assert decode_landmarks(marks[0, :1], points[:1], strides[:1]).shape == (1, 5, 2)


def test_dlib_testing_ap():
    shared_path(*CHECKPOINT)
    detector = detector_from_config(detection_config("yunet", default_config_path("yunet")), "cpu")
    curve = evaluate_detector(detector, load_benchmark(shared_path("data", "detection", "dlib_faces", "testing.xml")))
    assert curve.num_ground_truth == 25 and curve.ap == pytest.approx(1.0)
    assert curve.at_threshold(0.9) == (1.0, 1.0)  # the config's operating threshold


def test_planned_passes_find_a_face_too_small_for_the_whole_photo():
    """A 12 px face at long side 320 is 6 px, where YuNet finds no face: missed on the whole photo, found at the
    planner's passes for 12-px faces."""
    weights = shared_path(*CHECKPOINT)
    photo, face = small_face_photo(12)

    def hits(**options) -> int:
        found = yunet_detector(weights, score_threshold=0.5, long_side=320, **options).detect([photo])[0]
        return int((box_iou(found.boxes, face)[:, 0] >= 0.5).sum()) if len(found) else 0

    assert hits() == 0
    assert hits(min_face_px=12) == 1


def test_loss_terms_are_finite_and_ignored_faces_make_no_positives():
    torch.manual_seed(0)
    check_point_loss(yunet_task(detection_config("yunet", None), torch.device("cpu")), build_model("yunet_n"),
                     {"loss_cls", "loss_obj"})


def test_infer_cli_with_yunet(tmp_path):
    import infer

    image = shared_path("data", "detection", "dlib_faces", "2008_002470.jpg")
    shared_path(*CHECKPOINT)
    out = tmp_path / "dets.json"
    assert infer.main(["--detector", "yunet", "--input", str(image), "--out", str(out)]) == 0
    faces = json.loads(out.read_text())[str(image)]
    assert len(faces) == 6 and all(face["score"] >= 0.9 for face in faces)


@pytest.mark.slow
def test_overfit_a_few_real_photos(tmp_path):
    """From scratch on 8 dlib face crops (no augmentation, validated on the same crops) through the shared
    trainer: AP@0.5 rises from ~0 to ≥ 0.9 and the loss falls at least threefold."""
    history = overfit_crops("yunet", tmp_path, lr=1e-2)
    first, last = history[0], history[-1]
    assert first["val/ap50"] < 0.1
    assert last["val/ap50"] >= 0.9, last
    assert last["train/loss"] < first["train/loss"] / 3
