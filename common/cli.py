"""What every command line shares: expected errors become one clear message and exit code 2, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2


def expected_errors() -> tuple[type[BaseException], ...]:
    from common.checkpoint import CheckpointError
    from common.config import ConfigError
    from common.engine import NonFiniteLossError
    from common.io import ImageReadError
    from detection.data.readers import AnnotationError
    return (ConfigError, CheckpointError, ImageReadError, AnnotationError, NonFiniteLossError, FileNotFoundError,
            ValueError, KeyError)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    try:
        return int(main(argv) or 0)
    except expected_errors() as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
