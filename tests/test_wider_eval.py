"""WIDER FACE evaluation: known answers on hand-made ground truth and predictions, and the real ground truth
scored as its own predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import savemat

from detection.data.readers import read_dlib_xml
from detection.wider_eval import (evaluate_folder, evaluate_predictions, format_prediction, load_ground_truth,
                                  read_prediction_file, voc_ap)
from tests.conftest import shared_path

EVENT = "0--Test"
# Image a: face 1 counted by every setting, face 2 by medium and hard, face 3 (4×4 px) by hard only.
# Image b: one face counted by every setting.
GROUND_TRUTH = {
    "img_a": ([[10, 10, 20, 20], [100, 100, 20, 20], [200, 200, 4, 4]],
              {"easy": [1], "medium": [1, 2], "hard": [1, 2, 3]}),
    "img_b": ([[0, 0, 50, 50]], {"easy": [1], "medium": [1], "hard": [1]}),
}
# Scores 0.9 … 0.4 normalise to 1.0, 0.8, 0.6, 0.4, 0.2, 0.0 (min-max over the whole set).
PREDICTIONS = {
    "img_a": [[10, 10, 20, 20, 0.9],     # face 1
              [100, 100, 20, 20, 0.8],   # face 2
              [300, 300, 10, 10, 0.7],   # nothing: a false positive everywhere
              [200, 200, 4, 4, 0.6]],    # face 3
    "img_b": [[0, 0, 50, 50, 0.5],       # the face
              [1, 1, 50, 50, 0.4]],      # the same face again: a proposal that recalls nothing new
}
# By hand, walking down the scores (proposals, recalled / counted faces), then the VOC area:
# easy (2 faces; faces 2 and 3 are not counted, so their detections are dropped):
#   1.0 → (1, 1): P 1, R 1/2; 0.6 → (2, 1): P 1/2; 0.2 → (3, 2): P 2/3, R 1; 0.0 → (4, 2): P 1/2
#   AP = 1/2 · 1 + 1/2 · 2/3 = 5/6
# medium (3 faces; face 3 dropped): R 1/3, 2/3 at P 1; 0.6 → P 2/3; 0.2 → (4, 3): P 3/4, R 1; 0.0 → P 3/5
#   AP = 2/3 · 1 + 1/3 · 3/4 = 11/12
# hard (4 faces): R 1/4, 1/2 at P 1; 0.6 → P 2/3; 0.4 → (4, 3): P 3/4, R 3/4; 0.2 → (5, 4): P 4/5, R 1
#   AP = 1/2 · 1 + 1/4 · 4/5 + 1/4 · 4/5 = 9/10
EXPECTED = {"easy": 5 / 6, "medium": 11 / 12, "hard": 9 / 10}


def _cell(values) -> np.ndarray:
    cell = np.empty((len(values), 1), dtype=object)
    for i, value in enumerate(values):
        cell[i, 0] = value
    return cell


def write_ground_truth(folder, truth=GROUND_TRUTH) -> None:
    """The four official .mat files for one event."""
    names = list(truth)
    whole = {"event_list": _cell([np.array([EVENT])]),
             "file_list": _cell([_cell([np.array([name]) for name in names])]),
             "face_bbx_list": _cell([_cell([np.array(truth[n][0], dtype=np.float64).reshape(-1, 4) for n in names])])}
    savemat(folder / "wider_face_val.mat", whole)
    for setting in ("easy", "medium", "hard"):
        kept = _cell([_cell([np.array(truth[n][1][setting], dtype=np.float64).reshape(-1, 1) for n in names])])
        savemat(folder / f"wider_{setting}_val.mat", {**whole, "gt_list": kept})


def write_predictions(folder, predictions=PREDICTIONS, shuffle: bool = False) -> None:
    (folder / EVENT).mkdir(parents=True, exist_ok=True)
    for name, rows in predictions.items():
        rows = rows[::-1] if shuffle else rows
        lines = [f"{name}.jpg", str(len(rows))] + [" ".join(str(v) for v in row) for row in rows]
        (folder / EVENT / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def wider_dirs(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    write_ground_truth(gt)
    write_predictions(pred)
    return gt, pred


def test_hand_made_folder_scores_the_values_computed_by_hand(wider_dirs):
    result = evaluate_folder(wider_dirs[1], wider_dirs[0])
    assert result.faces == {"easy": 2, "medium": 3, "hard": 4}
    for setting, expected in EXPECTED.items():
        assert result.ap[setting] == pytest.approx(expected, abs=1e-12), setting


def test_order_of_lines_in_a_file_does_not_matter(wider_dirs, tmp_path):
    write_predictions(tmp_path / "shuffled", shuffle=True)
    assert read_prediction_file(tmp_path / "shuffled" / EVENT / "img_a.txt")[:, 4].tolist() == [0.9, 0.8, 0.7, 0.6]
    assert evaluate_folder(tmp_path / "shuffled", wider_dirs[0]).ap == evaluate_folder(wider_dirs[1], wider_dirs[0]).ap


def test_missing_file_counts_as_no_detections(wider_dirs):
    (wider_dirs[1] / EVENT / "img_b.txt").unlink()
    with pytest.warns(UserWarning, match="1 of 2 prediction files are missing"):
        result = evaluate_folder(wider_dirs[1], wider_dirs[0])
    # easy: image a alone, scores 0.9 … 0.6 → 1, 0.6 (FP), 0: P 1 at R 1/2, then P 1/2; AP = 1/2
    assert result.ap["easy"] == pytest.approx(0.5)
    # hard: R 1/4, 1/2 at P 1, then the FP, then face 3: P 3/4 at R 3/4 → AP = 1/2 + 1/4 · 3/4
    assert result.ap["hard"] == pytest.approx(0.5 + 0.25 * 0.75)


def test_constant_scores_count_as_one_threshold(tmp_path):
    """The official code divides 0 by 0 when every score is equal; here they all count at every threshold."""
    gt = tmp_path / "gt"
    gt.mkdir()
    write_ground_truth(gt)
    predictions = {"img_a": [[10, 10, 20, 20, 0.7], [300, 300, 10, 10, 0.7]], "img_b": [[0, 0, 50, 50, 0.7]]}
    write_predictions(tmp_path / "pred", predictions)
    # easy: 3 proposals, 2 of 2 faces recalled → P 2/3, R 1 → AP 2/3
    assert evaluate_folder(tmp_path / "pred", gt).ap["easy"] == pytest.approx(2 / 3)


def test_iou_uses_the_plus_one_pixel_convention(tmp_path):
    """A box over the left 4.6 px of a 10 × 10 face: IoU (4.6+1)(10+1) / (11·11) = 0.509 ≥ 0.5 with the +1
    convention, where the continuous IoU would be 0.46 (a miss)."""
    gt = tmp_path / "gt"
    gt.mkdir()
    write_ground_truth(gt, {"img_a": ([[0, 0, 10, 10]], {"easy": [1], "medium": [1], "hard": [1]})})
    write_predictions(tmp_path / "pred", {"img_a": [[0, 0, 4.6, 10, 0.9], [50, 50, 5, 5, 0.1]]})
    assert evaluate_folder(tmp_path / "pred", gt).ap["easy"] == pytest.approx(1.0)


def test_malformed_files_name_the_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("img.jpg\n3\n1 2 3 4 0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="says 3 faces but has 1"):
        read_prediction_file(path)
    path.write_text("img.jpg\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected the number of faces"):
        read_prediction_file(path)


def test_voc_ap_skips_undefined_precision():
    # Thresholds above every proposal give 0/0 precision at recall 0; MATLAB's max skips them.
    assert voc_ap(np.array([0.0, 0.5, 1.0]), np.array([np.nan, 1.0, 0.5])) == pytest.approx(0.75)


def test_format_prediction_writes_xywh():
    text = format_prediction("a.jpg", np.array([[10.0, 20.0, 40.0, 60.0]]), np.array([0.75]))
    assert text.splitlines() == ["a.jpg", "1", "10.00 20.00 30.00 40.00 0.750000"]


def test_evaluate_cli_scores_a_folder(wider_dirs, tmp_path):
    import evaluate

    out = tmp_path / "wider.json"
    assert evaluate.main(["--benchmark", "wider", "--predictions", str(wider_dirs[1]), "--wider-gt",
                          str(wider_dirs[0]), "--out", str(out), "--plot", str(tmp_path / "wider.png")]) == 0
    assert json.loads(out.read_text())["ap"] == {s: round(v, 4) for s, v in EXPECTED.items()}
    assert (tmp_path / "wider.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot: the three settings' curves


def test_ground_truth_scored_as_predictions():
    """Every face predicted exactly, all scores equal. By hand: in easy and medium every counted face is
    recalled, plus one proposal recalls nothing: face 7 of 39_Ice_Skating_iceskiing_39_583 has width -2 px, so
    it overlaps nothing, itself included (counted in hard only). In hard that face is also never recalled, and
    face 103 of 21_Festival_Festival_21_604 repeats face 64 exactly (both counted), so its prediction finds
    face 64 again: 31 956 of 31 958 faces recalled with 31 958 proposals. One PR point, so AP = R · P."""
    images = load_ground_truth(shared_path("data", "detection", "wider_val_ground_truth"))
    predictions = [np.concatenate([image.boxes, np.ones((len(image.boxes), 1))], axis=1) for image in images]
    result = evaluate_predictions(predictions, images)
    assert len(images) == 3226
    assert result.faces == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert result.ap["easy"] == pytest.approx(1 * 7211 / 7212, abs=1e-12)
    assert result.ap["medium"] == pytest.approx(1 * 13319 / 13320, abs=1e-12)
    assert result.ap["hard"] == pytest.approx((31956 / 31958) * (31956 / 31958), abs=1e-12)


def test_evaluate_cli_detects_images_then_scores(tmp_path):
    """Two dlib test photos laid out as a WIDER event, their annotated faces as the ground truth: RetinaFace
    writes one prediction file per photo and finds every face above every false box (AP 1)."""
    import evaluate

    shared_path("models", "retinaface", "mobilenet0.25_Final.pth")
    annotations = read_dlib_xml(shared_path("data", "detection", "dlib_faces", "testing.xml"))[:2]
    images, gt = tmp_path / "images" / EVENT, tmp_path / "gt"
    images.mkdir(parents=True)
    gt.mkdir()
    truth = {}
    for index, annotation in enumerate(annotations):
        name = f"img_{index}"
        (images / f"{name}.jpg").write_bytes(annotation.image_path.read_bytes())
        xywh = np.concatenate([annotation.boxes[:, :2], annotation.boxes[:, 2:] - annotation.boxes[:, :2]], axis=1)
        every_face = list(range(1, len(xywh) + 1))
        truth[name] = (xywh.tolist(), {"easy": every_face, "medium": every_face, "hard": every_face})
    write_ground_truth(gt, truth)
    out = tmp_path / "wider.json"
    assert evaluate.main(["--benchmark", "wider", "--images", str(tmp_path / "images"), "--predictions",
                          str(tmp_path / "pred"), "--wider-gt", str(gt), "--out", str(out)]) == 0
    written = read_prediction_file(tmp_path / "pred" / EVENT / "img_0.txt")
    assert len(written) >= len(annotations[0].boxes)
    assert json.loads(out.read_text())["ap"] == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
