"""Verifiers, pair-list readers and the 10-fold protocol (matching/)."""
from __future__ import annotations

import numpy as np
import pytest

from matching.protocol import (PairsError, limit_pairs, read_lfw_pairs, read_lfw_people, read_pairs_csv,
                               result_json, run_protocol, tar_at_far)
from matching.verifier import (ClassifierVerifier, ThresholdVerifier, best_threshold, build_verifier,
                               load_verifier, pair_features, similarity)
from tests.conftest import shared_path


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _pairs_with_cosines(cosines) -> tuple[np.ndarray, np.ndarray]:
    """2-d unit embedding pairs whose cosines are exactly ``cosines``."""
    angles = np.arccos(np.asarray(cosines, dtype=np.float64))
    e1 = np.tile([[1.0, 0.0]], (len(angles), 1))
    e2 = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return e1, e2


# ------------------------------------------------------------------------------------------------- verifiers


def test_best_threshold_separable_takes_the_midpoint():
    threshold, accuracy = best_threshold([0.9, 0.8, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0])
    assert accuracy == 1.0
    assert threshold == pytest.approx(0.5)


def test_best_threshold_non_separable_has_the_known_accuracy():
    # same: 0.9, 0.6, 0.2; different: 0.7, 0.4, 0.1. Best rules: >= 0.5 gets 0.9, 0.6 | 0.4, 0.1 right (4 of 6),
    # >= 0.8 gets 0.9 | 0.7, 0.4, 0.1 (4 of 6), >= 0.15 gets 0.9, 0.6, 0.2 | 0.1 (4 of 6). None gets 5.
    threshold, accuracy = best_threshold([0.9, 0.6, 0.2, 0.7, 0.4, 0.1], [1, 1, 1, 0, 0, 0])
    assert accuracy == pytest.approx(4 / 6)
    assert threshold == pytest.approx(0.5)  # the middle one of the three optimal midpoints 0.15, 0.5, 0.8
    predicted = np.array([0.9, 0.6, 0.2, 0.7, 0.4, 0.1]) >= threshold
    assert (predicted == np.array([1, 1, 1, 0, 0, 0], bool)).mean() == pytest.approx(4 / 6)


def test_best_threshold_handles_one_class_and_ties():
    threshold, accuracy = best_threshold([0.5, 0.5, 0.5], [1, 1, 1])
    assert accuracy == 1.0 and threshold < 0.5
    threshold, accuracy = best_threshold([0.5, 0.5], [1, 0])
    assert accuracy == 0.5


def test_threshold_verifier_cosine_and_l2_agree_on_unit_vectors():
    e1, e2 = _pairs_with_cosines([0.95, 0.9, 0.8, 0.2, 0.1, -0.3])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    cosine = ThresholdVerifier("cosine").fit(e1, e2, same)
    l2 = ThresholdVerifier("l2").fit(e1, e2, same)
    assert cosine.threshold == pytest.approx(0.5)
    # L2 is scored as -distance; for unit vectors distance = sqrt(2 - 2 cos), so the midpoint lies between
    # -sqrt(2 - 2 * 0.8) and -sqrt(2 - 2 * 0.2).
    assert l2.threshold == pytest.approx(-(np.sqrt(0.4) + np.sqrt(1.6)) / 2)
    assert (cosine.predict(e1, e2) == same).all() and (l2.predict(e1, e2) == same).all()
    np.testing.assert_allclose(similarity(e1, e2, "cosine"), [0.95, 0.9, 0.8, 0.2, 0.1, -0.3])


def test_threshold_verifier_save_load(tmp_path):
    e1, e2 = _pairs_with_cosines([0.9, 0.1])
    verifier = ThresholdVerifier("l2").fit(e1, e2, [1, 0])
    loaded = load_verifier(verifier.save(tmp_path / "threshold.json"))
    assert isinstance(loaded, ThresholdVerifier)
    assert (loaded.metric, loaded.threshold) == ("l2", verifier.threshold)


def test_pair_features_layout():
    e1, e2 = _unit([[3.0, 4.0]]), _unit([[4.0, 3.0]])
    features = pair_features(e1, e2)
    np.testing.assert_allclose(features, [[0.2, 0.2, 0.48, 0.48, 0.96]])


def _gaussian_identities(rng, count: int, dim: int = 16, noise: float = 0.6):
    """Pairs from random identity centres: same pairs share a centre, different pairs do not."""
    centres = rng.normal(size=(count, dim))
    other = rng.normal(size=(count, dim))
    e1 = _unit(centres + noise * rng.normal(size=(count, dim)))
    same_e2 = _unit(centres + noise * rng.normal(size=(count, dim)))
    different_e2 = _unit(other + noise * rng.normal(size=(count, dim)))
    half = count // 2
    e2 = np.vstack([same_e2[:half], different_e2[half:]])
    same = np.arange(count) < half
    return e1, e2, same


@pytest.mark.parametrize("classifier", ["logistic", "mlp"])
def test_classifier_verifier_learns_and_round_trips(tmp_path, classifier):
    rng = np.random.default_rng(0)
    e1, e2, same = _gaussian_identities(rng, 600)
    verifier = ClassifierVerifier(classifier, regularisation=1.0, max_iter=500).fit(e1[:400], e2[:400], same[:400])
    test_accuracy = (verifier.predict(e1[400:], e2[400:]) == same[400:]).mean()
    threshold_accuracy = (ThresholdVerifier().fit(e1[:400], e2[:400], same[:400]).predict(e1[400:], e2[400:])
                          == same[400:]).mean()
    assert test_accuracy >= 0.9 and threshold_accuracy >= 0.9  # separable enough that both get this
    scores = verifier.score(e1[400:], e2[400:])
    assert ((scores >= 0) & (scores <= 1)).all()
    loaded = load_verifier(verifier.save(tmp_path / "classifier.joblib"))
    np.testing.assert_allclose(loaded.score(e1[400:], e2[400:]), scores)


def test_classifier_verifier_needs_both_classes():
    e1, e2 = _pairs_with_cosines([0.9, 0.8])
    with pytest.raises(ValueError, match="both same and different"):
        ClassifierVerifier().fit(e1, e2, [1, 1])


def test_load_verifier_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a verifier file"):
        load_verifier(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        load_verifier(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------------- protocol


def test_protocol_thresholds_never_see_the_test_fold():
    # Folds 1-9: one same pair at cosine 0.6 and one different pair at 0.4 each -> the only perfect training
    # threshold is the midpoint 0.5. Fold 0: 20 same pairs at 0.45 and 20 different at 0.3. Fitted on folds 1-9
    # only, fold 0's same pairs all fall below 0.5: accuracy exactly 0.5. A threshold fitted with fold 0 in it
    # would sit between 0.4 and 0.45 and score fold 0 perfectly.
    cosines = [0.45] * 20 + [0.3] * 20
    same = [True] * 20 + [False] * 20
    folds = [0] * 40
    for fold in range(1, 10):
        cosines += [0.6, 0.4]
        same += [True, False]
        folds += [fold, fold]
    e1, e2 = _pairs_with_cosines(cosines)
    result = run_protocol(e1, e2, same, folds, lambda: ThresholdVerifier("cosine"))
    fold0 = result.folds[0]
    assert fold0.fold == 0 and fold0.n_pairs == 40
    assert fold0.threshold == pytest.approx(0.5)
    assert fold0.accuracy == 0.5
    # Every other fold is fitted on fold 0 plus eight others: 9 same at 0.6/0.45-ish separate from 0.4/0.3.
    assert all(fold.accuracy == 1.0 for fold in result.folds[1:])
    assert result.accuracies_mean == pytest.approx((0.5 + 9) / 10)
    assert len(result.scores) == len(cosines)


def test_protocol_test_folds_subset_and_missing_fold():
    e1, e2 = _pairs_with_cosines([0.9, 0.1] * 10)
    folds = np.repeat(np.arange(10), 2)
    result = run_protocol(e1, e2, [1, 0] * 10, folds, ThresholdVerifier, test_folds=[2, 5])
    assert [fold.fold for fold in result.folds] == [2, 5]
    assert result.accuracies_mean == 1.0 and result.auc == 1.0
    with pytest.raises(ValueError, match="no pairs"):
        run_protocol(e1, e2, [1, 0] * 10, folds, ThresholdVerifier, test_folds=[10])


def test_tar_at_far_interpolates_the_roc():
    # 4 same pairs, 1000 different pairs: one different pair scores above every same pair, the rest below.
    scores = np.concatenate([[0.9, 0.8, 0.7, 0.6], [0.95], np.zeros(999)])
    same = np.array([True] * 4 + [False] * 1000)
    tar, fpr, tpr = tar_at_far(scores, same, far=1e-3)
    assert tar == pytest.approx(1.0)  # at FAR = 1/1000 every same pair is accepted
    tar, _, _ = tar_at_far(scores, same, far=5e-4)
    assert tar == pytest.approx(0.0)  # half-way to the first false accept, no same pair is above it yet


def test_result_json_has_the_required_keys():
    e1, e2 = _pairs_with_cosines([0.9, 0.1] * 10)
    result = run_protocol(e1, e2, [1, 0] * 10, np.repeat(np.arange(10), 2), ThresholdVerifier)
    report = result_json(result, n_pairs=20, n_no_face=3, benchmark="test")
    for key in ("accuracy_mean", "accuracy_std", "tar_at_far_1e-3", "auc", "n_pairs", "n_no_face"):
        assert key in report
    assert report["n_no_face"] == 3 and len(report["folds"]) == 10 and report["folds"][0]["fold"] == 1


def test_build_verifier_names():
    assert isinstance(build_verifier("threshold", metric="l2"), ThresholdVerifier)
    assert isinstance(build_verifier("classifier", classifier="mlp"), ClassifierVerifier)
    with pytest.raises(ValueError, match="unknown verifier"):
        build_verifier("knn")


# ------------------------------------------------------------------------------------------------- readers


def test_lfw_view2_pairs_counts():
    root = shared_path("data", "lfw")
    pairs = read_lfw_pairs(root / "pairs.txt", root / "deepfunneled")
    assert len(pairs) == 6000
    assert sum(pair.same for pair in pairs) == 3000
    assert sorted({pair.fold for pair in pairs}) == list(range(10))
    assert all(sum(pair.fold == fold for pair in pairs) == 600 for fold in range(10))
    first = pairs[0]
    assert first.same and first.path_x.name == "Abel_Pacheco_0001.jpg" and first.path_y.name == "Abel_Pacheco_0004.jpg"
    assert all(pair.path_x.is_file() and pair.path_y.is_file() for pair in pairs[:50])


def test_lfw_dev_pairs_and_people():
    root = shared_path("data", "lfw")
    dev = read_lfw_pairs(root / "pairsDevTrain.txt", root / "deepfunneled")
    assert len(dev) == 2200 and sum(pair.same for pair in dev) == 1100 and {pair.fold for pair in dev} == {0}
    people = read_lfw_people(root / "people.txt")
    assert len(people) == 10 and sum(len(fold) for fold in people) == 5749
    pairs = read_lfw_pairs(root / "pairs.txt", root / "deepfunneled")
    for fold, names in enumerate(people):  # View-2 pair folds draw on the people folds
        assert {pair.identity_x for pair in pairs if pair.fold == fold} <= names
    dev_people = read_lfw_people(root / "peopleDevTrain.txt")
    assert len(dev_people) == 1 and len(dev_people[0]) == 4038


def test_lfw_pairs_errors_name_the_line(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\t1\nA\t1\t2\nB\t1\tC\n")
    with pytest.raises(PairsError, match=r"pairs.txt:3: .*'name1 i name2 j'"):
        read_lfw_pairs(bad, tmp_path)
    bad.write_text("1\t2\nA\t1\t2\n")
    with pytest.raises(PairsError, match="4 lines, but 1 pair lines"):
        read_lfw_pairs(bad, tmp_path)
    bad.write_text("1\t1\nA\tx\t2\nB\t1\tC\t2\n")
    with pytest.raises(PairsError, match=r"pairs.txt:2: expected image numbers"):
        read_lfw_pairs(bad, tmp_path)


def _image_files(folder, count):
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(b"x")


def test_pairs_csv_yes_no_and_folds(tmp_path):
    _image_files(tmp_path, 4)
    rows = ["file_x,file_y,same"] + [f"{i % 4}.jpg,{(i + 1) % 4}.jpg,{word}"
                                     for i, word in enumerate(["Yes", "no", "1", "0", "TRUE", "false"] * 4)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    pairs = read_pairs_csv(tmp_path / "pairs.csv")
    assert len(pairs) == 24
    assert [pair.same for pair in pairs[:6]] == [True, False, True, False, True, False]
    assert sorted({pair.fold for pair in pairs}) == list(range(10))
    assert pairs[0].path_x == tmp_path / "0.jpg"
    assert [pair.fold for pair in read_pairs_csv(tmp_path / "pairs.csv")] == [pair.fold for pair in pairs]
    # deepface's own pairs files name the label column Decision
    (tmp_path / "deepface.csv").write_text("\n".join(["file_x,file_y,Decision"] + rows[1:]) + "\n")
    assert read_pairs_csv(tmp_path / "deepface.csv") == pairs


@pytest.mark.parametrize("body, message", [
    ("file_x,file_y,same\n0.jpg,1.jpg,maybe\n", r"pairs.csv:2: the label must be 1/0"),
    ("file_x,file_y,same\n0.jpg,1.jpg,1\n0.jpg,1.jpg\n", r"pairs.csv:3: expected 3 columns"),
    ("file_x,file_y,same\n0.jpg,missing.jpg,1\n", r"pairs.csv:2: image not found: .*missing.jpg"),
    ("a,b,c\n0.jpg,1.jpg,1\n", r"pairs.csv:1: expected the header file_x,file_y,same"),
    ("file_x,file_y,same,extra\n0.jpg,1.jpg,1,2\n", r"pairs.csv:1: expected the header file_x,file_y,same"),
    ("file_x,file_y,same\n0.jpg,1.jpg,1\n", r"1 pairs, fewer than the 10"),
])
def test_pairs_csv_errors_name_the_line(tmp_path, body, message):
    _image_files(tmp_path, 2)
    (tmp_path / "pairs.csv").write_text(body)
    with pytest.raises(PairsError, match=message):
        read_pairs_csv(tmp_path / "pairs.csv")


def test_limit_pairs_keeps_both_classes_per_fold():
    root = shared_path("data", "lfw")
    pairs = limit_pairs(read_lfw_pairs(root / "pairs.txt", root / "deepfunneled"), 4)
    assert len(pairs) == 40
    assert all(sum(pair.same for pair in pairs if pair.fold == fold) == 2 for fold in range(10))
