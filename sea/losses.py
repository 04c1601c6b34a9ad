"""Losses: the ranking loss every model trains with (``loss.kind``: BPR), and SEA's: the
CLUB mutual-information upper bound (with its variational estimator), the ℓ2 distance
alternative, and Solosim (InfoNCE between generic parts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking (Rendle et al., 2009) with N negatives per positive:
    the mean over rows and negatives of −log σ(⟨u, i⁺⟩ − ⟨u, i⁻ₙ⟩).

    Args:
        user, pos: ``[B, d]``.
        neg: ``[B, N, d]`` (or ``[B, d]`` for one negative).
    """
    if neg.dim() == 2:
        neg = neg.unsqueeze(1)
    pos_score = (user * pos).sum(-1)  # [B]
    neg_score = torch.einsum("bd,bnd->bn", user, neg)  # [B, N]
    return -F.logsigmoid(pos_score.unsqueeze(1) - neg_score).mean()


def ranking_loss(kind: str, user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The ranking loss ``loss.kind`` names, on a batch's user ``[B, d]``, positive item
    ``[B, d]`` and negative item ``[B, N, d]`` vectors."""
    if kind == "bpr":
        return bpr_loss(user, pos, neg)
    raise ValueError(f"unknown ranking loss {kind!r}")  # config validation rules this out


def solosim_loss(anchor: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE in one direction: row i of ``anchor`` must pick row i of ``other`` among all
    rows, by cosine similarity / ``temperature`` (cross-entropy, diagonal targets)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(other, dim=-1).T / temperature
    target = torch.arange(len(anchor), device=anchor.device)
    return F.cross_entropy(logits, target)


def l2_distance_loss(generic: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
    """The 'distance' alternative to CLUB: minus the mean squared ℓ2 distance between the
    L2-normalised generic and unique parts (minimising it pushes them apart, bounded)."""
    return -(F.normalize(generic, dim=-1) - F.normalize(unique, dim=-1)).pow(2).sum(-1).mean()


class CLUBEstimator(nn.Module):
    """Variational q(y | x) = N(μ(x), diag exp(logvar(x))) for the CLUB bound
    (Cheng et al., 2020).

    It is fitted by maximising :meth:`log_likelihood` on (x, y) pairs with its own
    optimiser; :meth:`bound` then estimates an upper bound of I(x; y) on those pairs.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim), nn.Tanh()
        )

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over rows of log q(y_i | x_i), up to the constant −(d/2)·log 2π."""
        mu, logvar = self.mu(x), self.logvar(x)
        return (-0.5 * ((y - mu) ** 2 / logvar.exp() + logvar)).sum(-1).mean()

    def bound(self, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        """CLUB estimate: mean log q(y_i|x_i) − mean log q(y_π(i)|x_i), π a random permutation."""
        if perm is None:
            perm = torch.randperm(len(y), device=y.device)
        mu, logvar = self.mu(x), self.logvar(x)
        var = logvar.exp()
        positive = -0.5 * ((y - mu) ** 2 / var).sum(-1)
        negative = -0.5 * ((y[perm] - mu) ** 2 / var).sum(-1)
        return (positive - negative).mean()

    def fit(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int) -> float:
        """Take ``steps`` optimiser steps maximising log q(y|x) on fixed (detached) pairs;
        return the last log-likelihood."""
        return fit_estimators({"": (self, x, y)}, optimizer, steps)[""]


def fit_estimators(
    jobs: dict[str, tuple[CLUBEstimator, torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> dict[str, float]:
    """Fit several estimators at once, each on its own fixed (x, y) pairs.

    Their parameters are disjoint and their losses separate, so one backward pass and one
    optimiser step on the summed loss give each estimator exactly the update it would get
    alone, with half the steps' overhead for two modalities.
    """
    jobs = {k: (est, x.detach(), y.detach()) for k, (est, x, y) in jobs.items()}
    lls = {k: torch.tensor(float("nan")) for k in jobs}
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        lls = {k: est.log_likelihood(x, y) for k, (est, x, y) in jobs.items()}
        (-torch.stack(list(lls.values())).sum()).backward()
        optimizer.step()
    return {k: float(v.detach()) for k, v in lls.items()}
