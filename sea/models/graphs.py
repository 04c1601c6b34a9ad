"""Fixed graphs SEA propagates over, built once per run as sparse CSR tensors."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

# torch marks sparse CSR as beta and warns on every construction; the ops we use are stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def sym_normalize(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
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
    return sym_normalize(rows, cols, torch.ones(len(rows)), n_users + n_items)


#: Similarities held at once while building a kNN graph (floats): rows are taken in chunks
#: of ``KNN_CHUNK_ELEMENTS // n`` (a function of n alone, so every machine builds the same
#: graph); graphs of up to 4,096 items take one chunk.
KNN_CHUNK_ELEMENTS = 1 << 24


def knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetrically normalised item–item graph: each item linked to its top-``k`` cosine
    neighbours (itself excluded), as an (n, n) CSR tensor. The similarities are computed
    a chunk of rows at a time (at most ``KNN_CHUNK_ELEMENTS`` floats live at once, never n²)."""
    n = features.shape[0]
    nbrs, _ = knn_lists(features, k, max(1, KNN_CHUNK_ELEMENTS // n), exclude_self=True)
    k = nbrs.shape[1]
    rows = torch.arange(n).repeat_interleave(k)
    cols = nbrs.reshape(-1)
    return sym_normalize(rows, cols, torch.ones(len(rows)), n)


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


def knn_lists(x: torch.Tensor, k: int, chunk: int, *, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, cosines), each ``[n, k]``: every row's ``k`` most cosine-similar rows of
    ``x`` (itself included, as in MMRec, unless ``exclude_self``), by ``chunk`` rows of the
    similarity at a time (at most ``[chunk, n]`` floats live at once). No gradient."""
    n = x.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    parts = []
    with torch.no_grad():
        x = F.normalize(x.float(), dim=1)
        for s in range(0, n, chunk):
            sim = x[s : s + chunk] @ x.T
            if exclude_self:
                rows = torch.arange(sim.shape[0])
                sim[rows, rows + s] = -float("inf")
            parts.append(sim.topk(k, dim=1))
    return torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts])


def normalise_lists(neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weights of D^-1/2·S·D^-1/2 for the graph S whose row i has ``weights[i]`` at the
    columns ``neighbours[i]`` (repeats add up), D the row sums; a row summing to ≤ 0 gets
    factor 0."""
    degree = weights.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=torch.finfo(degree.dtype).tiny).rsqrt(), 0.0)
    return inv_sqrt.unsqueeze(1) * weights * inv_sqrt[neighbours]


def lists_mm(neighbours: torch.Tensor, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """S·h for the graph S given as neighbour lists (see :func:`normalise_lists`),
    differentiable in ``weights`` and ``h``."""
    return (weights.unsqueeze(-1) * h[neighbours]).sum(1)


# ------------------------------------------------------------------ user-user co-occurrence


def co_occurrence_topk(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, k: int, chunk_elements: int = 1 << 23
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each user's ``k`` users with the most items in common, as (rows, cols, counts): rows
    ascending, each row's neighbours by decreasing count, ties by increasing user id (so a
    tie at the k-th count goes to the lower ids). Users with no item in common, and the user
    itself, are left out.

    The counts are R·Rᵀ for the binary users × items matrix R of the distinct (user, item)
    pairs, computed for a block of users at a time (R times a dense block of Rᵀ's columns,
    at most ``chunk_elements`` counts held at once): exact integers whatever the order of
    the sums, so the graph does not depend on the thread count. Each count c of user v
    becomes the integer key c·U + (U − 1 − v), unique in its row, so that one top-k gives
    the order above.
    """
    k = min(k, n_users - 1)
    empty = torch.zeros(0, dtype=torch.long)
    if k <= 0 or len(users) == 0:
        return empty, empty, torch.zeros(0)
    if n_items >= 1 << 24:
        raise ValueError("co_occurrence_topk counts in float32: at most 2^24 items")
    key_type = torch.int32 if (n_items + 1) * n_users < 1 << 31 else torch.int64
    pairs = torch.unique(torch.stack([users.cpu(), items.cpu()]), dim=1)  # sorted by user
    r = torch.sparse_coo_tensor(pairs, torch.ones(pairs.shape[1]), (n_users, n_items)).coalesce().to_sparse_csr()
    user_ptr = torch.zeros(n_users + 1, dtype=torch.long)
    user_ptr[1:] = torch.bincount(pairs[0], minlength=n_users).cumsum(0)
    tie_break = torch.arange(n_users - 1, -1, -1, dtype=key_type)  # U - 1 - v
    step = max(1, chunk_elements // n_users)
    rows, cols, counts = [], [], []
    for start in range(0, n_users, step):
        stop = min(n_users, start + step)
        block = torch.zeros(n_items, stop - start)  # R[start:stop]ᵀ, dense
        lo, hi = user_ptr[start], user_ptr[stop]
        block[pairs[1][lo:hi], pairs[0][lo:hi] - start] = 1.0
        key = torch.sparse.mm(r, block).T.to(key_type)  # [stop - start, n_users]: items in common
        key[torch.arange(stop - start), torch.arange(start, stop)] = 0  # not oneself
        top = key.mul_(n_users).add_(tie_break).topk(k, dim=1).values
        count = torch.div(top, n_users, rounding_mode="floor")
        keep = count > 0
        rows.append(torch.arange(start, stop).unsqueeze(1).expand(-1, k)[keep])
        cols.append((n_users - 1 - (top - count * n_users))[keep].long())
        counts.append(count[keep].float())
    return torch.cat(rows), torch.cat(cols), torch.cat(counts)


def user_user_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, k: int) -> torch.Tensor:
    """DRAGON's user–user graph as a ``[n_users, n_users]`` CSR matrix: row u holds the
    softmax, over u's top-``k`` co-occurring users (:func:`co_occurrence_topk`), of their
    numbers of items in common with u; a user without any has an empty row."""
    rows, cols, counts = co_occurrence_topk(users, items, n_users, n_items, k)
    weights = torch.zeros_like(counts)
    if len(rows):
        # softmax per row, shifted by the row's largest count
        top = torch.zeros(n_users).scatter_reduce_(0, rows, counts, "amax", include_self=False)
        e = (counts - top[rows]).exp()
        total = torch.zeros(n_users).index_add_(0, rows, e)
        weights = e / total[rows]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (n_users, n_users)).coalesce()
    return coo.to_sparse_csr()


def optional_user_graph(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, k: int, device
) -> torch.Tensor | None:
    """:func:`user_user_graph` on ``device``, or None when ``k`` is 0 (no user graph)."""
    return user_user_graph(users, items, n_users, n_items, k).to(device) if k > 0 else None
