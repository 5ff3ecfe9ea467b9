"""Reading dlib's ``serialize()`` format (dlib/serialize.h), shared by the importers of dlib's face-recognition
network (``embedding.dlib_resnet``) and its 5-point shape predictor (``embedding.dlib_landmarks``).

Integers are a control byte (low nibble: byte count, 0x80: negative) then little-endian bytes; floats are such an
integer mantissa and exponent; bools an ASCII '0'/'1'; strings a length then bytes; a ``std::vector`` its length
then its items; a dlib matrix its rows and columns (negated: the current format) then its values row by row.
dlib distributes its models bz2-compressed (``.dat.bz2``); both forms are read.
"""
from __future__ import annotations

import bz2
import importlib.util
import math
from pathlib import Path
from typing import Tuple

import numpy as np

from common.errors import UserError

MODELS_PACKAGE = "face_recognition_models"  # pip install face-recognition-models: dlib's models as files


class DlibFormatError(UserError, ValueError):
    """A file is not (or not entirely) a dlib model of the kind read here."""


class DlibReader:
    """Sequential reader of dlib's ``serialize()`` primitives over a byte buffer; ``expected`` names what the
    file should be, for error messages."""

    FLOAT_INF, FLOAT_NINF, FLOAT_NAN = 32000, 32001, 32002  # float_details' special exponents
    MAX_NAME_LENGTH = 64

    def __init__(self, data: bytes, path: Path, expected: str):
        self.data = data
        self.path = path
        self.expected = expected
        self.offset = 0

    def error(self, message: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: {message} at byte {self.offset}; expected {self.expected}")

    def take(self, count: int) -> bytes:
        if count < 0:
            raise self.error(f"negative length {count}")
        if self.offset + count > len(self.data):
            raise self.error(f"file ends early (wanted {count} more bytes)")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.error(f"invalid integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        if self.data[self.offset] & 0x70:
            raise self.error("a float in dlib's old ASCII format")
        mantissa, exponent = self.integer(), self.integer()
        special = {self.FLOAT_INF: math.inf, self.FLOAT_NINF: -math.inf, self.FLOAT_NAN: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.error(f"invalid bool {byte!r}")
        return byte == b"1"

    def string(self) -> str:
        """A name (layer type or version tag: never longer than ``MAX_NAME_LENGTH`` in dlib)."""
        length = self.integer()
        if not 0 <= length <= self.MAX_NAME_LENGTH:
            raise self.error(f"a name of implausible length {length}")
        return self.take(length).decode("latin-1")

    def version(self, allowed: Tuple[int, ...], what: str) -> int:
        version = self.integer()
        if version not in allowed:
            raise self.error(f"{what} version {version} (readable: {allowed})")
        return version

    def tensor(self) -> np.ndarray:
        """(num_samples, k, nr, nc) float32."""
        self.version((2,), "tensor")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_shape(self) -> Tuple[int, int, int, int]:
        """An alias_tensor: the shape of a view into a layer's flat ``params``."""
        self.version((1,), "alias_tensor")
        return tuple(self.integer() for _ in range(4))


def read_dat(path: str | Path) -> bytes:
    """The bytes of a dlib ``.dat`` (or ``.dat.bz2``) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file not found: {path}")
    data = path.read_bytes()
    return bz2.decompress(data) if data[:3] == b"BZh" else data


def packaged_model_file(filename: str, what: str, option: str) -> Path:
    """dlib's ``filename`` as shipped by the ``face-recognition-models`` package (found, not imported: importing
    it needs pkg_resources); ``what`` and ``option`` (how to pass a file instead) word the error."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"dlib's {what} comes with the {MODELS_PACKAGE} package: "
                                f"pip install face-recognition-models (or pass {option} to {filename})")
    path = Path(spec.submodule_search_locations[0]) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {MODELS_PACKAGE} install; reinstall it "
                                f"(pip install --force-reinstall face-recognition-models)")
    return path
