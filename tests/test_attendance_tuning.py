"""Attendance's matching settings per embedder: chosen by ``classroom.tuning`` on demo classes of LFW folds 1-9,
read by the service for whichever embedder the pipeline uses; the replay cuts each candidate's embeddings exactly
out of one run's fused embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from classroom import tuning
from classroom.service import MATCHING_FILE, MATCHING_SETTINGS, attendance_config, matching_settings
from common.config import ConfigError, load_yaml
from embedding.align import scaled_template
from embedding.embedder import Alignment, Embedder
from embedding.fusion import FusedEmbedder
from pipeline import pipeline_config
from tests.conftest import ROOT


def _embedder(name: str, dim: int, seed: int) -> Embedder:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, dim))  # (B, 3, 16, 16) -> (B, dim)
    return Embedder(name, model, Alignment(16, tuple(map(tuple, scaled_template(16).tolist()))), (127.5,) * 3,
                    (128.0,) * 3, f"seed{seed}")


def test_a_candidate_is_cut_exactly_from_the_fusion_of_every_member():
    members = [_embedder("a", 8, 0), _embedder("b", 4, 1), _embedder("c", 6, 2)]
    fusion = FusedEmbedder(members, [3.0, 1.0, 2.0])  # unequal shares: the cut must undo them
    chips = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), np.uint8)
    own = {member.name: member.embed_chips(chips).numpy() for member in members}
    fused = fusion.fuse(list(own.values()))
    slices = tuning.member_slices(fusion)
    np.testing.assert_allclose(tuning.candidate_vectors(fused, slices, ("b",)), own["b"], atol=1e-6)
    average = FusedEmbedder([members[0], members[2]], [1.0, 1.0]).fuse([own["a"], own["c"]])
    np.testing.assert_allclose(tuning.candidate_vectors(fused, slices, ("a", "c")), average, atol=1e-6)


def _row(present_marked, absent_marked, strangers_marked, target_far=1e-3, floor=-1.0):
    return {"present_marked": present_marked, "absent_marked": absent_marked, "strangers_marked": strangers_marked,
            "absent": 500, "strangers": 500, "target_far": target_far, "floor": floor}


def test_best_setting_is_the_highest_recall_within_the_false_mark_budget():
    rows = [_row(2400, 4, 3), _row(2450, 6, 0), _row(2470, 9, 2), _row(2450, 5, 0, 5e-4), _row(2450, 5, 0, 2e-4),
            _row(2450, 5, 0, 1e-4, 0.5)]
    assert tuning.best_setting(rows, 0.005) == rows[5]  # 2450 within 5 of 1000; 5 < 6; the higher floor
    del rows[5]
    assert tuning.best_setting(rows, 0.005) == rows[3]  # then the larger target_far
    assert tuning.best_setting(rows, 0.0) == rows[3]    # none within: the fewest false marks
    assert tuning.best_setting(rows, 0.02) == rows[2]


def test_tuning_refuses_the_report_split():
    with pytest.raises(ConfigError, match="the report split's people and seeds are never tuned on"):
        tuning.main(["--embedders", "dlib_resnet", "sface", "--set", "demo.split=report"])


def test_null_matching_settings_come_from_the_pipeline_embedders_tuned_entry(tmp_path):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("embedders:\n  x+y: {target_far: 0.0002, floor: 0.31, min_margin: 0.02}\n")
    section = {"target_far": None, "tail": "normal", "floor": 0.5, "min_margin": None}
    assert matching_settings(section, "x+y", tuned) == {"target_far": 0.0002, "tail": "normal", "floor": 0.5,
                                                        "min_margin": 0.02}  # the config's number wins
    with pytest.raises(ConfigError, match=r"has none for 'z' \(it has: x\+y\).*classroom.tuning --embedders z"):
        matching_settings(section, "z", tuned)
    with pytest.raises(ConfigError, match="matching.min_margin must be a number, or null"):
        attendance_config(None, ["matching.min_margin=[0.1]"])


def test_the_shipped_pipeline_embedder_has_tuned_matching_settings():
    embedder = pipeline_config(ROOT / "configs" / "pipeline.yaml")["embedding"]["embedder"]
    entry = load_yaml(MATCHING_FILE)["embedders"][embedder]
    assert all(isinstance(entry[key], float) for key in MATCHING_SETTINGS)
    assert set(entry["measured"]) == set(tuning.MEASURED)
