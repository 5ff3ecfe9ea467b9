import math

import pytest
import torch

from common.anchors import BLAZEFACE_ANCHOR_OPTIONS, AnchorGenerator
from common.box_coder import BoxCoder
from common.boxes import (box_iou, cxcywh_to_xyxy, nms, normalized_yxyx_to_xyxy, weighted_nms, xywh_to_xyxy,
                          xyxy_to_cxcywh)
from common.matcher import BACKGROUND, IGNORE, match_anchors


def test_converters_round_trip_and_mediapipe_layout():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    assert torch.equal(xywh_to_xyxy([[10, 20, 40, 80]]), xyxy)
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    # MediaPipe: relative ymin, xmin, ymax, xmax
    assert torch.allclose(normalized_yxyx_to_xyxy([[0.1, 0.25, 0.5, 0.75]], 200, 100),
                          torch.tensor([[50.0, 10.0, 150.0, 50.0]]))
    assert xywh_to_xyxy([]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        xywh_to_xyxy([[1, 2, 3]])


def test_iou_and_nms():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(50 / 150)
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3)
    assert keep.tolist() == [0, 2]


def test_weighted_nms_blends_cluster_by_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.3, 0.8])
    points = torch.tensor([[[1.0, 1.0]], [[3.0, 1.0]], [[55.0, 55.0]]])
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, 0.3, points)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8])
    # (0.9 * 0 + 0.3 * 2) / 1.2 = 0.5
    assert out_boxes[0].tolist() == pytest.approx([0.5, 0, 10.5, 10])
    assert out_points[0, 0].tolist() == pytest.approx([1.5, 1.0])
    assert out_boxes[1].tolist() == pytest.approx([50, 50, 60, 60])


def test_mediapipe_front_anchors_match_the_calculator():
    anchors = AnchorGenerator.mediapipe(**BLAZEFACE_ANCHOR_OPTIONS["front"])(128, 128)
    assert anchors.shape == (896, 4)
    # 16×16 cells × 2 anchors at stride 8, then 8×8 × 6 at stride 16; centres at (i + 0.5) * stride.
    assert anchors[0, :2].tolist() == [4.0, 4.0] and anchors[2, :2].tolist() == [12.0, 4.0]
    assert anchors[511, :2].tolist() == [124.0, 124.0]
    assert anchors[512, :2].tolist() == [8.0, 8.0] and anchors[895, :2].tolist() == [120.0, 120.0]
    # scales: min 0.1484375 and interpolated sqrt(s0 * s1) with s1 = 0.1484375 + (0.75 - 0.1484375) / 3
    s1 = 0.1484375 + (0.75 - 0.1484375) / 3
    assert anchors[0, 2].item() == pytest.approx(0.1484375 * 128)
    assert anchors[1, 2].item() == pytest.approx(math.sqrt(0.1484375 * s1) * 128)
    assert anchors[512 + 5, 2].item() == pytest.approx(math.sqrt(0.75 * 1.0) * 128)  # last layer: with 1.0
    fixed = AnchorGenerator.mediapipe(**BLAZEFACE_ANCHOR_OPTIONS["front"], fixed_anchor_size=True)(128, 128)
    assert torch.all(fixed[:, 2:] == 128)
    back = AnchorGenerator.mediapipe(**BLAZEFACE_ANCHOR_OPTIONS["back"])(256, 256)
    assert back.shape == (896, 4) and back[0, :2].tolist() == [8.0, 8.0]


def test_retinaface_style_anchors():
    generator = AnchorGenerator.from_min_sizes([8, 16, 32], [[16, 32], [64, 128], [256, 512]])
    anchors = generator(640, 640)
    assert anchors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4) == (generator.num_anchors(640, 640), 4)
    assert anchors[:2].tolist() == [[4, 4, 16, 16], [4, 4, 32, 32]]


@pytest.mark.parametrize("mode", ["log", "linear"])
def test_box_coder_round_trip(mode):
    coder = BoxCoder(0.1, 0.2, mode)
    anchors = torch.tensor([[50.0, 50, 20, 20], [100, 80, 40, 60]])
    boxes = torch.tensor([[42.0, 45, 61, 58], [70, 60, 130, 120]])
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4)
    points = torch.tensor([[[45.0, 48], [55, 49]], [[90, 70], [110, 72]]])
    assert torch.allclose(coder.decode_points(coder.encode_points(points, anchors), anchors), points, atol=1e-4)


def test_mediapipe_coder_offsets_are_pixels():
    coder = BoxCoder(1 / 128, 1 / 128, "linear")
    anchors = torch.tensor([[64.0, 64, 128, 128]])
    decoded = coder.decode(torch.tensor([[3.0, -2.0, 30.0, 20.0]]), anchors)
    assert decoded.tolist() == [[pytest.approx(52.0), pytest.approx(52.0), pytest.approx(82.0), pytest.approx(72.0)]]


def test_matcher_gives_two_faces_in_one_cell_an_anchor_each():
    # Two small faces whose best anchor is the same one: the assignment must give each its own anchor.
    anchors = cxcywh_to_xyxy(torch.tensor([[8.0, 8, 16, 16], [8, 8, 24, 24], [24, 8, 16, 16]]))
    faces = torch.tensor([[2.0, 2, 12, 12], [4, 3, 14, 13]])
    matched = match_anchors(anchors, faces, positive_iou=0.9, negative_iou=0.3)
    assert sorted(matched[matched >= 0].tolist()) == [0, 1]
    # Thresholds: an anchor far from every face is background.
    assert matched[2].item() in (BACKGROUND, IGNORE)
    assert match_anchors(anchors, torch.zeros(0, 4)).tolist() == [BACKGROUND] * 3


def test_matcher_ignore_faces_never_become_positives():
    anchors = cxcywh_to_xyxy(torch.tensor([[8.0, 8, 16, 16], [40, 40, 16, 16]]))
    faces = torch.tensor([[0.0, 0, 16, 16], [32, 32, 48, 48]])
    matched = match_anchors(anchors, faces, gt_ignore=torch.tensor([False, True]))
    assert matched.tolist() == [0, IGNORE]
