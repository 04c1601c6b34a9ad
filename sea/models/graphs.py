"""Fixed graphs SEA propagates over, built once per run as sparse CSR tensors."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

# torch marks sparse CSR as beta and warns on every construction; the ops we use are stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _sym_normalize(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 as an (n, n) CSR tensor; isolated nodes keep zero rows."""
    deg = torch.zeros(n, dtype=vals.dtype).index_add_(0, rows, vals)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    vals = inv_sqrt[rows] * vals * inv_sqrt[cols]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce()
    return coo.to_sparse_csr()


def user_item_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Symmetrically normalised bipartite adjacency over users [0, U) then items [U, U+I).

    No self-loops; duplicate pairs count once.
    """
    pairs = np.unique(np.stack([users, items + n_users]), axis=1)
    u = torch.as_tensor(pairs[0], dtype=torch.long)
    i = torch.as_tensor(pairs[1], dtype=torch.long)
    rows = torch.cat([u, i])
    cols = torch.cat([i, u])
    return _sym_normalize(rows, cols, torch.ones(len(rows)), n_users + n_items)


def knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetrically normalised item–item graph: each item linked to its top-``k`` cosine
    neighbours (itself excluded), as an (n, n) CSR tensor."""
    n = features.shape[0]
    k = min(k, n - 1)
    x = F.normalize(features.float(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    nbrs = sim.topk(k, dim=1).indices
    rows = torch.arange(n).repeat_interleave(k)
    cols = nbrs.reshape(-1)
    return _sym_normalize(rows, cols, torch.ones(len(rows)), n)


def item_item_graph(features: dict[str, torch.Tensor], k: int, image_weight: float) -> torch.Tensor:
    """kNN graph per modality, combined as ``image_weight``·image + (1 − image_weight)·text.

    With a single modality its graph is used alone.
    """
    graphs = {m: knn_graph(x, k).to_sparse_coo() for m, x in features.items()}
    if len(graphs) == 1:
        return next(iter(graphs.values())).to_sparse_csr()
    weights = {"image": image_weight, "text": 1.0 - image_weight}
    combined = weights["image"] * graphs["image"] + weights["text"] * graphs["text"]
    return combined.coalesce().to_sparse_csr()


class _FixedSparseMM(torch.autograd.Function):
    """``matrix @ x`` for a fixed (non-trainable) sparse matrix whose transpose is known:
    the backward multiplies by ``transpose`` instead of transposing ``matrix`` again at
    every step (for CSR that is a sort of all its entries)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.transpose, grad)


def spmm(matrix: torch.Tensor, x: torch.Tensor, transpose: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix @ x`` for a fixed sparse ``matrix``, differentiable in ``x``; ``transpose``
    is ``matrixᵀ``, or None for a symmetric matrix (the normalised user–item adjacency,
    whose entries 1/√(d_u d_i) are exactly symmetric). The same value and gradient as
    ``torch.sparse.mm``, faster forward + backward (``bench/sparse_speed.py``)."""
    return _FixedSparseMM.apply(matrix, matrix if transpose is None else transpose, x)


class FrozenGraph(torch.nn.Module):
    """A fixed sparse matrix a model holds (an item–item graph, a pruned adjacency).

    Kept as its CSR parts in non-persistent buffers: it follows the model's ``.to()``,
    deep-copies, and stays out of the state dict (the model's ``build`` rebuilds it).
    """

    def __init__(self, matrix: torch.Tensor, symmetric: bool = False):
        super().__init__()
        self.symmetric = symmetric
        for suffix, m in [("", matrix)] + ([] if symmetric else [("_t", matrix.t())]):
            csr = m.to_sparse_csr()  # the transpose once here, not in every backward pass
            self.register_buffer(f"crow{suffix}", csr.crow_indices(), persistent=False)
            self.register_buffer(f"col{suffix}", csr.col_indices(), persistent=False)
            self.register_buffer(f"values{suffix}", csr.values(), persistent=False)
        self.shape = tuple(matrix.shape)

    @property
    def matrix(self) -> torch.Tensor:
        """The matrix as a CSR tensor (a view of the buffers, no copy)."""
        return torch.sparse_csr_tensor(self.crow, self.col, self.values, self.shape)

    @property
    def transpose(self) -> torch.Tensor:
        """The transposed matrix as a CSR tensor (the matrix itself when symmetric)."""
        if self.symmetric:
            return self.matrix
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, self.values_t, self.shape[::-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The product ``matrix @ x`` (see :func:`spmm`)."""
        return spmm(self.matrix, x, self.transpose)
