"""Fit the member weights of a score-level fusion of embedders on LFW View 1, and write them where
``build_embedder("a+b+c")`` reads them (``configs/embedder_fusion.yaml``).

    python -m pipeline.embedder_fusion --embedders dlib_resnet omz0095 sface [--flip] [--write]

Only View 1 is read: the weights are fitted on ``pairsDevTrain.txt`` (logistic regression of same/different on
the members' cosines; its coefficients, clipped at 0, are the weights: they put the members' differently spread
cosines on one scale) and every candidate — each member alone, the plain average, the fitted weights — is scored
on ``pairsDevTest.txt`` with a cosine threshold fitted on DevTrain. View 2 (``evaluate.py --benchmark lfw``) is
then reported once with the weights chosen here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression

from common.cli import run_cli
from embedding.fusion import SEPARATOR, FusedEmbedder
from matching.protocol import lfw_image_dir, read_lfw_pairs
from matching.verifier import build_verifier
from pipeline.build import EMBEDDER_FUSION_CONFIG, build_detector, build_embedder, detector_cache_key
from pipeline.embed_images import DEFAULT_CACHE_DIR, embed_images
from pipeline.verification import DEFAULT_LFW_ROOT

VIEW1_TRAIN, VIEW1_TEST = "pairsDevTrain.txt", "pairsDevTest.txt"
LOGISTIC_C = 100.0  # weak regularisation: three features, 2200 pairs
HEADER = """\
# Score-level fusions of embedders (build_embedder("a+b+c"), evaluate.py --embedder a+b+c, the verifier): each
# member's weight. Written by python -m pipeline.embedder_fusion --write, which fits them on LFW View 1
# (pairsDevTrain; pairsDevTest scored) and never reads View 2. A fusion not listed averages its members' cosines.
"""


def member_embeddings(pairs, members, detector, detector_key: str, cache_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per member: ((N, D) embeddings of the pairs' first images, (N, D) of their second images)."""
    paths = [pair.path_x for pair in pairs] + [pair.path_y for pair in pairs]
    return [tuple(np.split(embed_images(paths, member, detector, detector_key, cache_dir=cache_dir).embeddings, 2))
            for member in members]


def pair_cosines(embedded: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(N, members) cosine of each pair under each member (embeddings are L2-normalised)."""
    return np.stack([(first * second).sum(1) for first, second in embedded], axis=1)


def fitted_weights(cosines: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Non-negative member weights from a logistic regression of ``same`` on the members' cosines."""
    model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(cosines, same)
    weights = np.clip(model.coef_[0], 0.0, None)
    return weights if weights.sum() > 0 else np.ones(len(weights))


def held_out_accuracy(fusion: FusedEmbedder, train: list, train_same: np.ndarray, test: list,
                      test_same: np.ndarray) -> float:
    """DevTest accuracy of a cosine threshold fitted on DevTrain, for the fused embeddings of ``fusion``."""
    def fused(embedded):
        return fusion.fuse([first for first, _ in embedded]), fusion.fuse([second for _, second in embedded])

    verifier = build_verifier("threshold", metric="cosine")
    verifier.fit(*fused(train), train_same)
    return float((verifier.predict(*fused(test)) == test_same).mean())


def write_weights(name: str, weights: dict[str, float], path: Path = EMBEDDER_FUSION_CONFIG) -> None:
    fusions = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("fusions", {}) if path.is_file() else {}
    fusions[name] = weights
    path.write_text(HEADER + yaml.safe_dump({"fusions": fusions}, sort_keys=True), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedders", nargs="+", required=True, help="two or more registered embedders")
    parser.add_argument("--flip", action="store_true", help="each member with test-time flip")
    parser.add_argument("--detector", default="mtcnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lfw-root", type=Path, default=DEFAULT_LFW_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--write", action="store_true", help=f"store the fitted weights in {EMBEDDER_FUSION_CONFIG}")
    args = parser.parse_args(argv)
    if len(args.embedders) < 2:
        parser.error("--embedders needs two or more names")
    images = lfw_image_dir(args.lfw_root)
    train_pairs = read_lfw_pairs(args.lfw_root / VIEW1_TRAIN, images)
    test_pairs = read_lfw_pairs(args.lfw_root / VIEW1_TEST, images)
    train_same = np.array([pair.same for pair in train_pairs])
    test_same = np.array([pair.same for pair in test_pairs])
    members = [build_embedder(name, device=args.device, flip=args.flip) for name in args.embedders]
    detector = build_detector(args.detector, device=args.device)
    detector_key = detector_cache_key(args.detector)
    train = member_embeddings(train_pairs, members, detector, detector_key, args.cache_dir)
    test = member_embeddings(test_pairs, members, detector, detector_key, args.cache_dir)
    count = len(members)
    weights = fitted_weights(pair_cosines(train), train_same)
    candidates = {**{name: np.eye(count)[index] for index, name in enumerate(args.embedders)},
                  "average": np.ones(count), "fitted": weights}
    print(f"LFW View 1: fitted on {len(train_pairs)} DevTrain pairs, scored on {len(test_pairs)} DevTest pairs"
          + (" (test-time flip)" if args.flip else ""))
    for label, candidate in candidates.items():
        accuracy = held_out_accuracy(FusedEmbedder(members, candidate), train, train_same, test, test_same)
        shares = ", ".join(f"{name} {share:.3f}" for name, share in zip(args.embedders, candidate / candidate.sum()))
        print(f"  {label:<12} DevTest accuracy {accuracy:.4f}  ({shares})")
    if args.write:
        name = SEPARATOR.join(args.embedders)
        write_weights(name, {member: round(float(weight), 4) for member, weight in zip(args.embedders, weights)})
        print(f"fitted weights of {name} → {EMBEDDER_FUSION_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
