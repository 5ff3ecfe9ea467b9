"""What every command line shares: a user error (``common.errors.UserError``) or a missing file becomes one clear
message and exit code 2; any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import re
import sys
from typing import Callable

from common.errors import UserError

EXIT_USAGE = 2

# torch re-raises an exception of a DataLoader worker with the worker's whole traceback as its message.
_WORKER_TRACEBACK = re.compile(r"^Original Traceback \(most recent call last\):$", re.MULTILINE)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: ", re.MULTILINE)  # "module.SomeError: message"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    try:
        return int(main(argv) or 0)
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def error_message(error: BaseException) -> str:
    """The message of ``error``; of an exception from a DataLoader worker, the original message without the
    worker's traceback."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if _WORKER_TRACEBACK.search(message):
        exception_lines = list(_EXCEPTION_LINE.finditer(message))
        if exception_lines:
            message = message[exception_lines[-1].end():].strip()
    return message


def min_face_px_arg(text: str) -> str:
    """argparse type of ``--min-face-px``: a number of pixels, or ``none`` (look at the whole photo once); returned
    as the YAML value of an ``inference.min_face_px=...`` override (the detector checks the value)."""
    return "null" if text.lower() in ("none", "null") else str(float(text))


MIN_FACE_PX_HELP = ("smallest face to find (px): detectors that tile plan their passes from it, MTCNN seeks it "
                    "with its pyramid; 'none': the whole photo once (default: inference.min_face_px of the config)")
