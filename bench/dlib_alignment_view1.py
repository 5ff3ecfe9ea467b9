"""dlib_resnet's chip alignment (dlib's 5-point landmarker, the default, vs the template) chosen on LFW View 1: a
cosine threshold fitted on DevTrain's 2200 pairs, accuracy on DevTest's 1000 with its 95 % interval; without and with
test-time flip. View 2 (pairs.txt) is not read: it reports the chosen default once.

    python -m bench.dlib_alignment_view1
"""
from __future__ import annotations

import numpy as np

from common.stats import rate_interval
from matching.protocol import lfw_image_dir, read_lfw_pairs
from matching.verifier import build_verifier
from pipeline.build import build_detector, build_embedder, detector_cache_key
from pipeline.embed_images import DEFAULT_CACHE_DIR
from pipeline.embedder_fusion import VIEW1_TEST, VIEW1_TRAIN, member_embeddings
from pipeline.verification import DEFAULT_LFW_ROOT


def main() -> None:
    images = lfw_image_dir(DEFAULT_LFW_ROOT)
    train_pairs = read_lfw_pairs(DEFAULT_LFW_ROOT / VIEW1_TRAIN, images)
    test_pairs = read_lfw_pairs(DEFAULT_LFW_ROOT / VIEW1_TEST, images)
    train_same = np.array([pair.same for pair in train_pairs])
    test_same = np.array([pair.same for pair in test_pairs])
    detector, key = build_detector("mtcnn"), detector_cache_key("mtcnn")
    for flip in (False, True):
        for align in ("dlib_landmarks", "template"):
            member = build_embedder("dlib_resnet", flip=flip, align=align)
            [train] = member_embeddings(train_pairs, [member], detector, key, DEFAULT_CACHE_DIR)
            [test] = member_embeddings(test_pairs, [member], detector, key, DEFAULT_CACHE_DIR)
            verifier = build_verifier("threshold", metric="cosine")
            verifier.fit(*train, train_same)
            accuracy = float((verifier.predict(*test) == test_same).mean())
            correct = int(round(accuracy * len(test_pairs)))
            low, high = rate_interval(correct, len(test_pairs))
            print(f"flip={flip} align={align}: DevTest accuracy {accuracy:.4f} ({correct}/{len(test_pairs)}, "
                  f"95 % {low:.4f}-{high:.4f})", flush=True)


if __name__ == "__main__":
    main()
