"""A trained model's ranking on a split: :func:`embed` computes every user and item vector
in eval mode, :func:`score_fn` scores users against every item from them, and
:func:`evaluate` / :func:`evaluate_per_user` turn those scores into the full-ranking
metrics of :mod:`sea.metrics` (training items masked). The trainer validates with
:func:`evaluate`; the evaluate stage and :mod:`sea.recommend` use the same functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sea.batch import Embeddings
from sea.metrics import evaluate_ranking, per_user_metrics
from sea.models.base import GraphData, Recommender


@torch.no_grad()
def embed(model: Recommender, data: GraphData) -> Embeddings:
    """All user and item vectors, recomputed in eval mode (unit vectors for a model marked
    ``rank_by_cosine`` by :func:`sea.train.build_model`)."""
    model.eval()
    emb = model(data)
    if getattr(model, "rank_by_cosine", False):
        emb = Embeddings(F.normalize(emb.user, dim=1), F.normalize(emb.item, dim=1), emb.extras)
    return emb


def score_fn(model: Recommender, emb: Embeddings) -> Callable[[torch.Tensor], torch.Tensor]:
    """``users -> [len(users), n_items]`` scores from precomputed embeddings."""
    device = emb.user.device
    return lambda users: model.score(emb, users.to(device))


def evaluate(
    model: Recommender,
    data: GraphData,
    split: str,
    ks: list[int],
    batch_size: int = 4096,
    emb: Embeddings | None = None,
) -> dict[str, float]:
    """Mean full-ranking metrics on ``split`` ('valid' or 'test'), masking training items
    only. ``emb``: embeddings from :func:`embed` to reuse (computed when absent)."""
    emb = embed(model, data) if emb is None else emb
    return evaluate_ranking(score_fn(model, emb), data.csr["train"], data.csr[split], data.n_items, ks, batch_size)


def evaluate_per_user(
    model: Recommender, data: GraphData, split: str, ks: list[int], batch_size: int, emb: Embeddings
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`evaluate`, one value per user (see :func:`sea.metrics.per_user_metrics`)."""
    return per_user_metrics(score_fn(model, emb), data.csr["train"], data.csr[split], data.n_items, ks, batch_size)
