"""Several processes under ``torch.distributed``: DDP-style training launched by torchrun,
and sharded work (feature extraction) spawned from inside a stage.

**Training** (read top to bottom in the first half): :func:`launched` and :func:`world` say
whether this process is one rank of a torchrun launch and which; :func:`torchrun` starts
``torchrun --standalone --nproc_per_node N <script>`` from inside a stage (in process,
through ``torch.distributed.run``) and turns a failed rank into one line;
:func:`process_group` joins the launch's process group (NCCL on CUDA, one GPU per local
rank; gloo on the CPU) for the duration of a ``with`` block; the collectives follow, then
everything the trainer (:mod:`sea.train`) does differently on several ranks, as a few
hooks that do nothing in one process: :func:`replicate` (every rank starts from rank 0's
weights), :meth:`World.rows` (this rank's rows of a batch), :func:`step_on_shard` (the
optimiser step on them, gradients averaged), :meth:`World.sum_` (the logged values summed
over ranks) and :meth:`World.follow_main` (rank 0's decision to stop). Nothing here knows
about models: the trainer hands over parameters and loss terms.

**Sharded work** (second half): :func:`launch` starts ``n`` worker processes on this machine
(``torch.multiprocessing`` with the ``spawn`` start method), joins them into one process
group (a c10d ``TCPStore`` on 127.0.0.1 that the parent opens on a free port, so there is no
port race; ``gloo``, which runs on CPU and alongside CUDA) and calls ``fn(ctx, *args)`` in
each, with a :class:`RankContext` saying the rank, the world size, the device of that rank
(``cuda:r`` for rank ``r`` when the work runs on CUDA, else ``cpu``) and a scratch folder
for its output. Ranks write their results as files there (:meth:`RankContext.save` /
:func:`load_shards`); the caller merges them once every rank has finished. A rank that
fails never leaves the others waiting: the first failure terminates the other ranks, and
:func:`launch` raises one exception with a one-line message naming the rank. A rank's
:class:`~sea.errors.DataError`, :class:`~sea.errors.FetchError` or :class:`~sea.errors.ConfigError`
is raised again in the parent as the same class (so a stage reports it as bad input); any
other failure prints the rank's traceback on stderr and raises :class:`RankFailed`.
:func:`shard_bounds` cuts ``n`` units of work into contiguous, balanced shards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sea import runtime
from sea.errors import ConfigError, DataError, FetchError

# torch is imported inside the functions (a heavy import kept out of this module's own;
# no import circle): a spawned rank imports this module to run _worker, which sets up
# torch's kernels and threads (runtime.start_worker) before torch computes anything.
if TYPE_CHECKING:
    import torch

#: How long a collective may wait for the other ranks before the process group gives up
#: (and the rank fails, which makes torchrun stop the others): rank 0 evaluates alone
#: while the others wait, so this bounds one evaluation too.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place in the launch: ``rank`` of ``size`` processes overall,
    ``local_rank`` on its machine (its GPU index)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that evaluates and writes the outputs."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows: ``size`` near-equal
        slices in rank order (equal when ``size`` divides ``n``; some empty when n < size)."""
        return slice(*shard_bounds(n, self.size, self.rank))

    def rows(self, n: int) -> slice | None:
        """:meth:`shard` of a global batch of ``n`` rows on one of several ranks; None (the
        whole batch) in one process."""
        return self.shard(n) if self.size > 1 else None

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (itself in one process)."""
        return all_reduce_sum_(tensor) if self.size > 1 else tensor

    def follow_main(self, stop: str | None, device: torch.device) -> str | None:
        """Rank 0's decision to stop training (rank 0 alone evaluates), on every rank:
        ``stop`` (a message, or None to go on) in one process and on rank 0; on the other
        ranks their own message, or "rank 0 stopped", when rank 0 stops, else None."""
        if self.size == 1:
            return stop
        return (stop or "rank 0 stopped") if broadcast_flag(stop is not None, device) else None


def launched() -> bool:
    """Whether this process was started by torchrun (which sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def world() -> World:
    """This process's :class:`World`: from the initialised process group, else one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def torchrun(script: str, nprocs: int, args: Iterable[str] = (), prefix: str = "torchrun") -> int:
    """Run ``torchrun --standalone --nproc_per_node nprocs script args`` in this process
    and return the exit status: 0, or the first failed rank's. A failed rank has printed
    its own error; this adds one line, ``<prefix>: rank …``, saying which rank failed (no
    traceback). Once one rank fails, torchrun stops the others, so nothing waits for a
    dead rank; a rank that hangs in a collective gives up after :data:`TIMEOUT`."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's own log lines (restarts, "sending SIGTERM", the failure table) would bury
    # the failed rank's one-line message; keep only its critical ones.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", "--nproc_per_node", str(nprocs), "--max-restarts", "0", script, *args]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 1
        signal = f" (signal {failure.signal_name()})" if failure.exitcode < 0 else ""
        print(
            f"{prefix}: rank {rank} of {nprocs} failed with exit status {failure.exitcode}{signal} "
            f"(its message is above); the other ranks were stopped",
            file=sys.stderr,
        )
        return code
    return 0


@contextmanager
def process_group(processes: int, device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """Join torchrun's process group for the block, as one of ``processes`` ranks; yield
    (:class:`World`, this rank's device). On CUDA each rank takes ``cuda:<local_rank>``
    and the backend is NCCL, else gloo on the CPU. Outside a torchrun launch (one process)
    it yields ``(World(), device)`` and does nothing.

    Raises ConfigError when torchrun started another number of processes than
    ``train.processes`` asks for, or a machine has fewer GPUs than ranks.
    """
    import torch
    import torch.distributed as dist

    if not launched():
        yield World(), device
        return
    size, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if size != processes:
        raise ConfigError(
            f"params.yaml [train]: processes is {processes} but torchrun started {size} "
            f"processes (nnodes × nproc_per_node); make them equal"
        )
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"params.yaml [train]: local rank {local_rank} needs a GPU, and this machine "
                f"has {torch.cuda.device_count()}: start at most that many processes per machine"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield world(), device
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ collectives


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (every rank gets the same bits)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks, in one collective.

    A parameter no rank gave a gradient keeps ``grad = None`` (so Adam skips it, as in a
    single process); one that some ranks did not reach counts as zero on those ranks.
    """
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = all_reduce_sum_(torch.cat([g.reshape(-1) for g in grads] + [has_grad]))
    size, offset, counts = dist.get_world_size(), 0, flat[-len(params) :]
    for p, count in zip(params, counts.tolist(), strict=True):
        n = p.numel()
        if count > 0:
            p.grad = (flat[offset : offset + n] / size).view_as(p).clone()
        offset += n


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
    import torch
    import torch.distributed as dist

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():  # one collective per dtype
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_flag(flag: bool, device: torch.device, src: int = 0) -> bool:
    """Rank ``src``'s ``flag`` on every rank (e.g. rank 0's early-stopping decision)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src)
    return bool(t.item())


# ------------------------------------------------------------------ the trainer's hooks


def replicate(model: torch.nn.Module) -> World:
    """This process's :class:`World`; on several ranks, every rank's parameters are first
    overwritten with rank 0's (as DDP does), so all start from the same weights."""
    w = world()
    if w.size > 1:
        broadcast_(p.data for p in model.parameters())
    return w


def step_on_shard(
    terms: dict,
    ranking: str,
    rows: slice,
    batch_rows: int,
    params: Iterable[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    logs: dict,
    scale: float = 1.0,
) -> dict:
    """One rank's optimiser step on its ``rows`` of a global batch of ``batch_rows`` rows.

    ``terms``: name → (value, weight) of the step's loss terms, where ``terms[ranking]``,
    the ranking loss, is a mean over this rank's rows only, and the others (the model's
    own terms) were computed on the whole batch, as in one process, on every rank. With
    the ranking term scaled by ranks × (its share of the rows), the mean of the ranks'
    gradients of ``params`` (:func:`average_gradients`) is the one-process gradient of the
    whole batch, whatever the shard sizes. Returns the loss (``loss``), every term and the
    model's ``logs``, each as this rank's part of a sum over ranks."""
    size, share = world().size, (rows.stop - rows.start) / batch_rows
    ranked = terms.get(ranking)  # None for loss.kind none: the model's own terms are the objective
    own = sum(
        (t.weight * t.value for k, t in terms.items() if k != ranking),
        0.0 if ranked is None else ranked.value.new_zeros(()),
    )
    value = own.new_zeros(()) if ranked is None else ranked.value
    objective = (size * share * value + own) * scale  # scale: Mirror Gradient's signed step weight
    if objective.requires_grad:
        objective.backward()
    average_gradients(params)
    opt.step()
    values = {"loss": share * value.detach() + own.detach() / size}
    if ranking in terms:
        values[ranking] = share * value.detach()
    return (
        values
        | {k: t.value.detach() / size for k, t in terms.items() if k != ranking}
        | {k: v / size for k, v in logs.items()}
    )


# ---------------------------------------------------------------------- sharded work (spawned ranks)


class RankFailed(RuntimeError):
    """A worker rank failed (not because of bad input): its traceback is on stderr."""


@dataclass(frozen=True)
class RankContext:
    """What a worker rank knows about itself."""

    rank: int
    world_size: int
    device: str  #: ``cpu`` or ``cuda:<rank>``
    workdir: Path  #: scratch folder shared by all ranks (temporary; removed by the caller)

    def path(self, name: str) -> Path:
        """This rank's file ``name`` in the scratch folder."""
        return shard_file(self.workdir, self.rank, name)

    def save(self, name: str, array: np.ndarray) -> None:
        """Write ``array`` as ``.npy`` (no pickles) under this rank's ``name``."""
        with open(self.path(name + ".npy"), "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    def save_json(self, name: str, obj) -> None:
        self.path(name + ".json").write_text(json.dumps(obj))


def shard_file(workdir: Path, rank: int, name: str) -> Path:
    """Rank ``rank``'s file ``name`` in the scratch folder ``workdir``."""
    return Path(workdir) / f"rank{rank:04d}-{name}"


def load_shards(workdir: Path, name: str, world_size: int) -> list[np.ndarray]:
    """The arrays every rank saved under ``name``, in rank order."""
    return [np.load(shard_file(workdir, r, name + ".npy"), allow_pickle=False) for r in range(world_size)]


def load_shard_json(workdir: Path, name: str, world_size: int) -> list:
    return [json.loads(shard_file(workdir, r, name + ".json").read_text()) for r in range(world_size)]


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


@contextlib.contextmanager
def shard_dir() -> Iterator[Path]:
    """A temporary scratch folder for the ranks' shard files (in the system's temporary
    folder, never inside a DVC output), removed afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="sea-shards-") as d:
        yield Path(d)


def _user_errors() -> tuple[type[BaseException], ...]:
    return ConfigError, DataError, FetchError


def _worker(rank: int, fn: Callable, args: tuple, world_size: int, port: int, device: str, workdir: str) -> None:
    """Body of one spawned rank: set it up as its parent (kernels, threads), join the group,
    run ``fn``, record a failure for the parent."""
    runtime.start_worker()  # before torch computes: the parent's compute.kernels and threads
    import torch
    import torch.distributed as dist

    ctx = RankContext(rank, world_size, rank_device(device, rank), Path(workdir))
    try:
        if ctx.device.startswith("cuda"):
            torch.cuda.set_device(ctx.device)
        store = dist.TCPStore("127.0.0.1", port, world_size + 1, is_master=False, timeout=TIMEOUT)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)
        fn(ctx, *args)
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        # recorded before this rank's connections drop: the other ranks' errors that this
        # causes ("connection reset by peer") come later, and the parent reports the first
        at = time.time_ns()
        user = isinstance(e, _user_errors())
        if not user:
            traceback.print_exc()
        ctx.save_json("error", {"type": type(e).__name__, "user_error": user, "message": str(e), "at": at})
        sys.stderr.flush()
        os._exit(1)  # no atexit/teardown work that could wait for the other ranks


def _raise_failure(workdir: Path, world_size: int, exc: BaseException) -> None:
    """Turn a failed spawn into one exception naming the (first) failed rank."""
    errors = {}
    for r in range(world_size):
        f = shard_file(workdir, r, "error.json")
        if f.exists():
            errors[r] = json.loads(f.read_text())
    if errors:
        rank, err = min(errors.items(), key=lambda item: (item[1]["at"], item[0]))  # the first to fail
        message = f"rank {rank} of {world_size} failed: {err['message']}"
        if err["user_error"]:
            for cls in _user_errors():
                if cls.__name__ == err["type"]:
                    raise cls(message) from None
        raise RankFailed(
            f"rank {rank} of {world_size} failed with {err['type']}: {err['message']} (its traceback is above)"
        ) from None
    rank = getattr(exc, "error_index", "?")
    how = (
        f"was killed by {exc.signal_name}"
        if getattr(exc, "signal_name", None)
        else f"exited with status {getattr(exc, 'exit_code', '?')}"
    )
    raise RankFailed(f"rank {rank} of {world_size} {how} (out of memory?) before reporting an error") from None


def launch(n: int, fn: Callable, args: tuple = (), *, workdir: Path, device: str = "cpu") -> None:
    """Run ``fn(ctx, *args)`` in ``n`` spawned ranks and wait for all of them.

    Args:
        n: number of ranks (>= 1; 1 still spawns one process).
        fn: a module-level function (the ``spawn`` start method pickles it by name).
        args: extra arguments (picklable) passed to every rank.
        workdir: the scratch folder (see :func:`shard_dir`) where ranks write their files.
        device: ``cpu`` or ``cuda``: rank ``r`` gets ``cuda:r`` on CUDA.

    Each rank computes with this process's kernels and shares the cores with the other
    ranks (:mod:`sea.runtime`); this process, only waiting, counts itself out meanwhile.

    The ranks join one ``gloo`` process group (it runs on the CPU and beside CUDA).

    Raises the rank's own DataError/FetchError/ConfigError, or :class:`RankFailed`,
    with a one-line message naming the rank; the other ranks are terminated first.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if n < 1:
        raise ValueError(f"need at least one rank, got {n}")
    # the parent hosts the rendezvous store on a free port it already holds (no port race)
    store = dist.TCPStore("127.0.0.1", 0, n + 1, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    # torch logs "Terminating process ..." for the ranks it stops after a failure; the
    # exception raised here already says which rank failed
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        with runtime.waiting():
            mp.start_processes(
                _worker, args=(fn, args, n, store.port, device, str(workdir)), nprocs=n, join=True, start_method="spawn"
            )
    except ProcessException as e:
        _raise_failure(Path(workdir), n, e)
    finally:
        spawn_log.setLevel(level)
        del store
