"""Image files: decode any common format to an (H, W, 3) uint8 RGB array, find images in a folder, and make the
smaller JPEG copy of a photo a phone or a far camera would give (``at_size``)."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import UserError

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

# Pillow modes holding one integer channel wider than 8 bits (16-bit PNG and TIFF grayscale).
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_UINT16_TO_UINT8 = 65535 / 255


class ImageReadError(UserError, ValueError):
    """A file that exists but cannot be decoded as an image; the message reads ``file: reason``."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` by its content (not its extension) to an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB
    (alpha is dropped); animated images give their first frame. Raises FileNotFoundError for a missing
    file and ImageReadError for an empty, truncated, non-image or decompression-bomb file.
    """
    path = Path(path)
    with open(path, "rb") as file:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                # Over Image.MAX_IMAGE_PIXELS Pillow only warns; over twice that it raises. Reject both.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as image:
                    return _to_rgb_array(ImageOps.exif_transpose(image))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageReadError(f"{path}: refused as a possible decompression bomb: {error}") from error
        except UnidentifiedImageError as error:
            raise ImageReadError(f"{path}: not an image in any format Pillow can decode") from error
        except (OSError, SyntaxError, ValueError) as error:
            # Pillow reports truncated or corrupt data as OSError, bad headers as SyntaxError, and
            # unsupported mode conversions as ValueError.
            raise ImageReadError(f"{path}: cannot decode image: {error}") from error


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image, dtype=np.float64)
        gray = np.round(np.clip(values, 0, 65535) / _UINT16_TO_UINT8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def list_images(folder: str | Path) -> list[Path]:
    """All files under ``folder`` (recursively) whose extension is in IMAGE_EXTENSIONS, sorted."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    return sorted(
        path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def at_size(image: np.ndarray, size: tuple[int, int], quality: int) -> np.ndarray:
    """(H', W', 3) uint8 RGB: ``image`` (H, W, 3 RGB) shrunk by area to ``size`` (W', H'), JPEG-coded at
    ``quality`` and decoded."""
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
