"""How a process of the pipeline uses this machine: the kernels it computes with, and its
threads. ``params.yaml [compute]`` sets both for every stage that computes
(:func:`start_stage`, the first statement of those stage scripts).

**Kernels** (``compute.kernels``, a dependency of every computing stage).
torch picks its CPU kernels by what the CPU offers (AVX2, AVX-512, AMX), and those differ
in the order they add numbers; a model trained for a hundred epochs turns such last-bit
differences into different metrics (measured: recall@20 ±0.01 on the sample). So:

- ``portable`` (default) pins every choice that depends on the CPU: ATen's vectorised
  kernels to the AVX2 level every x86-64 CPU since 2013–2015 has
  (``ATEN_CPU_CAPABILITY=avx2``); MKL, which does torch's matrix products, to its
  conditional-numerical-reproducibility ``COMPATIBLE`` branch (``MKL_CBWR=COMPATIBLE``)
  on one thread per calling thread (that branch adds in an order that depends on MKL's
  thread count); no oneDNN (its kernels are generated for the CPU at hand); no TF32 on
  CUDA. MKL's faster AVX2 branch would be reproducible on Intel CPUs only: on an AMD CPU
  MKL takes another path (measured on an emulated EPYC). With the thread-safe operations
  of :mod:`sea.ops`, a stage then writes the same bytes on any x86-64 CPU with AVX2 (Intel
  or AMD, with or without AVX-512 or AMX) at any thread count. The variables are read
  when torch first computes, so :func:`use_kernels` must run before that. The price: MKL's
  products run at about a sixth of their native speed on 2 cores (BENCHMARKS.md).
- ``intel``: as ``portable`` with MKL's strict AVX2 branch, which adds in an order that
  depends neither on the CPU model nor on the thread count, and which MKL runs only on
  Intel CPUs: the same bytes on every Intel CPU with AVX2 (with or without AVX-512 or AMX),
  about three times faster than ``portable``; an AMD CPU stops the stage with one line.
- ``native``: the fastest kernels of this CPU (and TF32 on CUDA GPUs that have it);
  results then depend on the CPU model.

**Threads** (``compute.threads``, not a dependency: it changes speed, never results).
``auto`` gives each computing process ``cores // jobs`` torch threads, where ``cores`` is
what this process may use (CPU affinity and cgroup quota) and ``jobs`` the number of the
pipeline's computing processes running on this machine now (:class:`Jobs`: one lock
file each, in the system's temporary folder). Two ``dvc exp run --jobs 2`` workers on
two cores thus get one thread each instead of two each; a process re-counts at every
epoch or batch of encoding (:func:`rebalance`), so it grows back when the others end.
A number fixes the threads of every process.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sea.config import Section, load_params, require, require_choice
from sea.errors import ConfigError, one_line, shown

try:
    import fcntl
except ImportError:  # not POSIX: no job registry, every process counts itself alone
    fcntl = None

#: What each ``compute.kernels`` value pins on x86-64 (see the module docstring), and the
#: MKL branch (``mkl_cbwr_get``) it must then report: 3 COMPATIBLE, 10 AVX2.
PINS = {
    "portable": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 3),
    "intel": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 10),
}
#: Carry this process's compute settings to the processes it starts (torchrun ranks,
#: spawned feature shards), which set themselves up from them (:func:`start_worker`).
KERNELS_ENV, THREADS_ENV = "SEA_KERNELS", "SEA_THREADS"


@dataclass
class ComputeConfig(Section):
    """How every stage that computes uses the machine (see :mod:`sea.runtime`):
    ``kernels`` (``portable``: the same bytes on every x86-64 CPU with AVX2 and any thread
    count; ``intel``: the same on every Intel CPU with AVX2, faster; ``native``: this CPU's
    fastest, results depend on the CPU model) and ``threads``
    per process (``auto``: the cores shared among the pipeline's processes running now; a
    number fixes them; results do not depend on it)."""

    KERNELS: ClassVar[tuple[str, ...]] = ("portable", "intel", "native")

    kernels: str = "portable"
    threads: int | str = "auto"

    def validate(self, section: str) -> None:
        require_choice(self.kernels, self.KERNELS, section, "kernels")
        require(
            self.threads == "auto" or isinstance(self.threads, int) and 1 <= self.threads <= 1024,
            section,
            f"threads must be auto or a whole number in [1, 1024], got {shown(self.threads)}",
        )


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def use_kernels(kind: str) -> None:
    """Compute with the ``portable``, ``intel`` or ``native`` kernels from now on (see the
    module docstring). Call it before torch computes anything in this process: the
    variables it sets are read then. Raises RuntimeError when that is too late, or when
    MKL does not take the branch asked for (``intel`` on a CPU that is not Intel's)."""
    if kind not in ComputeConfig.KERNELS:
        raise ValueError(f"kernels must be one of {ComputeConfig.KERNELS}, got {kind!r}")
    pinned = kind != "native"
    wanted, branch = PINS.get(kind, ({}, None)) if _x86_64() else ({"ATEN_CPU_CAPABILITY": "default"}, None)
    for pins, _ in PINS.values():  # drop a parent's pins that this kind does not set
        for name, value in pins.items():
            if os.environ.get(name) == value and name not in wanted:
                del os.environ[name]
    os.environ.update(wanted)
    os.environ[KERNELS_ENV] = kind
    import torch  # after the variables: torch reads them when it first computes

    torch.backends.mkldnn.enabled = not pinned
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not pinned
    if branch is None:
        return
    if cpu_kernels() not in ("AVX2", "DEFAULT"):
        raise RuntimeError(
            f"compute.kernels: {kind} asked for after torch chose its {cpu_kernels()} kernels: "
            "sea.runtime.use_kernels must run before torch computes anything"
        )
    mkl = _Mkl.get()
    if mkl.branch() != branch:
        raise RuntimeError(
            f"compute.kernels: {kind} needs MKL's {wanted['MKL_CBWR']} branch, and MKL runs "
            f"branch {mkl.branch()} here" + (" (this CPU is not Intel's: use portable)" if kind == "intel" else "")
        )
    _pin_mkl_threads()


class _Mkl:
    """MKL's service functions inside torch's CPU library (pip's torch links MKL into it):
    the reproducibility branch in use, and its thread count per calling thread."""

    _instance: _Mkl | None = None

    def __init__(self):
        import ctypes

        import torch

        lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
        try:
            if not torch.backends.mkl.is_available():
                raise AttributeError("no MKL")
            so = ctypes.CDLL(str(lib))
            self.cbwr_get, self.set_local_threads = so.mkl_serv_cbwr_get, so.mkl_serv_set_num_threads_local
        except (OSError, AttributeError):
            raise RuntimeError(
                "compute.kernels: portable and intel need torch's build with MKL on x86-64 (pip's "
                "torch wheels): this torch has none; use compute.kernels: native"
            ) from None
        self.cbwr_get.argtypes, self.cbwr_get.restype = [ctypes.c_int], ctypes.c_int
        self.set_local_threads.argtypes, self.set_local_threads.restype = [ctypes.c_int], ctypes.c_int

    @classmethod
    def get(cls) -> _Mkl:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def branch(self) -> int:
        return self.cbwr_get(1)  # MKL_CBWR_BRANCH


def _pin_mkl_threads() -> None:
    """With the portable kernels, run MKL's products on one thread whatever torch's thread
    count: the COMPATIBLE branch adds in an order that depends on how many threads MKL
    uses (``intel``'s strict AVX2 branch does not). torch resets the setting whenever its
    thread count changes, so :func:`set_threads` calls this again."""
    if os.environ.get(KERNELS_ENV) == "portable" and _x86_64():
        _Mkl.get().set_local_threads(1)


def set_threads(n: int) -> None:
    """Set torch's intra-op threads to ``n``, keeping the portable kernels' single-threaded
    MKL (use this, not ``torch.set_num_threads``, in a process that computes)."""
    import torch

    torch.set_num_threads(n)
    _pin_mkl_threads()


def cpu_kernels() -> str:
    """The level of ATen's vectorised CPU kernels in use (``AVX2``, ``AVX512``, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def describe() -> dict[str, str]:
    """The kernels this process computes with, for reports and output files (the same
    strings on every machine where the results are the same)."""
    kind = os.environ.get(KERNELS_ENV, "native")
    return {"kernels": kind, "cpu_kernels": cpu_kernels()}


# ------------------------------------------------------------------ threads


def release_freed_memory() -> None:
    """Hand the heap memory Python has freed back to the system (glibc's ``malloc_trim``;
    a no-op where the C library has none). glibc keeps freed pages mapped while a live
    block sits above them: after the graph stage parses millions of short-lived records
    among long-lived ids, that is hundreds of MB which the next phase's peak would stack
    on (BENCHMARKS.md). Changes memory only, never a result."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def cores() -> int:
    """The CPU cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def _cgroup_quota() -> int | None:
    """Whole cores of a cgroup CPU quota (v2 ``cpu.max``, or v1), rounded up; None if none."""
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ):
        try:
            fields = Path(quota_file).read_text().split()
            quota = fields[0]
            period = fields[1] if period_file is None else Path(period_file).read_text().strip()
            if quota not in ("max", "-1"):
                return math.ceil(int(quota) / int(period))
        except (OSError, ValueError, IndexError):
            continue
    return None


class Jobs:
    """The pipeline's computing processes on this machine: each holds an exclusive lock
    on a file ``<pid>.job`` in ``folder`` while it computes; a file whose lock can be
    taken belongs to a process that has ended and is removed."""

    def __init__(self, folder: Path | None = None):
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self.folder = Path(folder or Path(tempfile.gettempdir()) / f"sea-jobs-{uid}")
        self._file = None

    def join(self) -> None:
        """Count this process in (a no-op if it already is, or without POSIX locks)."""
        if self._file is not None or fcntl is None:
            return
        self.folder.mkdir(mode=0o700, exist_ok=True)
        tmp = self.folder / f".{os.getpid()}.tmp"
        f = open(tmp, "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        os.replace(tmp, self.folder / f"{os.getpid()}.job")  # appears already locked
        self._file = f
        atexit.register(self.leave)

    def leave(self) -> None:
        """Count this process out."""
        if self._file is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / f"{os.getpid()}.job")
        self._file.close()
        self._file = None

    def count(self) -> int:
        """The processes counted in now (at least 1: this one)."""
        if fcntl is None or not self.folder.is_dir():
            return 1
        alive = 1  # this process, counted in or not
        for path in self.folder.glob("*.job"):
            if path.name == f"{os.getpid()}.job":
                continue
            try:
                with open(path) as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        alive += 1
                        continue
                    path.unlink(missing_ok=True)  # its process ended without leaving
            except FileNotFoundError:
                continue
        return alive


_JOBS = Jobs()
_started = False  # whether start() set this process up


def threads_setting() -> int | None:
    """This process's ``compute.threads``: a number, or None for auto."""
    value = os.environ.get(THREADS_ENV, "auto")
    return int(value) if value.isdigit() and int(value) > 0 else None


def balanced_threads() -> int:
    """The torch threads this process should use now (see the module docstring)."""
    fixed = threads_setting()
    return fixed if fixed is not None else max(1, cores() // _JOBS.count())


def rebalance() -> None:
    """Set torch's threads to :func:`balanced_threads` when they changed, in a process
    that :func:`start` set up (elsewhere, e.g. in a notebook, nothing is changed)."""
    if not _started:
        return
    import torch

    n = balanced_threads()
    if torch.get_num_threads() != n:
        set_threads(n)


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Count this process out while it only waits for processes it started (torchrun
    ranks, feature shards), so that they share the cores among themselves."""
    joined = _JOBS._file is not None
    _JOBS.leave()
    try:
        yield
    finally:
        if joined:
            _JOBS.join()


def start(cfg: ComputeConfig) -> None:
    """Set this process up to compute: :func:`use_kernels`, count it in, balance threads.
    The settings travel to the processes it starts through the environment."""
    use_kernels(cfg.kernels)
    os.environ[THREADS_ENV] = str(cfg.threads)
    _count_in()


def start_worker() -> None:
    """Set up a worker process (a spawned feature shard) as its parent: the kernels the
    parent's :func:`start` chose (none pinned if it had not started), its thread setting,
    counted in among the pipeline's processes."""
    if KERNELS_ENV in os.environ:
        use_kernels(os.environ[KERNELS_ENV])
    _count_in()


def _count_in() -> None:
    global _started
    _JOBS.join()
    _started = True
    rebalance()


def start_stage(stage: str) -> ComputeConfig:
    """The first statement of a stage script that computes, before torch is imported:
    read ``params.yaml [compute]`` and :func:`start` this process; a bad value ends the
    stage with one line, as :func:`sea.cli.run_stage` does."""
    try:
        cfg = ComputeConfig.from_dict(load_params().get("compute"), "compute")
        start(cfg)
    except (ConfigError, RuntimeError) as e:
        sys.exit(f"{stage} stage failed: {one_line(str(e))}")
    return cfg


__all__ = [
    "Jobs",
    "KERNELS_ENV",
    "PINS",
    "THREADS_ENV",
    "balanced_threads",
    "cores",
    "cpu_kernels",
    "describe",
    "rebalance",
    "set_threads",
    "start",
    "start_stage",
    "start_worker",
    "threads_setting",
    "use_kernels",
    "waiting",
]
