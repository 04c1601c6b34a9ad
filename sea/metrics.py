"""Full-ranking top-K metrics.

Every item is a candidate except the user's own training items (valid items stay
candidates when testing, as in the MMRec protocol). Relevance is binary. Each metric is
averaged over the users with at least one held-out item:

- recall@K    = hits in the top K / number of the user's held-out items
- precision@K = hits in the top K / K
- hit@K       = 1 if any held-out item is in the top K
- ndcg@K      = Σ_{r≤K} rel_r / log2(r + 1), divided by its ideal value (min(n, K) hits first)
- map@K       = Σ_{r≤K} rel_r · precision@r / min(n, K)

The ``eval`` section (:class:`EvalConfig`) says which K and which metric selects the best
epoch on validation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sea.config import Section, require
from sea.errors import shown

METRICS = ("recall", "ndcg", "precision", "map", "hit")


@dataclass
class EvalConfig(Section):
    """params.yaml [eval]: the cut-offs K of every metric, the validation metric that
    selects the best epoch (``select``), and how many users are scored at once."""

    topk: list[int] = field(default_factory=lambda: [10, 20])
    select: str = "recall@20"
    batch_size: int = 4096
    # a bound on the scores held at once: with n items, at most memory_mib MiB / (4 n) users
    # are scored per chunk (None: batch_size users); the same ranking (docs/scale.md)
    memory_mib: int | None = None

    def chunk(self, n_items: int) -> int:
        """Users scored at once against all ``n_items``: ``batch_size``, or fewer where
        ``memory_mib`` bounds their float32 scores (one user at least)."""
        if self.memory_mib is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.memory_mib * 2**20 // (4 * max(n_items, 1))))

    def to_dict(self) -> dict:
        """The section's values, ``memory_mib`` only when set: a run without it keeps the
        checkpoint bytes (the checkpoint stores these params) it had before it existed."""
        values = super().to_dict()
        if self.memory_mib is None:
            del values["memory_mib"]
        return values

    def validate(self, section: str) -> None:
        require(len(self.topk) > 0 and all(k > 0 for k in self.topk), section, "topk must be positive")
        require(len(set(self.topk)) == len(self.topk), section, "topk must not repeat")
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        require(
            self.memory_mib is None or self.memory_mib >= 1,
            section,
            f"memory_mib must be null or >= 1, got {shown(self.memory_mib)}",
        )
        metric, _, k = self.select.partition("@")
        require(
            metric in METRICS and re.fullmatch(r"[0-9]{1,9}", k) is not None,
            section,
            f"select must look like recall@20, got {shown(self.select)}",
        )
        require(
            int(k) in self.topk,
            section,
            f"select {shown(self.select)} needs {k} in topk {shown(self.topk)} "
            f"(metrics are computed at those cut-offs)",
        )


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics from a [users, K_max] 0/1 matrix of hits in ranked order.

    Returns ``{"recall@10": tensor[users], ...}``.
    """
    hits = hits.float()
    n_rel = n_relevant.float()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    prec_at_r = cum_hits / ranks
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        ideal_n = torch.clamp(n_rel, max=min(k, hits.shape[1]))
        idcg = torch.cumsum(discount[:k], 0)[ideal_n.long() - 1]
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"precision@{k}"] = n_hit / k
        out[f"hit@{k}"] = (n_hit > 0).float()
        out[f"ndcg@{k}"] = (h * discount[:k]).sum(1) / idcg
        out[f"map@{k}"] = (h * prec_at_r[:, :k]).sum(1) / ideal_n
    return out


def _csr_entries(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in ``rows``, column) of every entry of the given CSR rows, row by row,
    columns in CSR order: the sparse form of those rows, never ``len(rows) × n_cols``."""
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    offsets = np.cumsum(lens) - lens  # where each row's entries start in the flat list
    flat = np.arange(int(lens.sum())) - np.repeat(offsets, lens) + np.repeat(starts, lens)
    return torch.as_tensor(np.repeat(np.arange(len(rows)), lens)), torch.as_tensor(indices[flat])


def _in_csr_rows(
    indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, n_cols: int, cols: torch.Tensor
) -> torch.Tensor:
    """``[len(rows), m]`` bool: whether ``cols[r, j]`` is an entry of CSR row ``rows[r]``,
    by one sorted search over (row, column) keys (each row's columns are sorted)."""
    row, col = _csr_entries(indptr, indices, rows)
    keys = row * n_cols + col  # ascending: rows in order, columns sorted within each row
    query = torch.arange(len(rows)).unsqueeze(1) * n_cols + cols
    at = torch.searchsorted(keys, query).clamp(max=max(len(keys) - 1, 0))
    return keys[at] == query if len(keys) else torch.zeros(query.shape, dtype=torch.bool)


def to_csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the user → items lists, items sorted within each user."""
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.add.at(indptr, users + 1, 1)
    return np.cumsum(indptr), items.astype(np.int64)


@torch.no_grad()
def top_k(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    exclude: tuple[np.ndarray, np.ndarray],
    users: np.ndarray,
    n_items: int,
    k: int,
    batch_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items of each of ``users`` and their scores, ``[len(users), k]`` each,
    on the CPU, best first; each user's ``exclude`` items (CSR) are masked with −inf
    (they come last, with score −inf, only when fewer than ``k`` items remain).

    Memory: ``batch_size`` users are scored at a time, against every item, and only their
    top ``k`` are kept, so at most ``batch_size × n_items`` float32 scores are held
    (masked in place) plus the results; never ``len(users) × n_items``
    (:meth:`EvalConfig.chunk` sizes the chunk from a memory bound)."""
    k = min(k, n_items)
    items, scores = [], []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        s = score_fn(torch.as_tensor(batch)).float()
        if s._base is not None or not s.is_contiguous():  # a view (e.g. expanded): mask a copy, never its base
            s = s.contiguous() if not s.is_contiguous() else s.clone()
        row, col = _csr_entries(*exclude, batch)
        s[row.to(s.device), col.to(s.device)] = -torch.inf
        top = s.topk(k, dim=1)
        items.append(top.indices.cpu())
        scores.append(top.values.cpu())
    if not items:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(items), torch.cat(scores)


def per_user_metrics(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    exclude: tuple[np.ndarray, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
    n_items: int,
    ks: list[int],
    batch_size: int = 4096,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each metric for each user with at least one held-out item.

    ``score_fn(users) -> [len(users), n_items]`` scores; ``exclude`` and ``truth`` are CSR
    (indptr, indices) per user: the items to mask (training) and the held-out items.
    Returns the users (ascending) and ``{"recall@10": float64 [len(users)], ...}`` in the
    order of :data:`METRICS` then ``ks``.
    """
    t_ptr, t_idx = truth
    n_rel_all = np.diff(t_ptr)
    users = np.flatnonzero(n_rel_all > 0)
    top, _ = top_k(score_fn, exclude, users, n_items, max(ks), batch_size)
    values: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hits = _in_csr_rows(t_ptr, t_idx, batch, n_items, top[start : start + batch_size])
        for name, v in metrics_from_hits(hits, torch.as_tensor(n_rel_all[batch]), ks).items():
            values.setdefault(name, []).append(v)
    ordered = [f"{m}@{k}" for m in METRICS for k in ks]
    return users, {
        name: (torch.cat(values[name]).double().numpy() if name in values else np.zeros(0)) for name in ordered
    }


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    exclude: tuple[np.ndarray, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
    n_items: int,
    ks: list[int],
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean of each metric of :func:`per_user_metrics` over the users with held-out items,
    plus ``users``: how many there are."""
    users, values = per_user_metrics(score_fn, exclude, truth, n_items, ks, batch_size)
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()} | {"users": int(len(users))}
