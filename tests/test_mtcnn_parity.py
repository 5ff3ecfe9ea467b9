"""MTCNN: weight import, the exact area resampling, box helpers, and parity of the whole detector with
facenet-pytorch's MTCNN on real photos (dlib, CompreFace, LFW); large photos with a working resolution."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.boxes import box_iou
from common.detections import Detections
from detection.mtcnn.detector import MTCNNDetector, load_mtcnn_weights, mtcnn_detector
from detection.mtcnn.model import ONet, PNet, RNet, load_facenet_weights, load_pretrained_mtcnn
from detection.mtcnn.postprocess import AreaSampler, crop_regions, min_overlap_nms, square, working_scale
from tests.conftest import SHARED, shared_path

facenet_pytorch = pytest.importorskip("facenet_pytorch", reason="parity is measured against facenet-pytorch")

MIN_FACE, THRESHOLDS, FACTOR = 20, (0.6, 0.7, 0.7), 0.709
# measured on these 43 photos (README): worst box IoU 0.999997, landmarks 2.4e-4 px, scores 8.3e-7
MIN_BOX_IOU, MAX_LANDMARK_PX, MAX_SCORE_DIFF = 0.9999, 1e-3, 5e-6
NET_TOL = 1e-5
LARGE_PORTRAITS = ("003_A.jpg", "004_A.jpg")  # 33 and 12 megapixels; facenet puts 2 false boxes on the first


def _photos() -> list[str]:
    """dlib photos, the small CompreFace photos (the *_A.jpg portraits are 12-36 megapixels), 20 LFW faces."""
    compreface = sorted(p for p in SHARED.glob("data/faces_in_photos/compreface/*.jpg") if "_A." not in p.name)
    lfw = sorted(SHARED.glob("data/lfw/deepfunneled/*/*_0001.jpg"))[:20]
    files = sorted(SHARED.glob("data/detection/dlib_faces/*.jpg")) + compreface + lfw
    return [str(p.relative_to(SHARED)) for p in files] or ["<../shared absent>"]


@pytest.fixture(scope="module")
def reference():
    return facenet_pytorch.MTCNN(keep_all=True, device="cpu", min_face_size=MIN_FACE, thresholds=list(THRESHOLDS),
                                 factor=FACTOR, post_process=False)


@pytest.fixture(scope="module")
def ours() -> MTCNNDetector:
    return mtcnn_detector(min_face_px=MIN_FACE, thresholds=THRESHOLDS, factor=FACTOR)


def _read(relative: str) -> np.ndarray:
    from common.io import read_image
    return read_image(shared_path(*relative.split("/")))


def _assert_parity(reference_output, detections: Detections, what: str) -> None:
    boxes, scores, points = reference_output
    count = 0 if boxes is None else len(boxes)
    assert len(detections) == count, f"{what}: facenet-pytorch finds {count} faces, ours {len(detections)}"
    if count == 0:
        return
    boxes = torch.from_numpy(np.asarray(boxes, np.float32))
    iou = box_iou(boxes, detections.boxes)
    best_iou, match = iou.max(1)
    assert len(set(match.tolist())) == count, f"{what}: two facenet faces matched the same box of ours"
    assert best_iou.min() >= MIN_BOX_IOU, f"{what}: box IoU {best_iou.min():.4f} < {MIN_BOX_IOU}"
    landmark_error = (torch.from_numpy(np.asarray(points, np.float32)) - detections.landmarks[match]).abs().max()
    assert landmark_error <= MAX_LANDMARK_PX, f"{what}: landmarks differ by {landmark_error:.3f} px"
    score_error = (torch.from_numpy(np.asarray(scores, np.float32)) - detections.scores[match]).abs().max()
    assert score_error <= MAX_SCORE_DIFF, f"{what}: scores differ by {score_error:.2e}"


# -- networks -------------------------------------------------------------------------------------------------
def test_imported_nets_equal_facenet_nets_on_random_inputs():
    from facenet_pytorch.models.mtcnn import ONet as FacenetONet, PNet as FacenetPNet, RNet as FacenetRNet

    torch.manual_seed(0)
    pnet, rnet, onet = load_pretrained_mtcnn()
    cases = [(pnet, FacenetPNet(), torch.randn(2, 3, 37, 53)), (rnet, FacenetRNet(), torch.randn(16, 3, 24, 24)),
             (onet, FacenetONet(), torch.randn(16, 3, 48, 48))]
    with torch.no_grad():
        for net, facenet_net, x in cases:
            ours, theirs = net(x), facenet_net.eval()(x)
            # facenet returns (offsets, probs) / (offsets, landmarks, probs) with softmax applied; ours logits
            ours = (*ours[:-1], F.softmax(ours[-1], dim=1))
            assert len(ours) == len(theirs)
            for mine, reference in zip(ours, theirs):
                assert mine.shape == reference.shape
                assert (mine - reference).abs().max() <= NET_TOL, type(net).__name__


def test_nets_follow_the_training_api_and_train():
    pnet, rnet, onet = PNet(), RNet(), ONet()
    offsets, logits = pnet(torch.randn(2, 3, 12, 12))
    assert offsets.shape == (2, 4, 1, 1) and logits.shape == (2, 2, 1, 1)
    offsets, logits = pnet(torch.randn(1, 3, 50, 31))
    assert offsets.shape == (1, 4, 20, 11) and logits.shape == (1, 2, 20, 11)  # ceil((H - 2) / 2) - 4
    offsets, logits = rnet(torch.randn(3, 3, 24, 24))
    assert offsets.shape == (3, 4) and logits.shape == (3, 2)
    offsets, landmarks, logits = onet(torch.randn(3, 3, 48, 48))
    assert offsets.shape == (3, 4) and landmarks.shape == (3, 10) and logits.shape == (3, 2)
    (offsets.sum() + landmarks.sum() + logits.sum()).backward()
    assert all(p.grad is not None for p in onet.parameters())


def test_weight_import_errors_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match="PNet, RNet or ONet"):
        load_facenet_weights(torch.nn.Linear(1, 1))
    with pytest.raises(FileNotFoundError, match="facenet-pytorch"):
        load_facenet_weights(PNet(), tmp_path / "missing.pt")
    torch.save({"pnet": PNet().state_dict()}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing rnet, onet"):
        load_mtcnn_weights(tmp_path / "partial.pth")


def test_our_weight_files_load_in_every_layout(tmp_path):
    nets = load_pretrained_mtcnn()
    states = {name: net.state_dict() for name, net in zip(("pnet", "rnet", "onet"), nets)}
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    expected = MTCNNDetector(*load_pretrained_mtcnn()).detect([image])[0]
    layouts = {"bare.pth": states, "per_net.pth": {k: {"model": v} for k, v in states.items()},
               "checkpoint.pth": {"model": states, "epoch": 3}}
    for name, payload in layouts.items():
        torch.save(payload, tmp_path / name)
        for loaded, net in zip(load_mtcnn_weights(tmp_path / name), nets):
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
        got = mtcnn_detector(weights=tmp_path / name).detect([image])[0]
        assert torch.equal(got.boxes, expected.boxes), name


def test_detector_is_registered_and_checks_its_arguments():
    from detection.mtcnn.detector import mtcnn_detector

    detector = mtcnn_detector(score_threshold=0.05, nms_iou=0.3)
    assert isinstance(detector, MTCNNDetector)
    with pytest.raises(ValueError, match="min_face >= 1"):
        mtcnn_detector(min_face_px=0)
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect([np.zeros((10, 10), np.uint8)])
    assert detector.detect([]) == []
    blank = detector.detect([np.zeros((40, 60, 3), np.uint8)])
    assert len(blank) == 1 and len(blank[0]) == 0


# -- helpers --------------------------------------------------------------------------------------------------
def test_area_sampler_equals_pytorch_area_interpolation_bit_for_bit():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (61, 83, 3), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
              rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)]
    sampler = AreaSampler(images)
    as_float = [torch.from_numpy(image).permute(2, 0, 1)[None].float() for image in images]
    for size in ((36, 49), (61, 83), (90, 17), (12, 12)):  # down, same, up/down, tiny
        pyramid = sampler.resize([0, 2], *size)
        expected = F.interpolate(torch.cat([as_float[0], as_float[2]]), size=size, mode="area")
        assert torch.equal(pyramid, expected), size
        assert pyramid.is_contiguous(memory_format=torch.channels_last)
    ids = torch.tensor([1, 0, 2, 1])
    y0, y1 = torch.tensor([0, 5, 60, 3]), torch.tensor([40, 61, 61, 20])
    x0, x1 = torch.tensor([0, 7, 0, 30]), torch.tensor([50, 80, 83, 31])  # whole, large, 1-px row, 1-px column
    for size in (24, 48):
        crops = sampler.sample(ids, y0, y1, x0, x1, size, size)
        for k in range(len(ids)):
            region = as_float[int(ids[k])][:, :, int(y0[k]):int(y1[k]), int(x0[k]):int(x1[k])]
            assert torch.equal(crops[k:k + 1], F.interpolate(region, size=(size, size), mode="area"))


def test_min_overlap_nms_removes_nested_boxes_per_image():
    boxes = torch.tensor([[0.0, 0, 99, 99], [10, 10, 49, 49], [200, 200, 260, 260], [0, 0, 99, 99]])
    scores = torch.tensor([0.9, 0.95, 0.8, 0.7])
    groups = torch.tensor([0, 0, 0, 1])
    # the small box lies inside the big one: IoU 0.16, intersection over the smaller box 1.0
    assert min_overlap_nms(boxes, scores, groups, 0.7).tolist() == [1, 2, 3]


def test_square_and_crop_regions_follow_mtcnn_conventions():
    squared = square(torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    assert squared.tolist() == [[0.0, 20.0, 40.0, 60.0]]
    boxes = torch.tensor([[-5.7, 3.2, 20.9, 30.5], [50.0, 10.0, 80.0, 45.0], [100.0, 0.0, 120.0, 10.0]])
    y0, y1, x0, x1, valid = crop_regions(boxes, torch.tensor([40, 40, 40]), torch.tensor([60, 60, 60]))
    # trunc toward zero, clamp the start to pixel 1 (then 0-based), the end to the photo side
    assert (y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist()) == ([2, 9, 0], [30, 40, 10], [0, 49, 99], [20, 60, 60])
    assert valid.tolist() == [True, True, False]


def test_working_scale_keeps_the_smallest_face_that_matters():
    assert working_scale(480, 640, 20, None, None, 20) == (1.0, 20.0)  # default: facenet's algorithm untouched
    scale, min_face = working_scale(7360, 4912, 20, None, 0.1, 20)  # smallest face 491 px -> 20 px
    assert scale == pytest.approx(20 / 491.2) and min_face == pytest.approx(20)
    scale, min_face = working_scale(7360, 4912, 20, 1024, None, 20)
    assert scale == pytest.approx(1024 / 7360) and min_face == 12.0  # 20 * scale < 12: P-Net's floor
    assert working_scale(300, 400, 20, 1024, None, 20) == (1.0, 20.0)  # already small


# -- parity on real photos ------------------------------------------------------------------------------------
@pytest.mark.parametrize("photo", _photos())
def test_detections_match_facenet_pytorch(photo, reference, ours):
    image = _read(photo)
    _assert_parity(reference.detect(image, landmarks=True), ours.detect([image])[0], photo)


def test_a_batch_of_photos_of_different_sizes_equals_one_at_a_time(ours):
    photos = [p for p in _photos() if "compreface" in p or "lfw" in p][:8]
    images = [_read(p) for p in photos]
    assert len({image.shape for image in images}) > 1
    batched = ours.detect(images)
    for photo, image, detections in zip(photos, images, batched):
        single = ours.detect([image])[0]
        assert len(single) == len(detections), photo
        assert torch.allclose(single.boxes, detections.boxes, atol=1e-3), photo
        assert torch.allclose(single.scores, detections.scores, atol=1e-5), photo


def test_lfw_batch_matches_facenet_batch(reference):
    files = sorted(shared_path("data", "lfw", "deepfunneled").glob("*/*_0001.jpg"))[20:36]
    images = [_read(str(f.relative_to(SHARED))) for f in files]
    detector = mtcnn_detector(batch_size=8)  # 16 photos of one size: two P-Net batches
    boxes, scores, points = reference.detect(images, landmarks=True)
    found = detector.detect(images)
    for name, box, score, point, detections in zip(files, boxes, scores, points, found):
        _assert_parity((box, score, point), detections, name.name)
    # our landmark order: image-left eye, image-right eye, nose, image-left and image-right mouth corner
    best = torch.stack([d.landmarks[d.scores.argmax()] for d in found if len(d)])  # (N, 5, 2), upright faces
    assert (best[:, 0, 0] < best[:, 1, 0]).all() and (best[:, 3, 0] < best[:, 4, 0]).all()
    assert (best[:, 2, 1] > best[:, :2, 1].max(1).values).all() and (best[:, 3:, 1] > best[:, 2:3, 1]).all()


def test_max_side_maps_faces_back_to_photo_pixels():
    import cv2

    image = _read("data/faces_in_photos/compreface/016_8.jpg")
    height, width = image.shape[:2]
    large = cv2.resize(image, (width * 3, height * 3), interpolation=cv2.INTER_LINEAR)
    # a third of the side: 20-px faces of the original would be 6.7 px, so 12 px (P-Net's window) is sought
    expected = mtcnn_detector(min_face_px=12).detect([image])[0]
    shrunk = mtcnn_detector(max_side=max(width, height)).detect([large])[0]
    assert len(shrunk) == len(expected)
    iou = box_iou(expected.boxes * 3, shrunk.boxes).max(1).values
    assert iou.min() >= 0.85
    assert shrunk.landmarks[:, :, 0].max() <= width * 3 and shrunk.landmarks[:, :, 1].max() <= height * 3


# -- large photos ---------------------------------------------------------------------------------------------
def _nose_hits(boxes: np.ndarray, noses: list) -> tuple[int, int]:
    """(faces found: a box holds the nose point, each box used once; boxes holding no nose)."""
    used, hits = set(), 0
    for x, y in noses:
        for index, (x1, y1, x2, y2) in enumerate(boxes):
            if index not in used and x1 <= x <= x2 and y1 <= y <= y2:
                used.add(index)
                hits += 1
                break
    return hits, len(boxes) - hits


@pytest.mark.slow
@pytest.mark.parametrize("photo", LARGE_PORTRAITS)
def test_max_side_is_faster_than_facenet_on_large_photos_and_keeps_recall(photo, reference):
    folder = shared_path("data", "faces_in_photos", "compreface")
    noses = json.loads((folder / "annotations.json").read_text())["nose_points_xy"][photo]
    image = _read(f"data/faces_in_photos/compreface/{photo}")
    detector = mtcnn_detector(max_side=1024)
    detector.detect([image[:64, :64].copy()])  # warm-up outside the timing

    start = time.perf_counter()
    boxes, _ = reference.detect(image)
    facenet_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detections = detector.detect([image])[0]
    our_seconds = time.perf_counter() - start

    facenet_hits, facenet_false = _nose_hits(np.zeros((0, 4)) if boxes is None else boxes, noses)
    hits, false = _nose_hits(detections.boxes.numpy(), noses)
    print(f"{photo}: facenet {facenet_seconds:.1f} s, {facenet_hits} found, {facenet_false} false; "
          f"ours (max_side 1024) {our_seconds:.2f} s, {hits} found, {false} false")
    assert hits >= facenet_hits and hits == len(noses)
    assert false <= facenet_false
    assert our_seconds < facenet_seconds / 3


def test_photos_without_faces_or_too_small_for_the_pyramid_give_empty_detections():
    detector = mtcnn_detector()
    blank, tiny = np.zeros((200, 300, 3), np.uint8), np.full((5, 7, 3), 128, np.uint8)
    for found in detector.detect([blank, tiny]):
        assert len(found) == 0 and found.landmarks.shape == (0, 5, 2)
    assert detector.propose(blank, "rnet").shape == (0, 4)
    with pytest.raises(ValueError, match="pnet or rnet"):
        detector.propose(blank, "onet")
