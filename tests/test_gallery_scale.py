"""Identification on large galleries: the vectorised best score per student equals the per-student definition, and
thresholds are calibrated on a bounded, recorded sample of impostor pairs that reads the same tail as every pair.
(Speed and memory at 100,000 people: ``python -m bench.bench_gallery``.)"""
from __future__ import annotations

import numpy as np
import pytest

from classroom.database import Gallery
from matching.identification import calibrate_thresholds, impostor_pairs, impostor_scores, student_scores


def unit_vectors(rng, count: int, dim: int = 16) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("shuffled", [False, True])
def test_best_score_per_student_is_the_per_student_maximum(shuffled):
    rng = np.random.default_rng(0)
    owners = np.array([0, 0, 0, 2, 3, 3, 1, 1, 3])  # student 4 has no photo
    if shuffled:
        owners = rng.permutation(owners)
    gallery = Gallery(0, ["a", "b", "c", "d", "e"], unit_vectors(rng, len(owners)), owners, [])
    faces = unit_vectors(rng, 300)  # more than one chunk of faces
    scores = student_scores(faces, gallery)
    similarity = faces @ gallery.vectors.T
    expected = np.stack([similarity[:, owners == student].max(1) if (owners == student).any()
                         else np.full(len(faces), -1.0) for student in range(5)], axis=1)
    np.testing.assert_array_equal(scores, expected.astype(np.float32))
    assert student_scores(faces[:0], gallery).shape == (0, 5)


def test_small_galleries_score_every_impostor_pair_once():
    owners = np.array([0, 0, 1, 2, 2])
    rows, columns, total = impostor_pairs(owners)
    assert total == len(rows) == 8 and (owners[rows] != owners[columns]).all() and (rows < columns).all()
    rows, columns, total = impostor_pairs(owners, ordered=True)
    assert total == len(rows) == 16
    vectors = unit_vectors(np.random.default_rng(1), len(owners))
    similarity = vectors @ vectors.T
    np.testing.assert_array_equal(impostor_scores(vectors, owners),
                                  similarity[np.triu(owners[:, None] != owners[None, :], k=1)])


def test_large_galleries_are_calibrated_on_a_recorded_sample_that_reads_the_same_tail():
    rng = np.random.default_rng(2)
    people, photos = 1500, 2
    owners = np.repeat(np.arange(people), photos)
    vectors = unit_vectors(rng, people * photos)
    degraded = {16.0: unit_vectors(rng, people * photos)}
    every_pair = calibrate_thresholds(vectors, owners, people, degraded, 1e-3, -1.0, max_pairs=10 ** 8)
    sampled = calibrate_thresholds(vectors, owners, people, degraded, 1e-3, -1.0, max_pairs=200_000)
    all_pairs = (people * photos) ** 2 // 2 - people * photos ** 2 // 2
    assert every_pair.impostor_pairs == every_pair.gallery_pairs == all_pairs
    assert sampled.impostor_pairs == 200_000 and sampled.gallery_pairs == all_pairs
    # 200,000 of the 4.5 million pairs: the normal tail's thresholds move by 1.6e-4 in cosine (measured)
    np.testing.assert_allclose(sampled.table, every_pair.table, atol=1e-3)
    rows, columns, _ = impostor_pairs(owners, 1000)
    assert len(rows) == 1000 and (owners[rows] != owners[columns]).all()
    again = impostor_pairs(owners, 1000)
    assert (again[0] == rows).all() and (again[1] == columns).all()  # seeded: the same sample every time
