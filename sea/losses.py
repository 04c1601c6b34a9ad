"""Losses, in one place: the ``loss`` and ``club`` sections; the ranking losses a model
trains with (``loss.kind``: BPR; SimpleX's cosine contrastive loss, CCL; the in-batch
sampled softmax with its logQ correction, which CBNS extends) and :class:`RankingLoss`,
the one the trainer calls; the embedding penalty of BPR-MF, LightGCN and VBPR
(:func:`embedding_l2`); and SEA's: the CLUB mutual-information upper bound (with its
variational estimator), the ℓ2 distance alternative, and Solosim (InfoNCE between
generic parts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings
from sea.config import Section, require, require_choice
from sea.ops import full_mean, full_sum
from sea.samplers import CrossBatchMemory

#: The ranking losses ``loss.kind`` may name (see :class:`RankingLoss`), besides ``auto``
#: (the model's ``preferred_loss``: ccl for SimpleX, none for BM3 and SelfCF, bpr for every other
#: model). ``none``: no ranking term, the model's own terms are its whole objective (only
#: for a model whose ``preferred_loss`` is none).
RANKING_LOSSES = ("bpr", "ccl", "softmax", "none")
#: The ranking losses that compare cosines: a model trained with one ranks by cosine too.
COSINE_LOSSES = ("ccl", "softmax")

#: MMRec's BPR is in bits, the trainer's in nats: a model ported from MMRec scales its own
#: penalties by ln 2 to keep their ratio to the ranking loss.
LN2 = math.log(2.0)


@dataclass
class LossConfig(Section):
    """The ranking loss every model trains with (``kind``) and SEA's separation terms."""

    kind: str = "auto"
    club_weight: float = 0.006
    solosim_weight: float = 0.012
    temperature: float = 0.2
    distance: str = "club"
    # kind: ccl (SimpleX's cosine contrastive loss)
    ccl_margin: float = 0.9
    ccl_negative_weight: float = 150.0
    # kind: softmax (in-batch sampled softmax, + the CBNS memory with train.sampler: cross_batch)
    softmax_temperature: float = 0.1
    softmax_logq: bool = True

    def validate(self, section: str) -> None:
        require_choice(self.kind, ("auto",) + RANKING_LOSSES, section, "kind")
        require(self.club_weight >= 0 and self.solosim_weight >= 0, section, "weights must be >= 0")
        require(self.temperature > 0, section, "temperature must be > 0")
        require_choice(self.distance, ("club", "l2"), section, "distance")
        require(-1.0 <= self.ccl_margin < 1.0, section, "ccl_margin must be in [-1, 1) (a cosine)")
        require(self.ccl_negative_weight >= 0, section, "ccl_negative_weight must be >= 0")
        require(self.softmax_temperature > 0, section, "softmax_temperature must be > 0")


@dataclass
class ClubConfig(Section):
    steps: int = 50
    lr: float = 1e-3
    hidden_dim: int = 16
    pairing: str = "paper"

    def validate(self, section: str) -> None:
        require(self.steps >= 0 and self.lr > 0 and self.hidden_dim > 0, section, "steps >= 0, lr > 0, sizes > 0")
        require_choice(self.pairing, ("paper", "reference"), section, "pairing")


# ------------------------------------------------------------------ ranking losses


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
    return -full_mean(F.logsigmoid(pos_score.unsqueeze(1) - neg_score))


def ranking_loss(kind: str, user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The ranking loss ``loss.kind`` names, on a batch's user ``[B, d]``, positive item
    ``[B, d]`` and negative item ``[B, N, d]`` vectors."""
    if kind == "bpr":
        return bpr_loss(user, pos, neg)
    raise ValueError(f"unknown ranking loss {kind!r}")  # config validation rules this out


def candidate_cosines(user: torch.Tensor, items: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """cos(user_b, items[ids[b, n]]) as ``[B, N]``, in one batched product.

    Args:
        user: ``[B, d]``; items: ``[n_items, d]`` (all items); ids: ``[B, N]`` item ids.

    With ``N · d ≥ n_items`` the ``[B, n_items]`` cosine matrix is smaller than the gathered
    ``[B, N, d]`` vectors: it is computed whole and the candidates picked from it.
    """
    user, items = F.normalize(user, dim=-1), F.normalize(items, dim=-1)
    if ids.shape[1] * items.shape[1] >= items.shape[0]:
        return (user @ items.T).gather(1, ids)
    return torch.einsum("bd,bnd->bn", user, items[ids])


def ccl_loss(pos_cos: torch.Tensor, neg_cos: torch.Tensor, margin: float, negative_weight: float) -> torch.Tensor:
    """Cosine contrastive loss (SimpleX, Mao et al., CIKM 2021), mean over the rows of
    (1 − cos(u, i⁺)) + (w / N) · Σₙ max(0, cos(u, i⁻ₙ) − m).

    Args:
        pos_cos: ``[B]`` cosines of the positives; neg_cos: ``[B, N]`` of the negatives.
        margin: m; negatives less similar than m cost nothing.
        negative_weight: w, the weight of the negatives' mean against the positive term.
    """
    return full_mean((1.0 - pos_cos) + negative_weight * F.relu(neg_cos - margin).mean(dim=1))


def sampled_softmax_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    pos_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax: each row must pick its own positive among the batch's
    positives (and the ``extra`` candidates, e.g. the CBNS memory), by cosine / ``temperature``.

    logit(b, c) = cos(u_b, v_c) / τ − log q(c): ``log_q`` (``[n_items]``, the log of each
    item's share of the training pairs) corrects for candidates being drawn by popularity
    (Yi et al., RecSys 2019), as CBNS does; ``None`` leaves it out. A candidate that is the
    row's own positive item but not its own column (the same item twice in a batch, or in
    the memory) is masked out. The mean cross-entropy over rows is returned.

    Args:
        user, pos: ``[B, d]``; pos_ids: ``[B]`` item ids of the positives.
        extra, extra_ids: ``[K, d]`` and ``[K]`` further candidates (no gradient is needed).
        rows: ``user`` holds only these rows of the batch (one rank's share in distributed
            training); their own columns are ``rows``, every positive stays a candidate.
            Default: all rows.
    """
    cand, cand_ids = pos, pos_ids
    if extra is not None and len(extra):
        cand, cand_ids = torch.cat([pos, extra]), torch.cat([pos_ids, extra_ids])
    # [B, K] passes are the cost here: scale the B users rather than the B·K logits, and
    # fold the correction into the product (addmm) and the mask into its output, in place.
    user = F.normalize(user, dim=-1) / temperature
    cand = F.normalize(cand, dim=-1)
    if log_q is not None:
        logits = torch.addmm(-log_q[cand_ids].unsqueeze(0), user, cand.T)
    else:
        logits = user @ cand.T
    first = 0 if rows is None else rows.start
    own = torch.arange(first, first + len(user), device=pos_ids.device)  # each row's own column
    same = cand_ids.unsqueeze(0) == pos_ids[own].unsqueeze(1)
    same[own - first, own] = False
    return F.cross_entropy(logits.masked_fill_(same, -math.inf), own)


class RankingLoss:
    """The ranking term of a training step: ``kind`` (``bpr``, ``ccl``, ``softmax`` or
    ``none``: no term, always 0) with its params from ``cfg``. For ``softmax``, ``log_q``
    (log of each item's share of the training pairs) corrects for popularity, and ``memory`` (CBNS) adds the vectors of
    recent batches as negatives; every call then enqueues the batch's positives."""

    def __init__(
        self,
        kind: str,
        cfg: LossConfig | None = None,
        log_q: torch.Tensor | None = None,
        memory: CrossBatchMemory | None = None,
    ):
        self.kind, self.cfg, self.log_q, self.memory = kind, cfg or LossConfig(), log_q, memory

    def __call__(self, emb: Embeddings, batch: Batch, rows: slice | None = None) -> torch.Tensor:
        """The mean loss over the batch's rows, or over ``rows`` only (one rank's share of
        the global batch: the softmax's candidates and the CBNS memory still take every
        positive of the batch, as in one process); 0 for no row."""
        shard = batch if rows is None else Batch(*(t[rows] for t in batch))
        user = emb.user[shard.users]
        if self.kind == "softmax":
            pos_all = emb.item[batch.pos]  # every positive of the batch: a candidate, then into the memory
            loss = self.softmax(user, pos_all, batch.pos, rows) if len(user) else None
            if self.memory is not None:
                self.memory.push(batch.pos, pos_all)
        elif not len(user) or self.kind == "none":
            loss = None
        elif self.kind == "ccl":
            pos_cos = F.cosine_similarity(user, emb.item[shard.pos], dim=-1)
            neg_cos = candidate_cosines(user, emb.item, shard.neg)
            loss = ccl_loss(pos_cos, neg_cos, self.cfg.ccl_margin, self.cfg.ccl_negative_weight)
        else:
            loss = ranking_loss(self.kind, user, emb.item[shard.pos], emb.item[shard.neg])
        return emb.user.new_zeros(()) if loss is None else loss

    def softmax(
        self, user: torch.Tensor, pos: torch.Tensor, pos_ids: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """The sampled softmax of ``user`` (the batch's rows ``rows``) against the batch's
        positives ``pos`` and the CBNS memory's negatives."""
        extra = self.memory.negatives() if self.memory is not None else None
        extra_ids, extra_vectors = extra if extra is not None else (None, None)
        return sampled_softmax_loss(
            user, pos, pos_ids, self.cfg.softmax_temperature, self.log_q, extra_vectors, extra_ids, rows
        )


# ------------------------------------------------------------------ the embedding penalty


def rows_norm(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``table[ids]`` (``ids`` of any shape, repeats allowed).

    With more ids than table rows (e.g. hundreds of negatives per positive) the gathered
    ``[*ids.shape, d]`` tensor is never built: ‖table[ids]‖² = Σᵢ countᵢ·‖tableᵢ‖², the same
    function with the same gradient."""
    if ids.numel() <= table.shape[0]:
        return table[ids].norm(p=2)
    counts = torch.bincount(ids.reshape(-1), minlength=table.shape[0]).to(table.dtype)
    return full_sum(counts * table.pow(2).sum(1)).sqrt()


def embedding_l2(*lookups: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MMRec's "L2" regularisation of a batch's embeddings (its ``EmbLoss``): the sum of
    each lookup's Frobenius norm (not squared), divided by the batch size. Each lookup is a
    ``(table, ids)`` pair, the rows ``table[ids]`` (see :func:`rows_norm`); the batch size is
    the first dimension of the first lookup's ids. MMRec's ``reg_weight`` grids are on this
    scale."""
    return sum(rows_norm(table, ids) for table, ids in lookups) / lookups[0][1].shape[0]


# ------------------------------------------------------------------ SEA's separation terms


def solosim_loss(anchor: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE in one direction: row i of ``anchor`` must pick row i of ``other`` among all
    rows, by cosine similarity / ``temperature`` (cross-entropy, diagonal targets)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(other, dim=-1).T / temperature
    target = torch.arange(len(anchor), device=anchor.device)
    return F.cross_entropy(logits, target)


def l2_distance_loss(generic: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
    """The 'distance' alternative to CLUB: minus the mean squared ℓ2 distance between the
    L2-normalised generic and unique parts (minimising it pushes them apart, bounded)."""
    return -full_mean((F.normalize(generic, dim=-1) - F.normalize(unique, dim=-1)).pow(2).sum(-1))


class CLUBEstimator(nn.Module):
    """Variational q(y | x) = N(μ(x), diag exp(logvar(x))) for the CLUB bound
    (Cheng et al., 2020): μ and logvar are 2-layer MLPs (``hidden_dim``, ReLU; logvar ends
    in tanh), initialised as :class:`torch.nn.Linear` layers are.

    ``count`` independent estimators of the same sizes live in one module, their weights
    stacked, so fitting all of them costs the operations of one (one batched product per
    layer, one optimiser update per weight). Their inputs are ``[count, n, dim]``, or
    ``[n, dim]`` for a single estimator; results carry the leading ``count`` dimension
    only when the inputs do.

    It is fitted by maximising :meth:`log_likelihood` on (x, y) pairs with its own
    optimiser; :meth:`bound` then estimates an upper bound of I(x; y) on those pairs.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int, count: int = 1):
        super().__init__()
        self.count = count
        sizes = {
            "mu_1": (x_dim, hidden_dim),
            "mu_2": (hidden_dim, y_dim),
            "logvar_1": (x_dim, hidden_dim),
            "logvar_2": (hidden_dim, y_dim),
        }
        for name, (fan_in, fan_out) in sizes.items():
            bound = 1.0 / math.sqrt(fan_in)
            self.register_parameter(
                f"{name}_weight", nn.Parameter(torch.empty(count, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.register_parameter(
                f"{name}_bias", nn.Parameter(torch.empty(count, 1, fan_out).uniform_(-bound, bound))
            )

    def _mlp(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w1, b1 = getattr(self, f"{name}_1_weight"), getattr(self, f"{name}_1_bias")
        w2, b2 = getattr(self, f"{name}_2_weight"), getattr(self, f"{name}_2_bias")
        return torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, x, w1)), w2)

    def _gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, logvar) of q(·|x) for ``[count, n, x_dim]`` inputs."""
        return self._mlp(x, "mu"), torch.tanh(self._mlp(x, "logvar"))

    def _batched(self, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
        single = tensors[0].dim() == 2
        if single and self.count != 1:
            raise ValueError(f"{self.count} estimators need [count, n, dim] inputs")
        return [t.unsqueeze(0) if single else t for t in tensors], single

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over rows of log q(y_i | x_i), up to the constant −(d/2)·log 2π."""
        (x, y), single = self._batched(x, y)
        mu, logvar = self._gaussian(x)
        ll = (-0.5 * ((y - mu) ** 2 / logvar.exp() + logvar)).sum(-1).mean(-1)
        return ll[0] if single else ll

    def bound(self, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        """CLUB estimate: mean log q(y_i|x_i) − mean log q(y_π(i)|x_i), π a random
        permutation, drawn per estimator (``perm``: ``[n]``, or ``[count, n]``)."""
        (x, y), single = self._batched(x, y)
        n = y.shape[1]
        if perm is None:
            perm = torch.stack([torch.randperm(n, device=y.device) for _ in range(y.shape[0])])
        perm = perm.reshape(y.shape[0], n)
        mu, logvar = self._gaussian(x)
        var = logvar.exp()
        positive = -0.5 * ((y - mu) ** 2 / var).sum(-1)
        shuffled = torch.gather(y, 1, perm.unsqueeze(-1).expand_as(y))
        negative = -0.5 * ((shuffled - mu) ** 2 / var).sum(-1)
        b = (positive - negative).mean(-1)
        return b[0] if single else b

    def fit(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int) -> torch.Tensor:
        """Take ``steps`` optimiser steps maximising the summed log q(y|x) of every
        estimator on fixed (detached) pairs; return the last log-likelihood(s) without a
        host sync (reading them every step would be one). The gradients come from
        :meth:`gradients` (written out by hand: the estimator is tiny, so autograd's
        bookkeeping would cost more than its arithmetic)."""
        (x, y), single = self._batched(x.detach(), y.detach())
        ll = torch.full((self.count,), math.nan, device=x.device)
        params = list(self.parameters())
        for _ in range(steps):
            ll, grads = self.gradients(x, y)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
        return ll[0] if single else ll

    @torch.no_grad()
    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`log_likelihood` of ``[count, n, dim]`` pairs (per estimator) and the
        gradients of −Σ of it with respect to :meth:`parameters`, in their order, computed
        in closed form (``tests/test_sea.py`` checks them against autograd)."""
        w1m, b1m, w2m, b2m = self.mu_1_weight, self.mu_1_bias, self.mu_2_weight, self.mu_2_bias
        w1v, b1v, w2v, b2v = self.logvar_1_weight, self.logvar_1_bias, self.logvar_2_weight, self.logvar_2_bias
        n = x.shape[1]
        h_mu = torch.baddbmm(b1m, x, w1m).relu_()
        mu = torch.baddbmm(b2m, h_mu, w2m)
        h_lv = torch.baddbmm(b1v, x, w1v).relu_()
        logvar = torch.baddbmm(b2v, h_lv, w2v).tanh_()
        inv_var = torch.exp(-logvar)
        diff = y - mu
        scaled = diff * diff * inv_var  # (y − μ)² / σ²
        ll = (scaled + logvar).sum(-1).mean(-1).mul_(-0.5)
        # loss = −Σ ll = Σ_rows [(y − μ)²/σ² + logvar] / 2n
        d_mu = diff.mul_(inv_var).mul_(-1.0 / n)
        d_logvar = scaled.neg_().add_(1.0).mul_(0.5 / n).mul_(1.0 - logvar * logvar)  # through tanh
        x_t = x.transpose(1, 2)
        grads = []
        for h, w2, d_out in ((h_mu, w2m, d_mu), (h_lv, w2v, d_logvar)):
            d_h = torch.bmm(d_out, w2.transpose(1, 2)).mul_(h > 0)
            grads += [
                torch.bmm(x_t, d_h),
                d_h.sum(1, keepdim=True),
                torch.bmm(h.transpose(1, 2), d_out),
                d_out.sum(1, keepdim=True),
            ]
        return ll, grads
