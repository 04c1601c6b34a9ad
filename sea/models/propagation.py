"""LightGCN-style propagation, written once for every model that propagates over the
user–item graph (LightGCN, FREEDOM, SEA, LIRDRec, …).

Node vectors ``x`` (users ``[0, U)`` then items) take ``layers`` weightless hops over a
fixed normalised adjacency Â (:func:`~sea.models.graphs.spmm`), and the layers
x, Âx, …, Âᴸx are combined by their sum or their mean.

**Divided among ranks** (``train.partition_graph``, docs/distributed.md): inside
:meth:`GraphPartition.active` on rank ``r`` of ``n`` training processes, each hop multiplies
only rank ``r``'s contiguous block of Â's rows (blocks of near-equal non-zeros) and the
blocks are all-gathered, so every rank ends each hop with the whole Âˡx while the sparse
products' work is divided by ``n``. The backward pass sums the ranks' output gradients
(one all-reduce), then runs the same hops backwards over Âᵀ's row blocks. The values are a
single process's (each row is the same sum in the same order); the gradient differs from
one process's only in rounding, and each rank returns its own rows of it, so the mean of
the ranks' gradients that DDP takes (:func:`sea.distributed.average_gradients`) is the
gradient of the whole objective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sea.errors import ConfigError
from sea.models.graphs import spmm


@dataclass
class GraphPartition:
    """Rank ``rank`` of ``size`` training processes dividing the propagation's hops.

    ``hops`` counts the hops that went through :func:`propagate` while active (0 after a
    training step: the model has no such hop to divide); ``model`` names the model in
    that refusal."""

    rank: int
    size: int
    model: str
    hops: int = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[GraphPartition]:
        """Divide :func:`propagate`'s hops among the ranks for the block (every rank must run
        the same propagations in it); refuse a model that made none (ConfigError)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
        if self.hops == 0:
            raise ConfigError(
                f"params.yaml [train]: partition_graph divides the hops of the shared propagation over the "
                f"user–item graph, and model {self.model} makes none in training; set partition_graph: false"
            )


#: The partition the current training step propagates under (None: every rank propagates
#: the whole graph, and evaluation always does).
_ACTIVE: ContextVar[GraphPartition | None] = ContextVar("sea_graph_partition", default=None)


def propagate(
    adj: torch.Tensor, x: torch.Tensor, layers: int, mean: bool = False, transpose: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_{l=0}^{L} Âˡx, or with ``mean`` that sum / (L + 1) (LightGCN's layer mean).

    Args:
        adj: the normalised adjacency Â, ``[N, N]`` sparse CSR (symmetric unless
            ``transpose`` is given: see :func:`spmm`).
        x: layer 0, ``[N, d]`` (the same on every rank when divided).
        layers: L, the number of hops (0: ``x`` itself, or ``x / 1`` with ``mean``).
        transpose: Âᵀ for an ``adj`` that is not symmetric (SelfCF's edge dropout), or None.
    """
    partition = _ACTIVE.get()
    if partition is not None:
        partition.hops += layers
        if partition.size > 1 and layers > 0:
            block = RowBlock.of(adj, partition)
            block_t = block if transpose is None else RowBlock.of(transpose, partition)
            out = _DividedHops.apply(x, block, block_t, layers)
            return out / (layers + 1) if mean else out
    out = x
    for _ in range(layers):
        x = spmm(adj, x, transpose)
        out = out + x
    return out / (layers + 1) if mean else out


@dataclass(frozen=True)
class RowBlock:
    """Rank ``rank``'s rows ``[bounds[rank], bounds[rank + 1])`` of a square CSR matrix
    (a view of its columns and values), with every rank's ``bounds``."""

    matrix: torch.Tensor  # [rows of this rank, N] CSR
    bounds: tuple[int, ...]  # size + 1 row bounds, 0 … N
    rank: int

    @classmethod
    def of(cls, matrix: torch.Tensor, partition: GraphPartition) -> RowBlock:
        bounds = balanced_rows(matrix.crow_indices(), partition.size)
        return cls(row_slice(matrix, bounds[partition.rank], bounds[partition.rank + 1]), bounds, partition.rank)

    @property
    def rows(self) -> slice:
        return slice(self.bounds[self.rank], self.bounds[self.rank + 1])

    def hop(self, x: torch.Tensor) -> torch.Tensor:
        """The whole ``matrix @ x`` on every rank: this rank's rows, all-gathered."""
        return all_gather_rows(torch.sparse.mm(self.matrix, x), self.bounds)


def balanced_rows(crow: torch.Tensor, size: int) -> tuple[int, ...]:
    """``size + 1`` row bounds cutting a CSR matrix (its ``crow`` indices) into contiguous
    blocks of near-equal non-zeros (a bipartite graph's user and item rows hold the same
    non-zeros but not the same number of rows). Decided by the matrix alone: every rank
    computes the same bounds."""
    n, nnz = len(crow) - 1, int(crow[-1])
    targets = torch.tensor([nnz * r // size for r in range(1, size)], dtype=crow.dtype, device=crow.device)
    inner = torch.searchsorted(crow, targets).clamp(0, n).tolist()
    return (0, *inner, n)


def row_slice(matrix: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a CSR matrix, as a CSR matrix (its columns and values are
    views; only the row pointers are new)."""
    crow = matrix.crow_indices()
    lo, hi = crow[start].item(), crow[stop].item()
    return torch.sparse_csr_tensor(
        crow[start : stop + 1] - lo,
        matrix.col_indices()[lo:hi],
        matrix.values()[lo:hi],
        (stop - start, matrix.shape[1]),
    )


def all_gather_rows(block: torch.Tensor, bounds: tuple[int, ...]) -> torch.Tensor:
    """Every rank's row block, in rank order: ``[N, d]`` on every rank. The blocks are padded
    to the longest (a collective gathers equal shapes) into one tensor (several times faster
    on gloo than a list of tensors)."""
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    longest = max(sizes)
    padded = block.new_zeros((longest, *block.shape[1:]))
    padded[: len(block)] = block
    gathered = block.new_empty((len(sizes) * longest, *block.shape[1:]))
    _all_gather_single(gathered, padded)
    return torch.cat([gathered[r * longest : r * longest + s] for r, s in enumerate(sizes)])


#: newer torch calls it all_gather_single (and deprecates the older name, which torch 2.4 has)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _DividedHops(torch.autograd.Function):
    """Σ_{l=0}^{L} Âˡx with each hop's rows divided among the ranks (see the module)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: RowBlock, block_t: RowBlock, layers: int) -> torch.Tensor:
        ctx.block_t, ctx.layers = block_t, layers
        out = x
        for _ in range(layers):
            x = block.hop(x)
            out = out + x
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # the objective is the sum of the ranks' objectives: its gradient g is the sum of theirs
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        block_t = ctx.block_t
        h = g  # ∂/∂(Âˡx) = g + Âᵀ ∂/∂(Âˡ⁺¹x), from l = L down
        for _ in range(ctx.layers - 1):
            h = g + block_t.hop(h)
        # ∂/∂x = g + Âᵀh: this rank's rows only (the ranks' gradients are summed by DDP's mean)
        dx = torch.zeros_like(g)
        dx[block_t.rows] = g[block_t.rows] + torch.sparse.mm(block_t.matrix, h)
        return dx, None, None, None
