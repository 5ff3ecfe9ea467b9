"""The face pipeline for Python users, and the composition root of the project.

    from pipeline import FacePipeline, build_detector, build_embedder, list_detectors, list_embedders

    faces = FacePipeline.from_config("configs/pipeline.yaml")("photo.jpg")   # detect → fuse → align → embed
    detector = build_detector("retinaface", device="cpu")                    # configs/detection_retinaface.yaml
    found = detector.detect([rgb_array])[0]                                  # Detections: boxes, scores, landmarks
    embedder = build_embedder("dlib_resnet")                                 # published weights
    vectors = embedder.embed_chips(embedder.alignment.align(rgb_array, found.landmarks))

Every detector and embedder is built here from a name and a config (``pipeline.build``); the training stages
(``pipeline.training``), the benchmarks (``pipeline.verification``, ``pipeline.benchmarks``) and ONNX export
(``python -m pipeline.export``) use the same factories.
"""
from pipeline.build import (build_detector, build_embedder, detector_from_config, fusion_from_config, list_detectors,
                            list_embedders, list_models)
from pipeline.config import default_config_path, detection_config, pipeline_config
from pipeline.face_pipeline import Face, FacePipeline, Faces, pipeline_from_config

__all__ = ["Face", "FacePipeline", "Faces", "build_detector", "build_embedder", "default_config_path",
           "detection_config", "detector_from_config", "fusion_from_config", "list_detectors", "list_embedders",
           "list_models", "pipeline_config", "pipeline_from_config"]
