"""Local multi-process work under ``torch.distributed``: launch N ranks, shard, merge.

:func:`launch` starts ``n`` worker processes on this machine (``torch.multiprocessing``
with the ``spawn`` start method), joins them into one process group (a c10d ``TCPStore``
on 127.0.0.1 that the parent opens on a free port, so there is no port race; ``gloo`` by
default, which runs on CPU and alongside CUDA) and calls ``fn(ctx, *args)`` in each, with a
:class:`RankContext` saying the rank, the world size, the device of that rank (``cuda:r``
for rank ``r`` when the work runs on CUDA, else ``cpu``) and a scratch folder for its
output. Ranks write their results as files there (:meth:`RankContext.save` /
:func:`load_shards`); the caller merges them once every rank has finished.

A rank that fails never leaves the others waiting: the first failure terminates the other
ranks, and :func:`launch` raises one exception with a one-line message naming the rank.
A rank's :class:`~sea.io.DataError`, :class:`~sea.io.FetchError` or
:class:`~sea.config.ConfigError` is raised again in the parent as the same class (so a
stage reports it as bad input); any other failure prints the rank's traceback on stderr
and raises :class:`RankFailed`.

:func:`shard_bounds` cuts ``n`` units of work into contiguous, balanced shards. Heavy
imports (torch) happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = ["RankContext", "RankFailed", "launch", "load_shard_json", "load_shards", "rank_device", "shard_bounds",
           "shard_dir", "threads_per_rank"]

#: How long ranks wait for each other in the process group before giving up.
GROUP_TIMEOUT = datetime.timedelta(minutes=30)


class RankFailed(RuntimeError):
    """A worker rank failed (not because of bad input): its traceback is on stderr."""


@dataclass(frozen=True)
class RankContext:
    """What a worker rank knows about itself."""

    rank: int
    world_size: int
    device: str  #: ``cpu`` or ``cuda:<rank>``
    workdir: Path  #: scratch folder shared by all ranks (temporary; removed by the caller)
    threads: int | None  #: torch intra-op threads of this rank (None: torch's default)

    def path(self, name: str, rank: int | None = None) -> Path:
        """The file ``name`` of rank ``rank`` (default: this rank) in the scratch folder."""
        return self.workdir / f"rank{self.rank if rank is None else rank:04d}-{name}"

    def save(self, name: str, array: np.ndarray) -> None:
        """Write ``array`` as ``.npy`` (no pickles) under this rank's ``name``."""
        with open(self.path(name + ".npy"), "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    def save_json(self, name: str, obj) -> None:
        self.path(name + ".json").write_text(json.dumps(obj))


def load_shards(workdir: Path, name: str, world_size: int) -> list[np.ndarray]:
    """The arrays every rank saved under ``name``, in rank order."""
    return [np.load(Path(workdir) / f"rank{r:04d}-{name}.npy", allow_pickle=False) for r in range(world_size)]


def load_shard_json(workdir: Path, name: str, world_size: int) -> list:
    return [json.loads((Path(workdir) / f"rank{r:04d}-{name}.json").read_text()) for r in range(world_size)]


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` units: the shares
    differ by at most one unit, in rank order, and together cover ``range(n)``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


def rank_device(device: str, rank: int) -> str:
    """The device of rank ``rank`` for a job on ``device`` (already resolved, i.e. ``cpu``
    or ``cuda``): one GPU per rank, ``cuda:<rank>``, on CUDA; every rank on ``cpu`` else."""
    return f"cuda:{rank}" if device.startswith("cuda") else "cpu"


def threads_per_rank(n: int) -> int | None:
    """Torch threads for each of ``n`` ranks sharing this machine: this process's thread
    count (``OMP_NUM_THREADS``, else the cores) divided among them, at least 1; None for
    ``n == 1`` (nothing is changed). The bytes of CPU features depend on it: two runs give
    the same bytes when each process encodes with the same number of threads."""
    if n == 1:
        return None
    import torch

    return max(1, torch.get_num_threads() // n)


@contextlib.contextmanager
def shard_dir() -> Iterator[Path]:
    """A temporary scratch folder for the ranks' shard files (in the system's temporary
    folder, never inside a DVC output), removed afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="sea-shards-") as d:
        yield Path(d)


def _user_errors() -> tuple[type[BaseException], ...]:
    from sea.config import ConfigError
    from sea.io import DataError, FetchError

    return ConfigError, DataError, FetchError


def _worker(rank: int, fn: Callable, args: tuple, world_size: int, port: int, backend: str,
            device: str, workdir: str, threads: int | None) -> None:
    """Body of one spawned rank: join the group, run ``fn``, record a failure for the parent."""
    import torch
    import torch.distributed as dist

    ctx = RankContext(rank, world_size, rank_device(device, rank), Path(workdir), threads)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if ctx.device.startswith("cuda"):
            torch.cuda.set_device(ctx.device)
        store = dist.TCPStore("127.0.0.1", port, world_size + 1, is_master=False, timeout=GROUP_TIMEOUT)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=GROUP_TIMEOUT)
        fn(ctx, *args)
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        # recorded before this rank's connections drop: the other ranks' errors that this
        # causes ("connection reset by peer") come later, and the parent reports the first
        at = time.time_ns()
        user = isinstance(e, _user_errors())
        if not user:
            traceback.print_exc()
        ctx.path("error.json").write_text(json.dumps({
            "type": type(e).__name__, "user_error": user, "message": str(e), "at": at}))
        sys.stderr.flush()
        os._exit(1)  # no atexit/teardown work that could wait for the other ranks


def _raise_failure(workdir: Path, world_size: int, exc: BaseException) -> None:
    """Turn a failed spawn into one exception naming the (first) failed rank."""
    errors = {}
    for r in range(world_size):
        f = workdir / f"rank{r:04d}-error.json"
        if f.exists():
            errors[r] = json.loads(f.read_text())
    if errors:
        rank, err = min(errors.items(), key=lambda item: (item[1]["at"], item[0]))  # the first to fail
        message = f"rank {rank} of {world_size} failed: {err['message']}"
        if err["user_error"]:
            for cls in _user_errors():
                if cls.__name__ == err["type"]:
                    raise cls(message) from None
        raise RankFailed(f"rank {rank} of {world_size} failed with {err['type']}: {err['message']} "
                         "(its traceback is above)") from None
    rank = getattr(exc, "error_index", "?")
    how = (f"was killed by {exc.signal_name}" if getattr(exc, "signal_name", None)
           else f"exited with status {getattr(exc, 'exit_code', '?')}")
    raise RankFailed(f"rank {rank} of {world_size} {how} (out of memory?) before reporting an error") from None


def launch(n: int, fn: Callable, args: tuple = (), *, workdir: Path, device: str = "cpu",
           threads: int | None = None, backend: str = "gloo") -> None:
    """Run ``fn(ctx, *args)`` in ``n`` spawned ranks and wait for all of them.

    Args:
        n: number of ranks (>= 1; 1 still spawns one process).
        fn: a module-level function (the ``spawn`` start method pickles it by name).
        args: extra arguments (picklable) passed to every rank.
        workdir: the scratch folder (see :func:`shard_dir`) where ranks write their files.
        device: ``cpu`` or ``cuda``: rank ``r`` gets ``cuda:r`` on CUDA.
        threads: torch intra-op threads per rank (``torch.set_num_threads``); None keeps
            torch's default (``OMP_NUM_THREADS``, else the core count: too many once
            several ranks share the CPU).
        backend: the process group's backend (``gloo``; ``nccl`` for GPU collectives).

    Raises the rank's own DataError/FetchError/ConfigError, or :class:`RankFailed`,
    with a one-line message naming the rank; the other ranks are terminated first.
    """
    import logging

    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if n < 1:
        raise ValueError(f"need at least one rank, got {n}")
    # the parent hosts the rendezvous store on a free port it already holds (no port race)
    store = dist.TCPStore("127.0.0.1", 0, n + 1, is_master=True, wait_for_workers=False,
                          timeout=GROUP_TIMEOUT)
    # torch logs "Terminating process ..." for the ranks it stops after a failure; the
    # exception raised here already says which rank failed
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        mp.start_processes(_worker, args=(fn, args, n, store.port, backend, device, str(workdir), threads),
                           nprocs=n, join=True, start_method="spawn")
    except ProcessException as e:
        _raise_failure(Path(workdir), n, e)
    finally:
        spawn_log.setLevel(level)
        del store
