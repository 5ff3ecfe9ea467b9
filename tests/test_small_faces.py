"""Small faces: a member's small-face student embeds the faces narrower than ``below_px``, the member itself the
others, in the same space and on the same chips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.build as build
from common.config import ConfigError
from common.detections import face_widths
from embedding.align import scaled_template
from embedding.embedder import Alignment, Embedder
from embedding.fusion import FusedEmbedder
from embedding.routing import SizeRoutedEmbedder
from pipeline.build import route_small_faces


def _embedder(seed: int, size: int = 32, name: str = "tiny") -> Embedder:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 8))  # (B, 3, S, S) -> (B, 8)
    return Embedder(name, model, Alignment(size, tuple(map(tuple, scaled_template(size).tolist()))), (127.5,) * 3,
                    (128.0,) * 3, f"seed{seed}")


def _face(eye_distance: float, x: float) -> np.ndarray:
    """(5, 2) landmarks of an upright face whose eyes are ``eye_distance`` px apart."""
    d = eye_distance
    return np.array([[x, 100], [x + d, 100], [x + d / 2, 100 + 0.6 * d], [x + 0.1 * d, 100 + 1.1 * d],
                     [x + 0.9 * d, 100 + 1.1 * d]], np.float32)


def test_small_faces_go_to_the_student_and_the_others_to_the_teacher():
    teacher, student = _embedder(0), _embedder(1)
    routed = SizeRoutedEmbedder(teacher, student, below_px=40)
    landmarks = np.stack([_face(10, 20), _face(40, 200)])  # faces about 21 and 84 px wide
    np.testing.assert_allclose(face_widths(landmarks), [21.0, 84.0])
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)
    chips, embeddings = routed.embed_faces(image, landmarks)
    torch.testing.assert_close(embeddings[0], student.embed_chips(chips[:1])[0])
    torch.testing.assert_close(embeddings[1], teacher.embed_chips(chips[1:])[0])
    assert routed.name == teacher.name and routed.cache_key != teacher.cache_key and routed.dim == 8


def test_a_fusion_routes_only_the_named_member(monkeypatch):
    members = [_embedder(0, name="a"), _embedder(2, size=24, name="b")]
    fusion = FusedEmbedder(members, [3.0, 1.0])
    monkeypatch.setattr(build, "build_embedder", lambda name, weights, device, flip: _embedder(5, name=name))
    routed = route_small_faces(fusion, {"member": "a", "weights": "student.pth", "below_px": 30.0}, "cpu")
    assert isinstance(routed.members[0], SizeRoutedEmbedder) and routed.members[1] is members[1]
    assert routed.shares == fusion.shares and routed.name == fusion.name
    assert route_small_faces(fusion, {"member": "a", "weights": None, "below_px": 30.0}, "cpu") is fusion
    with pytest.raises(ConfigError, match="'c' is not the embedder or a member of it: a, b"):
        route_small_faces(fusion, {"member": "c", "weights": "student.pth", "below_px": 30.0}, "cpu")
    with pytest.raises(ConfigError, match="must be a student of b"):
        SizeRoutedEmbedder(members[1], _embedder(3), 30.0)
