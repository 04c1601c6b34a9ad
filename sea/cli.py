"""How every stage script runs: bad params or bad data end in one clear line, never a
traceback.

A stage script ends with ``run_stage(main, "graph")``. A :class:`~sea.config.ConfigError`
(a params.yaml value) or a :class:`~sea.io.DataError` / :class:`~sea.io.FetchError` (an
input file or URL) is printed as ``<stage> stage failed: <message>`` on stderr, on one
line, and the process exits with status 1. Anything else is a bug and keeps its
traceback. Ctrl-C exits with status 130 without a traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from sea.config import ConfigError
from sea.io import DataError, FetchError

#: The exceptions that mean "the user's params or input are wrong", not "the code is".
USER_ERRORS = (ConfigError, DataError, FetchError)


def one_line(message: str) -> str:
    """``message`` with its line breaks folded, so it prints as a single line."""
    return " ".join(str(message).split())


def run_stage(main: Callable[[], None], stage: str) -> None:
    """Run a stage's ``main``; turn user errors into one line on stderr and exit 1."""
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"{stage} stage failed: {one_line(str(e))}")
    except KeyboardInterrupt:
        sys.exit(130)
