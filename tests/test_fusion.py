"""Fusion: NMS / soft-NMS / weighted box fusion with known answers, votes, score calibration, tiling, and the fused
detector on real photos."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.detections import Detections
from fusion.calibration import ScoreCalibrator, labelled_scores
from fusion.detector import FusionDetector
from pipeline import fusion_from_config
from pipeline.config import PIPELINE_DEFAULTS
from fusion.merge import FusionSettings, fuse, soft_nms_scores
from tests.conftest import ROOT, shared_path


def faces(boxes, scores, landmark_offset=0.0) -> Detections:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 + landmark_offset
    return Detections(boxes, torch.tensor(scores, dtype=torch.float32), centres[:, None, :].repeat(1, 5, 1))


def test_weighted_box_fusion_averages_by_weight_times_score_and_scores_over_all_sources():
    a = faces([[0, 0, 10, 10], [100, 100, 120, 120]], [0.9, 0.8])
    b = faces([[1, 1, 11, 11]], [0.6], landmark_offset=1.0)  # IoU 81 / 119 with a's first face
    fused, votes = fuse([a, b], FusionSettings("wbf", iou=0.5))
    assert votes.tolist() == [2, 1]
    # (0 * 0.9 + 1 * 0.6) / 1.5 = 0.4 on each edge; score (0.9 + 0.6) / 2 sources
    assert torch.allclose(fused.boxes[0], torch.tensor([0.4, 0.4, 10.4, 10.4]))
    assert math.isclose(float(fused.scores[0]), 0.75, rel_tol=1e-6)
    assert torch.allclose(fused.landmarks[0, 0], torch.tensor([5.8, 5.8]))  # (5 * 0.9 + 7 * 0.6) / 1.5
    assert math.isclose(float(fused.scores[1]), 0.4, rel_tol=1e-6)  # seen by one of two sources
    weighted, _ = fuse([a, b], FusionSettings("wbf", iou=0.5, weights=[3.0, 1.0]))
    assert math.isclose(float(weighted.scores[0]), (3 * 0.9 + 0.6) / 4, rel_tol=1e-6)
    agreed, votes = fuse([a, b], FusionSettings("wbf", iou=0.5, min_votes=2))
    assert len(agreed) == 1 and votes.tolist() == [2]


def test_nms_keeps_the_best_box_and_counts_agreeing_sources():
    a = faces([[0, 0, 10, 10]], [0.7])
    b = faces([[1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.5])
    fused, votes = fuse([a, b], FusionSettings("nms", iou=0.5))
    assert fused.boxes.tolist() == [[1, 1, 11, 11], [50, 50, 60, 60]]
    assert fused.scores.tolist() == pytest.approx([0.9, 0.5]) and votes.tolist() == [2, 1]
    with pytest.raises(ValueError, match="2 fusion weights for 3 sources"):
        fuse([a, b, b], FusionSettings("nms", weights=[1, 1]))
    with pytest.raises(ValueError, match="fusion method"):
        FusionSettings("vote")


def test_soft_nms_decays_overlapping_scores_instead_of_dropping():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    order, decayed = soft_nms_scores(boxes, scores, 0.3, "gaussian", sigma=0.5)
    assert order.tolist() == [0, 2, 1]  # the second box's score fell below the distant third
    assert decayed.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5)])
    order, decayed = soft_nms_scores(boxes, scores, 0.3, "linear")
    assert decayed.tolist() == pytest.approx([0.9, 0.7, 0.8 * 0.5])
    order, decayed = soft_nms_scores(boxes, scores, 0.6, "linear")  # IoU 0.5 < 0.6: untouched
    assert decayed.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_calibration_is_monotone_fits_hits_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 400)
    hits = rng.uniform(0, 1, 400) < scores ** 3  # raw scores overstate the chance of a face
    for method in ("logistic", "isotonic"):
        calibrator = ScoreCalibrator(method).fit(scores, hits)
        grid = torch.linspace(0.01, 0.99, 50)
        calibrated = calibrator(grid)
        assert bool((calibrated[1:] >= calibrated[:-1] - 1e-6).all())
        assert float(calibrator(torch.tensor([0.5]))) < 0.3  # 0.5 ** 3 = 0.125
        loaded = ScoreCalibrator.load(calibrator.save(tmp_path / f"{method}.json"))
        assert torch.allclose(loaded(grid), calibrated)
    with pytest.raises(ValueError, match="both hits and misses"):
        ScoreCalibrator().fit([0.9, 0.8], [True, True])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a calibration file"):
        ScoreCalibrator.load(tmp_path / "bad.json")


def test_labelled_scores_uses_the_benchmark_matching():
    found = [faces([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.4]), faces([[0, 0, 10, 10]], [0.7])]
    items = [{"gt_boxes": torch.tensor([[0.0, 0, 10, 10]])}, {"gt_points": [[5.0, 5.0]]}]
    scores, hits, widths, face_widths, faces_found = labelled_scores(found, items)
    assert scores.tolist() == pytest.approx([0.9, 0.4, 0.7]) and hits.tolist() == [True, False, True]
    assert widths.tolist() == [10, 10, 10] and face_widths.tolist() == [10] and faces_found.tolist() == [True]
    # a detection of an ignored face is dropped, and the ignored face is not a face to find
    found = [faces([[0, 0, 10, 10], [50, 50, 70, 70]], [0.4, 0.9])]
    items = [{"gt_boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70]]), "gt_ignore": torch.tensor([False, True])}]
    scores, hits, widths, face_widths, faces_found = labelled_scores(found, items)
    assert scores.tolist() == pytest.approx([0.4]) and hits.tolist() == [True] and widths.tolist() == [10]
    assert face_widths.tolist() == [10] and faces_found.tolist() == [True]


def test_a_detector_abstains_at_face_sizes_it_cannot_find():
    seen_by_a = faces([[0, 0, 10, 10], [100, 0, 160, 60]], [0.9, 0.8])
    seen_by_b = faces([[101, 0, 161, 60]], [0.6])
    blind_below_30 = [None, lambda widths: widths >= 30]
    fused, _ = fuse([seen_by_a, seen_by_b], FusionSettings("wbf", 0.5), blind_below_30)
    # the 10-px face: b cannot see faces that small, so its absence does not count; the 60-px face: both count
    assert sorted(fused.scores.tolist()) == pytest.approx([0.7, 0.9])
    counted, _ = fuse([seen_by_a, seen_by_b], FusionSettings("wbf", 0.5))
    assert sorted(counted.scores.tolist()) == pytest.approx([0.45, 0.7])  # without: absence is a vote against


def test_landmark_weights_choose_whose_landmarks_a_fused_face_gets():
    measured = faces([[0, 0, 40, 40]], [0.6], landmark_offset=0.0)
    estimated = faces([[0, 0, 40, 40], [100, 0, 140, 40]], [0.9, 0.9], landmark_offset=8.0)
    fused, _ = fuse([estimated, measured], FusionSettings("wbf", 0.5, landmark_weights=[0.0, 1.0]))
    by_x = fused[torch.argsort(fused.boxes[:, 0])]
    # the face both saw takes the measured landmarks alone; the face only the other saw keeps its own
    assert torch.equal(by_x.landmarks[0], measured.landmarks[0])
    assert torch.equal(by_x.landmarks[1], estimated.landmarks[1])
    averaged, _ = fuse([estimated, measured], FusionSettings("wbf", 0.5))
    assert not torch.equal(averaged[torch.argsort(averaged.boxes[:, 0])].landmarks[0], measured.landmarks[0])
    with pytest.raises(ConfigError, match="1 fusion landmark weights for 2 sources"):
        fuse([estimated, measured], FusionSettings("wbf", landmark_weights=[1.0]))


def test_calibration_by_face_size_fits_each_bin_and_records_where_the_detector_is_competent():
    rng = np.random.default_rng(0)
    widths = np.concatenate([rng.uniform(10, 20, 200), rng.uniform(40, 80, 200)])
    scores = rng.uniform(0.05, 0.95, 400)
    # small faces: a hit whenever the score is over 0.8; large ones over 0.3
    hits = np.where(widths < 24, scores > 0.8, scores > 0.3) ^ (rng.uniform(size=400) < 0.05)
    face_widths = np.array([15.0] * 10 + [50.0] * 10)
    found = np.array([True] * 3 + [False] * 7 + [True] * 10)
    calibrator = ScoreCalibrator("logistic").fit(scores, hits, widths, [0, 24, 32], face_widths, found)
    at = calibrator(torch.tensor([0.5, 0.5]), torch.tensor([15.0, 60.0]))
    assert float(at[0]) < 0.3 < 0.7 < float(at[1])
    assert calibrator.competent(torch.tensor([15.0, 30.0, 60.0]), 0.5).tolist() == [False, True, True]
    assert [entry["recall"] for entry in calibrator.bins] == [0.3, None, 1.0]
    assert calibrator.bins[1]["params"] is None  # no detections there: the pooled fit serves


def test_fused_detector_merges_per_photo_and_times_each_detector():
    class Fixed:
        def __init__(self, box, score):
            self.box, self.score = box, score

        def detect(self, images):
            return [faces([self.box], [self.score]) for _ in images]

    fused = FusionDetector({"a": Fixed([0, 0, 10, 10], 0.9), "b": Fixed([0, 0, 10, 10], 0.5)},
                           FusionSettings("wbf"), score_threshold=0.6)
    found = fused.detect([np.zeros((20, 20, 3), np.uint8)] * 3)
    assert [len(d) for d in found] == [1, 1, 1] and float(found[0].scores[0]) == pytest.approx(0.7)
    assert set(fused.timings) == {"a", "b"}


def test_pipeline_config_errors_name_the_problem():
    cfg = {**PIPELINE_DEFAULTS, "detection": {**PIPELINE_DEFAULTS["detection"], "detectors": ["retina"]}}
    with pytest.raises(ConfigError, match="detection.retina"):
        fusion_from_config(cfg, "cpu")
    cfg["detection"] = {**cfg["detection"], "detectors": []}
    with pytest.raises(ConfigError, match="empty"):
        fusion_from_config(cfg, "cpu")


@pytest.mark.slow
def test_fused_ap_on_dlib_testing_is_at_least_the_best_single_detector():
    from detection.evaluation import evaluate_detector, load_benchmark
    from pipeline import default_config_path, detection_config, detector_from_config

    items = load_benchmark(shared_path("data", "detection", "dlib_faces", "testing.xml"))
    ap = {}
    for name in ("blazeface", "mtcnn", "fusion"):
        cfg = detection_config(name, default_config_path(name), {"inference.score_threshold": 0.05 if name !=
                                                                   "mtcnn" else 0.0})
        ap[name] = evaluate_detector(detector_from_config(cfg, "cpu"), items).ap
    assert (ROOT / "configs" / "pipeline.yaml").is_file()
    assert ap["fusion"] >= max(ap["blazeface"], ap["mtcnn"]) - 1e-9, ap
