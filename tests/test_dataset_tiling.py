import numpy as np
import pytest
import torch

from common.detections import Detections
from common.config import ConfigError
from common.tiling import drop_cut_faces, plan_passes
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


@pytest.mark.parametrize("height, width", [(1080, 1920), (2160, 3840), (2000, 3000), (250, 250), (480, 300)])
@pytest.mark.parametrize("face_px, input_side", [((16, 112), 128), ((16, 256), 2048), ((12, 60), 96)])
def test_planned_passes_find_every_face_size_from_the_minimum_whole_in_some_tile(height, width, face_px, input_side):
    smallest, largest = face_px
    passes = plan_passes(height, width, 20, face_px, input_side)
    coarsest, finest = passes[0], passes[-1]
    assert len(coarsest.tiles) == 1 and coarsest.face_px[1] == min(height, width)
    assert finest.face_px[0] == pytest.approx(min(20, coarsest.face_px[0]))
    rng = np.random.default_rng(0)
    for index, look in enumerate(passes):
        if index:  # each pass takes the faces too small for the one before
            assert look.face_px[1] == pytest.approx(passes[index - 1].face_px[0])
            assert look.scale > passes[index - 1].scale
        assert look.face_px[1] * look.scale <= largest * (1 + 1e-6) or index == 0
        side = max(x2 - x1 for x1, _, x2, _ in look.tiles)
        assert side * look.scale <= input_side + 1
        covered = np.zeros((height, width), bool)
        for x1, y1, x2, y2 in look.tiles:
            covered[y1:y2, x1:x2] = True
        assert covered.all()
        # a face as large as the pass is responsible for, anywhere, lies whole (clear of the edge margin) in a tile
        face = min(look.face_px[1], height, width) - 1
        tiles = np.array(look.tiles, np.float64)
        for x, y in rng.uniform(0, 1, (200, 2)) * [width - face, height - face]:
            inside = ((tiles[:, 0] <= x - 2 * (tiles[:, 0] > 0)) & (tiles[:, 1] <= y - 2 * (tiles[:, 1] > 0))
                      & (tiles[:, 2] >= x + face + 2 * (tiles[:, 2] < width))
                      & (tiles[:, 3] >= y + face + 2 * (tiles[:, 3] < height)))
            assert inside.any(), (index, x, y, face)


def test_planner_takes_no_more_passes_than_needed():
    assert len(plan_passes(2160, 3840, None, (16, 112), 128)) == 1  # no minimum: the whole photo once
    assert len(plan_passes(250, 250, 120, (16, 112), 128)) == 1     # the whole photo already shows 120-px faces
    # a fully convolutional network with a wide range takes the photo at two scales and tiles neither much
    retina = plan_passes(2160, 3840, 20, (16, 256), 2048)
    assert len(retina) == 2 and retina[-1].scale == pytest.approx(0.8)
    blaze = plan_passes(2160, 3840, 20, (16, 112), 128)
    assert [len(look.tiles) for look in blaze] == [1, 6, 28, 135, 646]
    for bad in [(112, 16), (0, 10)]:
        with pytest.raises(ConfigError, match="face_px"):
            plan_passes(100, 100, 20, bad, 128)
    with pytest.raises(ConfigError, match="min_face_px"):
        plan_passes(100, 100, -1, (16, 112), 128)


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
