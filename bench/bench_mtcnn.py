"""Speed of our MTCNN vs facenet-pytorch's on the same photos, in one run, and a check that they agree.

    python -m bench.bench_mtcnn [--repeats 7] [--threads 2] [--batch 64] [--no-malloc-tuning] [--out result.json]

Photos: CompreFace ``016_8.jpg`` resized to 640x480 and 1920x1080 (one photo per call), and ``--batch``
LFW images (250x250) in one call (facenet-pytorch takes a list of equal-size images as a batch). Both run the
same thresholds, minimum face (20 px) and pyramid factor, on CPU with the same threads. Each figure is the best
of ``--repeats`` timed calls, the two detectors alternating so a slow phase of a shared machine hits both.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import torch

from bench.timing import best_seconds, keep_freed_memory_in_heap, report
from common.boxes import box_iou
from common.io import read_image
from detection.mtcnn.detector import mtcnn_detector

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_PHOTO = SHARED / "data/faces_in_photos/compreface/016_8.jpg"
DEFAULT_LFW = SHARED / "data/lfw/deepfunneled"
SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}
MIN_FACE, THRESHOLDS, FACTOR = 20, (0.6, 0.7, 0.7), 0.709



def agreement(reference, ours) -> Dict[str, float]:
    """facenet-pytorch's ``detect(..., landmarks=True)`` per image vs our ``Detections`` per image: faces found
    by each, and over faces matched by best IoU the worst IoU, landmark and score differences."""
    found_ref = found_ours = 0
    worst = {"min_box_iou": 1.0, "max_landmark_px": 0.0, "max_score_diff": 0.0}
    for (boxes, scores, points), detections in zip(reference, ours):
        count = 0 if boxes is None else len(boxes)
        found_ref += count
        found_ours += len(detections)
        if count == 0 or len(detections) == 0 or count != len(detections):
            continue
        iou = box_iou(torch.from_numpy(np.asarray(boxes, np.float32)), detections.boxes)
        best_iou, match = iou.max(1)
        worst["min_box_iou"] = min(worst["min_box_iou"], float(best_iou.min()))
        landmarks = torch.from_numpy(np.asarray(points, np.float32))
        worst["max_landmark_px"] = max(worst["max_landmark_px"],
                                       float((landmarks - detections.landmarks[match]).abs().max()))
        worst["max_score_diff"] = max(worst["max_score_diff"], float(
            (torch.from_numpy(np.asarray(scores, np.float32)) - detections.scores[match]).abs().max()))
    return {"faces_facenet": found_ref, "faces_ours": found_ours, **worst}


def lfw_images(folder: Path, count: int) -> list:
    files = sorted(folder.glob("*/*_0001.jpg"))[:count]
    if len(files) < count:
        raise SystemExit(f"need {count} LFW images under {folder}, found {len(files)}")
    return [read_image(f) for f in files]


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                        help="leave glibc's defaults (freed activations go back to the OS and fault in again)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)

    from facenet_pytorch import MTCNN

    malloc_tuned = args.malloc_tuning and keep_freed_memory_in_heap()
    torch.set_num_threads(args.threads)
    reference = MTCNN(keep_all=True, device="cpu", min_face_size=MIN_FACE, thresholds=list(THRESHOLDS),
                      factor=FACTOR, post_process=False, select_largest=False)
    ours = mtcnn_detector(min_face_px=MIN_FACE, thresholds=THRESHOLDS, factor=FACTOR, batch_size=args.batch)

    results: Dict[str, object] = {"threads": args.threads, "repeats": args.repeats, "malloc_tuned": malloc_tuned,
                                  "torch": torch.__version__}
    photo = read_image(args.photo)
    for name, (width, height) in SIZES.items():
        interpolation = cv2.INTER_AREA if width < photo.shape[1] else cv2.INTER_LINEAR
        image = cv2.resize(photo, (width, height), interpolation=interpolation)
        seconds = best_seconds({"facenet": lambda: reference.detect(image, landmarks=True),
                                "ours": lambda: ours.detect([image])}, args.repeats)
        results[f"{name}_facenet_s"] = seconds["facenet"]
        results[f"{name}_ours_s"] = seconds["ours"]
        results[f"{name}_speedup"] = seconds["facenet"] / seconds["ours"]
        check = agreement([reference.detect(image, landmarks=True)], ours.detect([image]))
        results.update({f"{name}_{key}": value for key, value in check.items()})

    batch = lfw_images(args.lfw, args.batch)
    seconds = best_seconds({"facenet": lambda: reference.detect(batch, landmarks=True),
                            "ours": lambda: ours.detect(batch)}, max(1, args.repeats // 2))
    results[f"lfw{args.batch}_facenet_img_per_s"] = args.batch / seconds["facenet"]
    results[f"lfw{args.batch}_ours_img_per_s"] = args.batch / seconds["ours"]
    results[f"lfw{args.batch}_speedup"] = seconds["facenet"] / seconds["ours"]
    boxes, scores, points = reference.detect(batch, landmarks=True)
    check = agreement(list(zip(boxes, scores, points)), ours.detect(batch))
    results.update({f"lfw{args.batch}_{key}": value for key, value in check.items()})

    return report(results, args.out)


if __name__ == "__main__":
    main()
