"""Training on several processes with ``torch.distributed``, launched by torchrun.

Read top to bottom: :func:`launched` and :func:`world` say whether this process is one
rank of a torchrun launch and which; :func:`launch` starts ``torchrun --standalone
--nproc_per_node N <script>`` from inside a stage (in process, through
``torch.distributed.run``) and turns a failed rank into one line; :func:`process_group`
joins the launch's process group (NCCL on CUDA, one GPU per local rank; gloo on the CPU)
for the duration of a ``with`` block; the collectives the trainer needs come last.

Nothing here knows about models: the trainer (:mod:`sea.train`) decides what is reduced.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from sea.config import ConfigError

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
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)


def launched() -> bool:
    """Whether this process was started by torchrun (which sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def world() -> World:
    """This process's :class:`World`: from the initialised process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launch(script: str, nprocs: int, args: Iterable[str] = (), prefix: str = "torchrun") -> int:
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
        print(f"{prefix}: rank {rank} of {nprocs} failed with exit status {failure.exitcode}{signal} "
              f"(its message is above); the other ranks were stopped", file=sys.stderr)
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
    if not launched():
        yield World(), device
        return
    size, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if size != processes:
        raise ConfigError(f"params.yaml [train]: processes is {processes} but torchrun started {size} "
                          f"processes (nnodes × nproc_per_node); make them equal")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"params.yaml [train]: local rank {local_rank} needs a GPU, and this machine "
                              f"has {torch.cuda.device_count()}: start at most that many processes per machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield world(), device
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ collectives


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (every rank gets the same bits)."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks, in one collective.

    A parameter no rank gave a gradient keeps ``grad = None`` (so Adam skips it, as in a
    single process); one that some ranks did not reach counts as zero on those ranks.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = all_reduce_sum_(torch.cat([g.reshape(-1) for g in grads] + [has_grad]))
    size, offset, counts = dist.get_world_size(), 0, flat[-len(params):]
    for p, count in zip(params, counts.tolist(), strict=True):
        n = p.numel()
        if count > 0:
            p.grad = (flat[offset:offset + n] / size).view_as(p).clone()
        offset += n


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():  # one collective per dtype
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_flag(flag: bool, device: torch.device, src: int = 0) -> bool:
    """Rank ``src``'s ``flag`` on every rank (e.g. rank 0's early-stopping decision)."""
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src)
    return bool(t.item())
