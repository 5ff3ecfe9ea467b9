"""Derive ``DLIB_TEMPLATE_150`` / ``DLIB_BOX_MARGIN`` (embedding/dlib_resnet.py): where MTCNN's 5 landmarks lie in
the 150-px chip dlib cuts for its face-recognition network, so that aligning MTCNN's points to the template
reproduces dlib's chip geometry; and ``SEED_RECT_150`` (embedding/dlib_landmarks.py): where dlib's HOG detector
puts its face rectangle in that chip, from which dlib's landmarker is seeded.

    python -m bench.derive_dlib_template [--images 300] [--derive 200] [--seed 0] [--pairs-folds 0]

On ``--images`` LFW photos (drawn with ``--seed``) both pipelines run: dlib (HOG frontal detector, 5-point shape
predictor, ``get_face_chip_details(size=150, padding=0.25)``) and our MTCNN. dlib's chip transform (photo →
chip, as dlib's ``get_mapping_to_chip``) maps MTCNN's landmarks and box into dlib's chip; over the first
``--derive`` photos the template is their mean position and the box margin 150 minus the mean box side. On the
rest (held out) it reports how far our chip (the least-squares similarity from MTCNN's points to the template)
puts dlib's own 5 landmarks from where dlib's chip has them, and the cosine between our network's descriptor of
our chip and dlib's descriptor of dlib's chip.

``--pairs-folds K`` also checks verification on the first K folds of LFW's pairs.txt (cosine threshold fitted
on the other folds): our network on MTCNN-aligned chips vs dlib's own pipeline. Photos in which a detector finds
no face are embedded from a fixed central box (LFW faces are centred), and counted.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
import torch
from tqdm import tqdm

from common.io import read_image
from pipeline import build_detector
from embedding.align import fit_similarity
from embedding.dlib_resnet import DLIB_TEMPLATE_150, INPUT_SIZE, default_descriptor_file, dlib_resnet_embedder
from embedding.embedder import Alignment
from matching.protocol import read_lfw_pairs, run_protocol
from matching.verifier import ThresholdVerifier

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_LFW = SHARED / "data/lfw"
CHIP_PADDING = 0.25  # dlib.get_face_chip's default, used by compute_face_descriptor
UPSAMPLE = 1  # dlib HOG detector's upsampling (face_recognition's default)
LANDMARKER_FILE = "shape_predictor_5_face_landmarks.dat"
LFW_CENTRAL_BOX = (70.0, 70.0, 180.0, 180.0)  # xyxy: where a 250-px LFW photo has its face when none is found
DETECT_BATCH = 16


class DlibPipeline:
    """dlib's face_recognition pipeline: HOG detector, 5-point landmarks, get_face_chip, its ResNet."""

    def __init__(self):
        models = default_descriptor_file().parent
        self.detector = dlib.get_frontal_face_detector()
        self.landmarker = dlib.shape_predictor(str(models / LANDMARKER_FILE))
        self.recogniser = dlib.face_recognition_model_v1(str(default_descriptor_file()))

    def central_shape(self, image: np.ndarray) -> tuple[dlib.full_object_detection, bool]:
        """(5-point shape of the face nearest the photo's centre, whether the detector found it)."""
        found = list(self.detector(image, UPSAMPLE))
        centre = np.array(image.shape[1::-1]) / 2
        if found:
            rect = min(found, key=lambda r: np.hypot(r.center().x - centre[0], r.center().y - centre[1]))
        else:
            rect = dlib.rectangle(*map(int, LFW_CENTRAL_BOX))
        return self.landmarker(image, rect), bool(found)

    def chip(self, image: np.ndarray, shape) -> np.ndarray:
        return dlib.get_face_chip(image, shape, size=INPUT_SIZE, padding=CHIP_PADDING)

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        return np.array([np.array(self.recogniser.compute_face_descriptor(chip)) for chip in chips])


def chip_transform(shape) -> np.ndarray:
    """(2, 3) photo → chip affine of dlib's chip for ``shape`` (dlib's get_mapping_to_chip: the chip's top-left,
    top-right and bottom-right pixels are the rect's corners rotated by ``angle`` about its centre)."""
    details = dlib.get_face_chip_details(shape, size=INPUT_SIZE, padding=CHIP_PADDING)
    rect = details.rect
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    rotated = (corners - centre) @ np.array([[cos, sin], [-sin, cos]]) + centre  # rows: R @ (p - c) + c
    last_col, last_row = details.cols - 1, details.rows - 1
    chip_corners = np.array([[0, 0], [last_col, 0], [last_col, last_row]])
    return cv2.getAffineTransform(rotated.astype(np.float32), chip_corners.astype(np.float32)).astype(np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 2) points through a (2, 3) affine."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def central_mtcnn(detections, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(landmarks (5, 2), box (4,)) of the MTCNN face nearest the photo's centre, or None."""
    if len(detections) == 0:
        return None
    boxes = detections.boxes.numpy().astype(np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    nearest = int(np.argmin(np.linalg.norm(centres - np.array(image.shape[1::-1]) / 2, axis=1)))
    return detections.landmarks[nearest].numpy().astype(np.float64), boxes[nearest]


def measure(paths: list[Path], mtcnn, dlib_pipeline: DlibPipeline) -> list[dict]:
    """Per photo where both pipelines find a face: dlib's transform, dlib's and MTCNN's points, MTCNN's box."""
    records = []
    for start in tqdm(range(0, len(paths), DETECT_BATCH), desc="detect", unit="batch"):
        images = [read_image(path) for path in paths[start:start + DETECT_BATCH]]
        for path, image, detections in zip(paths[start:], images, mtcnn.detect(images)):
            ours = central_mtcnn(detections, image)
            shape, found = dlib_pipeline.central_shape(image)
            if ours is None or not found:
                continue
            dlib_points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            rect = shape.rect
            records.append(dict(path=path, image=image, shape=shape, transform=chip_transform(shape),
                                landmarks=ours[0], box=ours[1], dlib_points=dlib_points,
                                rect=np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], float)))
    return records


def derive(records: list[dict]) -> tuple[np.ndarray, float, np.ndarray]:
    """(template (5, 2), box margin, seed rect (4,)): MTCNN's landmarks and box side mapped into dlib's chips,
    averaged; and dlib's HOG rectangle (left, top, right, bottom) mapped into the chip of MTCNN's points aligned
    to the template in use (``DLIB_TEMPLATE_150``, which the landmarker's seeding starts from), averaged."""
    mapped = np.stack([apply(r["transform"], r["landmarks"]) for r in records])  # (N, 5, 2)
    scales = np.array([np.sqrt(abs(np.linalg.det(r["transform"][:, :2]))) for r in records])
    sides = np.array([(r["box"][2] - r["box"][0] + r["box"][3] - r["box"][1]) / 2 for r in records]) * scales
    print(f"template spread (std over photos, px): {np.round(mapped.std(0).mean(1), 2).tolist()}")
    template = mapped.mean(0)
    rects = np.stack([apply(fit_similarity(r["landmarks"], DLIB_TEMPLATE_150), r["rect"].reshape(2, 2)).ravel()
                      for r in records])  # (N, 4)
    print(f"seed rect spread (std over photos, px): {np.round(rects.std(0), 2).tolist()}")
    return template, float(INPUT_SIZE - sides.mean()), rects.mean(0)


def held_out_report(records: list[dict], template: np.ndarray, margin: float, dlib_pipeline: DlibPipeline) -> None:
    alignment = Alignment(INPUT_SIZE, tuple(map(tuple, template.tolist())), margin)
    embedder = dlib_resnet_embedder()
    errors, corner_errors, ours, theirs = [], [], [], []
    for r in records:
        similarity = fit_similarity(r["landmarks"], template)
        errors.append(np.linalg.norm(apply(similarity, r["dlib_points"]) - apply(r["transform"], r["dlib_points"]),
                                     axis=1))
        chip_corners = np.array([[0, 0], [INPUT_SIZE - 1, 0], [0, INPUT_SIZE - 1], [INPUT_SIZE - 1] * 2], float)
        photo_corners = apply(cv2.invertAffineTransform(r["transform"]), chip_corners)
        corner_errors.append(np.linalg.norm(apply(similarity, photo_corners) - chip_corners, axis=1))
        ours.append(alignment.align(r["image"], r["landmarks"][None])[0])
        theirs.append(dlib_pipeline.chip(r["image"], r["shape"]))
    errors, corner_errors = np.concatenate(errors), np.concatenate(corner_errors)
    print(f"held out: {len(records)} photos. dlib's 5 landmarks in our chip vs dlib's chip: mean "
          f"{errors.mean():.2f} px, median {np.median(errors):.2f}, 95th pct {np.percentile(errors, 95):.2f}, "
          f"max {errors.max():.2f}; chip corners: mean {corner_errors.mean():.2f} px, "
          f"95th pct {np.percentile(corner_errors, 95):.2f}")
    ours_descriptors = embedder.embed_chips(np.stack(ours)).numpy()
    dlib_descriptors = dlib_pipeline.descriptors(np.stack(theirs))
    dlib_descriptors /= np.linalg.norm(dlib_descriptors, axis=1, keepdims=True)
    cosine = (ours_descriptors * dlib_descriptors).sum(1)
    print(f"cosine(ours on MTCNN-aligned chip, dlib on its chip): mean {cosine.mean():.4f}, "
          f"min {cosine.min():.4f}, 5th pct {np.percentile(cosine, 5):.4f}")


def pairs_check(lfw: Path, folds: int, template: np.ndarray, margin: float, mtcnn,
                dlib_pipeline: DlibPipeline) -> None:
    pairs = [p for p in read_lfw_pairs(lfw / "pairs.txt", lfw / "deepfunneled") if p.fold < folds]
    paths = sorted({path for pair in pairs for path in (pair.path_x, pair.path_y)})
    alignment = Alignment(INPUT_SIZE, tuple(map(tuple, template.tolist())), margin)
    embedder = dlib_resnet_embedder()
    ours, theirs, misses = {}, {}, {"mtcnn": 0, "dlib": 0}
    for start in tqdm(range(0, len(paths), DETECT_BATCH), desc="pairs", unit="batch"):
        batch = paths[start:start + DETECT_BATCH]
        images = [read_image(path) for path in batch]
        for path, image, detections in zip(batch, images, mtcnn.detect(images)):
            found = central_mtcnn(detections, image)
            misses["mtcnn"] += found is None
            chip = (alignment.crop(image, np.array([LFW_CENTRAL_BOX])) if found is None
                    else alignment.align(image, found[0][None]))
            ours[path] = embedder.embed_chips(chip)[0].numpy()
            shape, detected = dlib_pipeline.central_shape(image)
            misses["dlib"] += not detected
            theirs[path] = dlib_pipeline.descriptors(dlib_pipeline.chip(image, shape)[None])[0]
    same = np.array([p.same for p in pairs])
    fold_ids = np.array([p.fold for p in pairs])
    for name, table in (("ours (MTCNN + template)", ours), ("dlib pipeline", theirs)):
        x = np.stack([table[p.path_x] for p in pairs])
        y = np.stack([table[p.path_y] for p in pairs])
        result = run_protocol(x, y, same, fold_ids, lambda: ThresholdVerifier("cosine"))
        print(f"{name}: {len(pairs)} pairs, folds 1-{folds}: accuracy {result.accuracies_mean:.4f} "
              f"(per fold {[round(f.accuracy, 4) for f in result.folds]}), AUC {result.auc:.4f}")
    print(f"photos without a face found: MTCNN {misses['mtcnn']}, dlib HOG {misses['dlib']} of {len(paths)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW root (deepfunneled/, pairs.txt)")
    parser.add_argument("--images", type=int, default=300, help="photos drawn from LFW")
    parser.add_argument("--derive", type=int, default=200, help="of which used to derive; the rest held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs-folds", type=int, default=0, help="also check accuracy on this many pair folds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    all_paths = sorted((args.lfw / "deepfunneled").glob("*/*.jpg"))
    if not all_paths:
        raise FileNotFoundError(f"no LFW photos under {args.lfw / 'deepfunneled'}")
    chosen = np.random.default_rng(args.seed).choice(len(all_paths), size=args.images, replace=False)
    mtcnn = build_detector("mtcnn", device="cpu")
    dlib_pipeline = DlibPipeline()
    records = measure([all_paths[i] for i in chosen], mtcnn, dlib_pipeline)
    derive_count = round(len(records) * args.derive / args.images)
    print(f"{len(records)} of {args.images} photos with a face from both detectors; deriving on {derive_count}")
    template, margin, seed_rect = derive(records[:derive_count])
    print("DLIB_TEMPLATE_150 = np.array([" + ", ".join(f"[{x:.4f}, {y:.4f}]" for x, y in template) + "])")
    print(f"DLIB_BOX_MARGIN = {margin:.2f}")
    print("SEED_RECT_150 = (" + ", ".join(f"{v:.2f}" for v in seed_rect) + ")  # embedding/dlib_landmarks.py")
    held_out_report(records[derive_count:], template, margin, dlib_pipeline)
    if args.pairs_folds:
        pairs_check(args.lfw, args.pairs_folds, template, margin, mtcnn, dlib_pipeline)
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
