"""Where a training batch's negatives come from (``train.sampler``).

:class:`UniformNegatives` draws ``train.negatives`` item ids per positive, uniformly among
the items the user has not trained on (every sampler uses it); :class:`CrossBatchMemory`
(``cross_batch``, CBNS) also keeps the item vectors of recent batches, which the softmax
loss (:class:`sea.losses.RankingLoss`) takes as extra negatives.
"""

from __future__ import annotations

from collections import deque

import torch

#: Where ``train.sampler`` takes negatives from: ``uniform`` draws ``train.negatives`` item
#: ids per positive; ``cross_batch`` (CBNS) also keeps a memory of recent batches' item
#: vectors as extra negatives of the softmax loss.
SAMPLERS = ("uniform", "cross_batch")


class UniformNegatives:
    """Negatives drawn uniformly from the items a user has *not* trained on (seeded).

    Exact, one draw, no rejection loop: a user's ``r``-th non-positive item (0-based) is
    ``r + #{k : p_k − k ≤ r}`` for the user's sorted positives ``p_0 < p_1 < …``; the
    shifted values ``p_k − k`` of all users are kept in one sorted array (offset by
    ``user · n_items``) so a batch is answered with one ``searchsorted``.
    A user who trained on every item has no negative; it gets item ``n_items − 1``.
    """

    def __init__(
        self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, generator: torch.Generator
    ):
        self.n_items, self.generator = n_items, generator
        key = torch.unique(users * n_items + items)  # sorted, duplicates dropped
        u, i = key // n_items, key % n_items
        degree = torch.bincount(u, minlength=n_users)
        self.first = torch.cumsum(degree, 0) - degree  # index of each user's first positive
        rank = torch.arange(len(key), device=key.device) - self.first[u]
        self.shifted = u * n_items + (i - rank)  # non-decreasing
        self.n_free = (n_items - degree).clamp(min=1)

    def nth_negative(self, users: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The ``r``-th (0-based) item each user has not trained on; ``r`` is ``[B, n]``."""
        u = users.unsqueeze(1)
        below = torch.searchsorted(self.shifted, u * self.n_items + r, right=True) - self.first[u]
        return (r + below).clamp(max=self.n_items - 1)

    def __call__(self, users: torch.Tensor, n: int = 1) -> torch.Tensor:
        """``[len(users), n]`` negatives for ``users``."""
        g = self.generator
        uniform = torch.rand(len(users), n, generator=g, device=g.device, dtype=torch.float64)
        n_free = self.n_free[users].unsqueeze(1)
        r = torch.minimum((uniform * n_free).long(), n_free - 1)
        return self.nth_negative(users, r)


class CrossBatchMemory:
    """CBNS's first-in-first-out memory (Wang, Zhu and He, "Cross-Batch Negative Sampling
    for Training Two-Tower Recommenders", SIGIR 2021): the item vectors encoded in the last
    ``n_batches`` training steps (the batches' positives), detached, with their item ids.

    :meth:`negatives` serves them, oldest first, once ``warmup_steps`` steps have been
    pushed (before that the encoders still move too fast for old vectors to be good
    negatives, and it serves nothing); with ``n_batches = 0`` it never holds anything.
    """

    def __init__(self, n_batches: int, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.batches: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_batches)
        self.steps = 0

    def push(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Enqueue one step's item ids ``[b]`` and vectors ``[b, d]`` (the oldest step leaves);
        stored as detached copies, so later updates of the model never reach them."""
        self.batches.append((ids.detach().clone(), vectors.detach().clone()))
        self.steps += 1

    def entries(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(ids ``[K]``, vectors ``[K, d]``) of every stored step, oldest first; None if empty."""
        if not self.batches:
            return None
        ids, vectors = zip(*self.batches, strict=True)
        return torch.cat(ids), torch.cat(vectors)

    def negatives(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`entries` once the warm-up is over, else None."""
        return self.entries() if self.steps >= self.warmup_steps else None
