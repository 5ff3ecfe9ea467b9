import numpy as np
import pytest
import torch

from common.metrics import average_precision, match_image, voc_ap


def test_voc_all_point_ap_known_answer():
    # PASCAL VOC devkit example: hits at ranks 1, 3 of 3 detections for 2 faces.
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_average_precision_with_duplicates_misses_and_ignore():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    preds = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 31], [60, 60, 70, 70], [40, 40, 50, 50]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    ignore = torch.tensor([False, False, True])
    kept, hits = match_image(preds, scores, gt, ignore)
    # the duplicate of face 0 is a false positive; the detection of the ignored face is dropped
    assert hits.tolist() == [True, False, True, False] and len(kept) == 4
    curve = average_precision([{"pred_boxes": preds, "pred_scores": scores, "gt_boxes": gt, "gt_ignore": ignore}])
    assert curve.num_ground_truth == 2
    # precision 1, 1/2, 2/3 at recalls 0.5, 0.5, 1.0 → AP = 0.5 + 0.5 * 2/3
    assert curve.ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_point_matching():
    curve = average_precision([{"pred_boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]),
                                "pred_scores": torch.tensor([0.9, 0.8, 0.7]),
                                "gt_points": [[5, 5], [55, 55], [100, 100]]}])
    assert curve.num_ground_truth == 3
    assert curve.ap == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3)


def test_operating_point_counts_only_detections_above_the_threshold():
    images = [{"pred_boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], "pred_scores": [0.9, 0.8, 0.3],
               "gt_boxes": [[0, 0, 10, 10], [20, 20, 30, 30]]}]
    curve = average_precision(images)
    assert curve.at_threshold(0.85) == (1.0, 0.5)
    assert curve.at_threshold(0.5) == (0.5, 0.5)
    assert curve.at_threshold(0.1) == (2 / 3, 1.0)
    assert curve.at_threshold(0.95) == (1.0, 0.0)
