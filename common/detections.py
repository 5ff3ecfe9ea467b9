"""The one result type every detector returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_LANDMARKS = 5  # image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner
# A face box is about this many eye distances wide (MTCNN's boxes on LFW: 2.0-2.2): the eye distance, which a
# detector's box margins do not change, gives a face's width
FACE_WIDTH_EYES = 2.1


def face_widths(landmarks) -> np.ndarray:
    """(N,) the face width in px that (N, 5, 2) landmarks (eyes first) suggest."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, NUM_LANDMARKS, 2)
    return FACE_WIDTH_EYES * np.linalg.norm(points[:, 1] - points[:, 0], axis=1)


@dataclass
class Detections:
    """Faces found in one image: ``boxes`` (N, 4) float32 xyxy pixels, ``scores`` (N,), ``landmarks`` (N, 5, 2)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __post_init__(self):
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.landmarks.shape != (n, NUM_LANDMARKS, 2):
            raise ValueError(
                "Detections expects boxes (N, 4), scores (N,), landmarks (N, 5, 2); got "
                f"{tuple(self.boxes.shape)}, {tuple(self.scores.shape)}, {tuple(self.landmarks.shape)}")

    @classmethod
    def empty(cls) -> "Detections":
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, NUM_LANDMARKS, 2))

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, index) -> "Detections":
        """Select faces by index tensor, slice or boolean mask."""
        return Detections(self.boxes[index].reshape(-1, 4), self.scores[index].reshape(-1),
                          self.landmarks[index].reshape(-1, NUM_LANDMARKS, 2))

    def nearest_to_centre(self, height: int, width: int) -> int | None:
        """Index of the face whose box centre is nearest the centre of a ``height`` × ``width`` image (the subject
        of a portrait such as LFW's), or None without faces."""
        if len(self) == 0:
            return None
        centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2  # (N, 2)
        return int((centres - torch.tensor([width / 2, height / 2])).pow(2).sum(1).argmin())

    def to(self, device) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device))

    def scaled(self, scale_x: float, scale_y: float, offset_x: float = 0.0, offset_y: float = 0.0) -> "Detections":
        """Map coordinates ``p → p * scale + offset`` (e.g. from a resized/cropped input back to the photo)."""
        scale = torch.tensor([scale_x, scale_y], dtype=torch.float32)
        offset = torch.tensor([offset_x, offset_y], dtype=torch.float32)
        boxes = (self.boxes.reshape(-1, 2, 2) * scale + offset).reshape(-1, 4)
        return Detections(boxes, self.scores, self.landmarks * scale + offset)

    @staticmethod
    def cat(parts: list["Detections"]) -> "Detections":
        if not parts:
            return Detections.empty()
        return Detections(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                          torch.cat([p.landmarks for p in parts]))

    def to_json(self) -> list[dict]:
        """``[{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y], ...]}, ...]`` rounded to 0.01 px."""
        return [{"box": [round(float(v), 2) for v in box],
                 "score": round(float(score), 5),
                 "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in points]}
                for box, score, points in zip(self.boxes.cpu(), self.scores.cpu(), self.landmarks.cpu())]
