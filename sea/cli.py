"""How every stage script runs: bad params or bad data end in one clear line, never a
traceback.

A stage script ends with ``run_stage(main, "graph")``. A :class:`~sea.errors.ConfigError`
(a params.yaml value) or a :class:`~sea.errors.DataError` / :class:`~sea.errors.FetchError` (an
input file or URL) is printed as ``<stage> stage failed: <message>`` on stderr, on one
line, and the process exits with status 1. Anything else is a bug and keeps its
traceback. Ctrl-C exits with status 130 without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sea.distributed import RankFailed
from sea.errors import ConfigError, DataError, FetchError, one_line

#: The exceptions that mean "the user's params or input are wrong", not "the code is" —
#: and RankFailed: a worker rank of a sharded stage failed; it printed its own traceback.
USER_ERRORS = (ConfigError, DataError, FetchError, RankFailed)


def run_main(main: Callable[[], None], prefix: str, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
    """Run ``main``; turn ``errors`` into ``<prefix>: <message>`` on one line on stderr and
    exit 1 (Ctrl-C: exit 130). Scripts use it with their own error classes added."""
    try:
        main()
    except errors as e:
        sys.exit(f"{prefix}: {one_line(str(e))}")
    except KeyboardInterrupt:
        sys.exit(130)


def run_stage(main: Callable[[], None], stage: str) -> None:
    """Run a stage's ``main``; user errors become ``<stage> stage failed: …`` (see :func:`run_main`)."""
    run_main(main, f"{stage} stage failed")
