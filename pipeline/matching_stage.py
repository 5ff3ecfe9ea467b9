"""``train.py --stage matching``: fit a verifier (threshold or classifier) on embedded pairs and save it.

The pairs are an LFW pair list (default ``pairsDevTrain.txt``: 1100 same + 1100 different pairs of people
disjoint from ``pairsDevTest.txt``) or a pairs CSV (``file_x,file_y,same``). Embeddings come from the configured
embedder and detector through the same cached embedding step as ``evaluate.py``; ``data.test_pairs`` (default
``pairsDevTest.txt``) is scored with the fitted verifier. Relative paths are taken from the project root.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import ConfigError, build_config, project_path, save_config
from matching.protocol import lfw_image_dir, read_lfw_pairs, read_pairs_csv
from matching.verifier import CLASSIFIERS, METRICS, build_verifier
from pipeline.build import build_detector, build_embedder, detector_cache_key
from pipeline.embed_images import DEFAULT_CACHE_DIR, embed_images

VERIFIER_KINDS = ("threshold", "classifier")

MATCHING_DEFAULTS = {
    "stage": "matching",
    # name: a registered embedder; weights: null = its published weights; jitter: dlib-style jittered copies.
    "embedder": {"name": "dlib_resnet", "weights": None, "device": "cpu", "jitter": 0, "flip": False},
    "detector": "mtcnn",
    # pairs / test_pairs: an LFW pair list (.txt, images under lfw_root) or a CSV file_x,file_y,same (images
    # relative to `images`, default the CSV's folder). test_pairs: null = no held-out score.
    "data": {"pairs": "../shared/data/lfw/pairsDevTrain.txt", "test_pairs": "../shared/data/lfw/pairsDevTest.txt",
             "lfw_root": "../shared/data/lfw", "images": None, "cache_dir": None},
    # kind: threshold (on metric) or classifier (logistic | mlp over |e1-e2|, e1*e2, cosine; regularisation = C).
    "verifier": {"kind": "classifier", "classifier": "logistic", "metric": "cosine", "regularisation": 0.01,
                 "hidden": [64], "max_iter": 1000},
    "output": {"path": "runs/matching/verifier.joblib"},
}


def matching_config(config_path=None, set_items=(), flag_overrides: dict | None = None) -> dict:
    cfg = build_config(MATCHING_DEFAULTS, config_path, flag_overrides, set_items)
    if cfg["stage"] != "matching":
        raise ConfigError(f"{config_path}: stage is {cfg['stage']!r} but --stage matching was given")
    checks = (("verifier.kind", cfg["verifier"]["kind"], VERIFIER_KINDS),
              ("verifier.classifier", cfg["verifier"]["classifier"], CLASSIFIERS),
              ("verifier.metric", cfg["verifier"]["metric"], METRICS))
    for key, value, valid in checks:
        if value not in valid:
            raise ConfigError(f"{config_path or 'config'}: {key} must be one of {', '.join(valid)}, got {value!r}")
    return cfg


def load_pair_file(path: Path, lfw_root: Path | None, images: Path | None):
    if path.suffix.lower() == ".csv":
        return read_pairs_csv(path, images)
    if lfw_root is None:
        raise ConfigError(f"{path}: an LFW pair list needs data.lfw_root (the folder holding deepfunneled/ or lfw/)")
    return read_lfw_pairs(path, lfw_image_dir(lfw_root))


def embed_pairs(pairs, embedder, detector, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings_x (N, D), embeddings_y (N, D), same (N,)) of ``pairs``."""
    paths = [pair.path_x for pair in pairs] + [pair.path_y for pair in pairs]
    embedded = embed_images(paths, embedder, detector, detector_cache_key(cfg["detector"]),
                            jitter=cfg["embedder"]["jitter"],
                            cache_dir=project_path(cfg["data"]["cache_dir"]) or DEFAULT_CACHE_DIR)
    embeddings_x, embeddings_y = np.split(embedded.embeddings, 2)
    return embeddings_x, embeddings_y, np.array([pair.same for pair in pairs])


def run_matching_training(cfg: dict) -> dict:
    """Fit the configured verifier on ``data.pairs``, score ``data.test_pairs``, save verifier + config + figures."""
    data = cfg["data"]
    lfw_root, images = project_path(data["lfw_root"]), project_path(data["images"])
    train_pairs = load_pair_file(project_path(data["pairs"]), lfw_root, images)
    embedder = build_embedder(cfg["embedder"]["name"], cfg["embedder"]["weights"], cfg["embedder"]["device"],
                              cfg["embedder"]["flip"])
    detector = build_detector(cfg["detector"], device=cfg["embedder"]["device"])
    options = cfg["verifier"]
    verifier = build_verifier(options["kind"], metric=options["metric"], classifier=options["classifier"],
                              **({"regularisation": options["regularisation"], "hidden": tuple(options["hidden"]),
                                  "max_iter": options["max_iter"]} if options["kind"] == "classifier" else {}))
    verifier.fit(*embed_pairs(train_pairs, embedder, detector, cfg))
    figures = {"train_pairs": len(train_pairs), "train_accuracy": round(verifier.train_accuracy, 6),
               "embedder": embedder.cache_key, **verifier.describe()}
    print(f"fitted {options['kind']} verifier on {len(train_pairs)} pairs: training accuracy "
          f"{verifier.train_accuracy:.4f}")
    if data["test_pairs"]:
        test_pairs = load_pair_file(project_path(data["test_pairs"]), lfw_root, images)
        embeddings_x, embeddings_y, same = embed_pairs(test_pairs, embedder, detector, cfg)
        accuracy = float((verifier.predict(embeddings_x, embeddings_y) == same).mean())
        figures.update(test_pairs=len(test_pairs), test_accuracy=round(accuracy, 6))
        print(f"held-out accuracy on {data['test_pairs']} ({len(test_pairs)} pairs): {accuracy:.4f}")
    output = project_path(cfg["output"]["path"])
    verifier.save(output)
    save_config(cfg, output.parent, f"{output.stem}.config.yaml")
    output.with_name(f"{output.stem}.metrics.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"verifier: {output}")
    return figures
