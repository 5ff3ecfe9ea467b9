import numpy as np
import pytest
import torch

from common.detections import Detections
from common.tiling import drop_cut_faces, make_tiles
from detection.data.dataset import FaceDetectionDataset, letterbox
from detection.data.readers import FaceAnnotation


def test_letterbox_keeps_aspect_and_pads_bottom_right():
    image = np.full((50, 100, 3), 200, np.uint8)
    boxed, scale = letterbox(image, 128)
    assert boxed.shape == (128, 128, 3) and scale == pytest.approx(1.28)
    assert boxed[63, 127].tolist() == [200] * 3 and boxed[65, 0].tolist() == [0] * 3


@pytest.fixture
def face_image(tmp_path):
    # A bright square "face" on the left half; landmarks: left eye, right eye, nose, left/right mouth corner.
    image = np.zeros((128, 128, 3), np.uint8)
    image[40:80, 10:50] = 255
    path = tmp_path / "face.png"
    from PIL import Image
    Image.fromarray(image).save(path)
    landmarks = np.array([[[20, 50], [40, 50], [30, 60], [22, 70], [38, 70]]], np.float32)
    return FaceAnnotation(path, np.array([[10, 40, 50, 80]], np.float32), landmarks, np.array([False]))


def test_flip_moves_boxes_and_swaps_left_right_landmarks(face_image):
    flip_only = {"scale_range": [1.0, 1.0], "translate": 0.0, "affine_p": 0.0, "flip_p": 1.0, "brightness": 0.0,
                 "contrast": 0.0, "saturation": 0, "min_visibility": 0.4}
    image, target = FaceDetectionDataset([face_image], 128, flip_only)[0]
    assert target["boxes"].tolist() == [[pytest.approx(78.0), 40.0, pytest.approx(118.0), 80.0]]
    points = target["landmarks"][0]
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # still image-left first
    assert points[0].tolist() == pytest.approx([128 - 1 - 40, 50])
    assert image[:, 60, 100].tolist() == [255, 255, 255]


def test_augmentation_is_replayable_per_epoch(face_image):
    augment = {"scale_range": [0.7, 1.3], "translate": 0.1, "affine_p": 1.0, "flip_p": 0.5, "brightness": 0.2,
               "contrast": 0.2, "saturation": 30, "min_visibility": 0.4}
    dataset = FaceDetectionDataset([face_image], 128, augment, seed=3)
    dataset.set_epoch(1)
    first = dataset[0]
    dataset.set_epoch(2)
    other = dataset[0]
    dataset.set_epoch(1)
    again = dataset[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], other[0])


def test_missing_landmarks_stay_missing(face_image):
    face_image.landmarks[:] = np.nan
    _, target = FaceDetectionDataset([face_image], 128, None)[0]
    assert torch.isnan(target["landmarks"]).all()


def test_tiles_cover_the_photo_with_overlap():
    tiles = make_tiles(375, 500, [1, 4])
    assert tiles[0] == (0, 0, 500, 375)
    small = tiles[1:]
    assert all(x2 - x1 == 125 and y2 - y1 == 125 for x1, y1, x2, y2 in small)
    covered = np.zeros((375, 500), bool)
    for x1, y1, x2, y2 in small:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert max(x2 for _, _, x2, _ in small) == 500 and max(y2 for _, _, _, y2 in small) == 375


def test_faces_cut_by_inner_tile_edges_are_dropped():
    detections = Detections(torch.tensor([[101.0, 10, 130, 40], [150, 50, 199, 80], [150, 150, 180, 200]]),
                            torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, 5, 2))
    kept = drop_cut_faces(detections, (100, 0, 200, 200), height=200, width=400)
    # left edge x=100 and right edge x=200 are inner; the bottom edge y=200 is the photo's own edge
    assert kept.scores.tolist() == pytest.approx([0.7])


def test_detections_helpers():
    detections = Detections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.5]), torch.ones(1, 5, 2))
    moved = detections.scaled(2, 2, 5, 1)
    assert moved.boxes.tolist() == [[5.0, 1.0, 25.0, 21.0]] and moved.landmarks[0, 0].tolist() == [7.0, 3.0]
    assert len(Detections.cat([detections, moved])) == 2 and len(Detections.empty()) == 0
    assert moved.to_json() == [{"box": [5.0, 1.0, 25.0, 21.0], "score": 0.5, "landmarks": [[7.0, 3.0]] * 5}]
    with pytest.raises(ValueError, match="landmarks"):
        Detections(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, 6, 2))
