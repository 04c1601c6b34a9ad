"""Full-ranking top-K metrics.

Every item is a candidate except the user's own training items (valid items stay
candidates when testing, as in the MMRec protocol). Relevance is binary. Each metric is
averaged over the users with at least one held-out item:

- recall@K    = hits in the top K / number of the user's held-out items
- precision@K = hits in the top K / K
- hit@K       = 1 if any held-out item is in the top K
- ndcg@K      = Σ_{r≤K} rel_r / log2(r + 1), divided by its ideal value (min(n, K) hits first)
- map@K       = Σ_{r≤K} rel_r · precision@r / min(n, K)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

METRICS = ("recall", "ndcg", "precision", "map", "hit")


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


def _csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, n_cols: int) -> torch.Tensor:
    """Dense 0/1 [len(rows), n_cols] matrix of the given CSR rows."""
    dense = torch.zeros(len(rows), n_cols, dtype=torch.bool)
    for r, row in enumerate(rows):
        dense[r, indices[indptr[row]:indptr[row + 1]]] = True
    return dense


def to_csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the user → items lists, items sorted within each user."""
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.add.at(indptr, users + 1, 1)
    return np.cumsum(indptr), items.astype(np.int64)


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    exclude: tuple[np.ndarray, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
    n_items: int,
    ks: list[int],
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean of each metric over users with held-out items.

    ``score_fn(users) -> [len(users), n_items]`` scores; ``exclude`` and ``truth`` are CSR
    (indptr, indices) per user: the items to mask (training) and the held-out items.
    """
    t_ptr, t_idx = truth
    n_rel_all = np.diff(t_ptr)
    users = np.flatnonzero(n_rel_all > 0)
    k_max = min(max(ks), n_items)
    sums: dict[str, float] = {}
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = score_fn(torch.as_tensor(batch)).float()
        mask = _csr_rows(*exclude, batch, n_items).to(scores.device)
        scores = scores.masked_fill(mask, -torch.inf)
        top = scores.topk(k_max, dim=1).indices.cpu()
        relevant = _csr_rows(t_ptr, t_idx, batch, n_items)
        hits = relevant.gather(1, top)
        per_user = metrics_from_hits(hits, torch.as_tensor(n_rel_all[batch]), ks)
        for name, values in per_user.items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    n = max(len(users), 1)
    ordered = [f"{m}@{k}" for m in METRICS for k in ks]
    return {name: sums.get(name, 0.0) / n for name in ordered} | {"users": int(len(users))}
