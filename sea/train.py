"""One trainer for every registered model (:mod:`sea.models`).

Read top to bottom: :func:`seed_everything`; :func:`load_graph_data` turns the graph and
feature stages' files into a :class:`~sea.models.base.GraphData`; :func:`build_model`
makes the model ``model.name`` names; :class:`UniformNegatives` draws negatives;
:class:`RankingLoss` is the ranking term ``loss.kind`` names (with the CBNS memory,
:class:`CrossBatchMemory`, for ``train.sampler: cross_batch``); :func:`train_step` is one
optimiser step; :func:`evaluate` ranks every item in eval mode; :func:`fit` runs the epochs
with early stopping on validation and keeps the best state.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sea import artifacts, distributed
from sea.config import LossConfig, TrainingSetup
from sea.losses import candidate_cosines, ccl_loss, ranking_loss, sampled_softmax_loss
from sea.metrics import evaluate_ranking, per_user_metrics
from sea.models.base import Batch, Embeddings, GraphData, Recommender, Term, adam, model_class
from sea.models.separation import parameters_except
from sea.ops import full_sum
from sea.runtime import rebalance


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, also make torch's CPU kernels
    deterministic (multi-threaded sparse products otherwise differ from run to run).

    On CUDA, some kernels used here have no deterministic version: pass
    ``deterministic=False`` there; GPU runs are seeded but not bit-reproducible.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)


def load_graph_data(setup: TrainingSetup, device: torch.device | str = "cpu", root: str | Path = ".") -> GraphData:
    """GraphData from the graph stage's tables under ``root`` and, only for a model with
    ``uses_features``, the feature files of ``model.modalities`` (see :mod:`sea.artifacts`)."""
    root = Path(root)
    interactions = pd.read_parquet(root / artifacts.INTERACTIONS)
    n_items = len(pd.read_parquet(root / artifacts.ITEMS, columns=["item"]))
    features = {}
    if model_class(setup.model.name).uses_features:
        features = artifacts.read_features(setup.model.modalities, n_items, root / artifacts.FEATURES)
    return GraphData.build(interactions, n_items, features, device)


def build_model(data: GraphData, setup: TrainingSetup) -> Recommender:
    """The model ``model.name`` names, sized from ``data``, with its own params section.

    A model trained with a cosine loss (``loss.kind`` ccl or softmax) is marked
    ``rank_by_cosine``: :func:`embed` then returns unit vectors, so evaluation and
    recommendations rank by the cosine the loss trained (its vectors' norms are free)."""
    model = model_class(setup.model.name).build(data, setup.model_cfg, setup).to(data.device)
    model.rank_by_cosine = setup.ranks_by_cosine
    return model


class UniformNegatives:
    """Negatives drawn uniformly from the items a user has *not* trained on (seeded).

    Exact, one draw, no rejection loop: a user's ``r``-th non-positive item (0-based) is
    ``r + #{k : p_k − k ≤ r}`` for the user's sorted positives ``p_0 < p_1 < …``; the
    shifted values ``p_k − k`` of all users are kept in one sorted array (offset by
    ``user · n_items``) so a batch is answered with one ``searchsorted``.
    A user who trained on every item has no negative; it gets item ``n_items − 1``.
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                 generator: torch.Generator):
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


class RankingLoss:
    """The ranking term of a training step: ``kind`` (``bpr``, ``ccl`` or ``softmax``) with
    its params from ``cfg``. For ``softmax``, ``log_q`` (log of each item's share of the
    training pairs) corrects for popularity, and ``memory`` (CBNS) adds the vectors of
    recent batches as negatives; every call then enqueues the batch's positives."""

    def __init__(self, kind: str, cfg: LossConfig | None = None, log_q: torch.Tensor | None = None,
                 memory: CrossBatchMemory | None = None):
        self.kind, self.cfg, self.log_q, self.memory = kind, cfg or LossConfig(), log_q, memory

    @classmethod
    def from_setup(cls, setup: TrainingSetup, data: GraphData) -> "RankingLoss":
        kind, tc = setup.ranking_loss, setup.train
        log_q = None
        if kind == "softmax" and setup.loss.softmax_logq:
            counts = torch.bincount(data.train_items, minlength=data.n_items).float()
            log_q = (counts / full_sum(counts)).log()  # -inf only for items never a positive
        memory = CrossBatchMemory(tc.cbns_memory_batches, tc.cbns_warmup_steps) if tc.sampler == "cross_batch" else None
        return cls(kind, setup.loss, log_q, memory)

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
        elif not len(user):
            loss = None
        elif self.kind == "ccl":
            pos_cos = F.cosine_similarity(user, emb.item[shard.pos], dim=-1)
            neg_cos = candidate_cosines(user, emb.item, shard.neg)
            loss = ccl_loss(pos_cos, neg_cos, self.cfg.ccl_margin, self.cfg.ccl_negative_weight)
        else:
            loss = ranking_loss(self.kind, user, emb.item[shard.pos], emb.item[shard.neg])
        return emb.user.new_zeros(()) if loss is None else loss

    def softmax(self, user: torch.Tensor, pos: torch.Tensor, pos_ids: torch.Tensor,
                rows: slice | None = None) -> torch.Tensor:
        """The sampled softmax of ``user`` (the batch's rows ``rows``) against the batch's
        positives ``pos`` and the CBNS memory's negatives."""
        extra = self.memory.negatives() if self.memory is not None else None
        extra_ids, extra_vectors = extra if extra is not None else (None, None)
        return sampled_softmax_loss(user, pos, pos_ids, self.cfg.softmax_temperature, self.log_q,
                                    extra_vectors, extra_ids, rows)


def train_step(model: Recommender, opt: torch.optim.Optimizer, data: GraphData, batch: Batch,
               loss: str | RankingLoss, rows: slice | None = None) -> dict[str, torch.Tensor | float]:
    """One optimiser step on a batch; returns the total loss and every term (unweighted)
    and whatever :meth:`~Recommender.auxiliary_step` logged, without a host sync.
    ``loss``: a :class:`RankingLoss`, or a kind name (``auto``: the model's preferred
    loss) with the default params.

    ``rows``: in distributed training (:mod:`sea.distributed`), this rank's rows of the
    global ``batch``. The ranking loss, a mean over rows, is taken over them only; the
    model's own terms and its separately fitted parts (SEA's estimators) see the whole
    batch on every rank, as in one process, from the same replicated full-graph forward.
    With the ranking term scaled by ranks × (its share of the rows), the mean of the
    ranks' gradients is the one-process gradient of the whole batch (whatever the shard
    sizes). The values returned are then this rank's part of a sum over ranks.
    """
    if isinstance(loss, str):
        loss = RankingLoss(model.preferred_loss if loss == "auto" else loss)
    model.train()
    emb = model(data)
    logs = model.auxiliary_step(emb, batch)
    if rows is not None:  # keep the ranks' separately fitted parts equal (they are on the CPU)
        distributed.broadcast_(fitted_separately(model))
    terms = {loss.kind: Term(loss(emb, batch, rows), 1.0)}
    terms |= model.extra_losses(emb, batch)
    total = sum(t.weight * t.value for t in terms.values())
    opt.zero_grad(set_to_none=True)
    if rows is None:
        total.backward()
        opt.step()
        return {"loss": total.detach()} | {k: t.value.detach() for k, t in terms.items()} | logs

    size, share = distributed.world().size, (rows.stop - rows.start) / len(batch.users)
    ranking = terms[loss.kind].value
    own = sum((t.weight * t.value for k, t in terms.items() if k != loss.kind), ranking.new_zeros(()))
    objective = size * share * ranking + own
    if objective.requires_grad:
        objective.backward()
    distributed.average_gradients(model.main_parameters())
    opt.step()
    values = {"loss": share * ranking.detach() + own.detach() / size, loss.kind: share * ranking.detach()}
    return values | {k: t.value.detach() / size for k, t in terms.items() if k != loss.kind} | {
        k: v / size for k, v in logs.items()}


def fitted_separately(model: Recommender) -> list[nn.Parameter]:
    """The parameters outside :meth:`~Recommender.main_parameters` (SEA's estimators)."""
    return list(parameters_except(model, model.main_parameters()))


@torch.no_grad()
def embed(model: Recommender, data: GraphData) -> Embeddings:
    """All user and item vectors, recomputed in eval mode (unit vectors for a model marked
    ``rank_by_cosine`` by :func:`build_model`)."""
    model.eval()
    emb = model(data)
    if getattr(model, "rank_by_cosine", False):
        emb = Embeddings(F.normalize(emb.user, dim=1), F.normalize(emb.item, dim=1), emb.extras)
    return emb


def score_fn(model: Recommender, emb: Embeddings) -> Callable[[torch.Tensor], torch.Tensor]:
    """``users -> [len(users), n_items]`` scores from precomputed embeddings."""
    device = emb.user.device
    return lambda users: model.score(emb, users.to(device))


def evaluate(model: Recommender, data: GraphData, split: str, ks: list[int], batch_size: int = 4096,
             emb: Embeddings | None = None) -> dict[str, float]:
    """Mean full-ranking metrics on ``split`` ('valid' or 'test'), masking training items
    only. ``emb``: embeddings from :func:`embed` to reuse (computed when absent)."""
    emb = embed(model, data) if emb is None else emb
    return evaluate_ranking(score_fn(model, emb), data.csr["train"], data.csr[split], data.n_items, ks, batch_size)


def evaluate_per_user(model: Recommender, data: GraphData, split: str, ks: list[int], batch_size: int,
                      emb: Embeddings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`evaluate`, one value per user (see :func:`sea.metrics.per_user_metrics`)."""
    return per_user_metrics(score_fn(model, emb), data.csr["train"], data.csr[split], data.n_items, ks, batch_size)


@dataclass
class FitResult:
    history: list[dict]  # one row per epoch: losses, and valid_<metric> where evaluated
    best_epoch: int
    best_valid: dict[str, float]
    best_state: dict[str, torch.Tensor]
    seconds: float  # timings: for the console and logs/, never for hashed outputs
    eval_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)


def fit(model: Recommender, data: GraphData, setup: TrainingSetup, seed: int,
        log: Callable[[str], None] = print) -> FitResult:
    """Train until ``train.patience`` evaluations pass without a better ``eval.select`` on
    validation, or ``train.max_epochs``; leave the best state loaded and return it.

    ``seed`` drives the batch order, the negatives and the model's per-epoch draws; the
    initialisation follows the global seed set before :func:`build_model`.

    Under torchrun (:mod:`sea.distributed`) every rank draws the same batch order,
    negatives and per-epoch draws from the same seeded stream (so the global batches are a
    single process's), takes its :meth:`~sea.distributed.World.shard` of each batch's rows
    in :func:`train_step`, and starts from rank 0's weights. Rank 0 alone evaluates,
    keeps the best state and decides when to stop; the others follow its decision.
    """
    tc, select, device = setup.train, setup.eval.select, data.device
    world = distributed.world()
    if world.size > 1:
        distributed.broadcast_(p.data for p in model.parameters())  # as DDP does
    opt = adam(model.main_parameters(), tc.lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    ranking = RankingLoss.from_setup(setup, data)
    n_train = len(data.train_users)

    history: list[dict] = []
    best_value, best_epoch, best_valid = -math.inf, 0, {}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad_evals, start, eval_seconds, epoch_seconds = 0, time.perf_counter(), 0.0, []
    quiet = {} if world.is_main else {"disable": True}  # rank 0's bars; TQDM_* variables still apply
    bar = tqdm(range(1, tc.max_epochs + 1), desc=f"{setup.model.name} seed {seed}", unit="epoch", **quiet)
    for epoch in bar:
        t0 = time.perf_counter()
        rebalance()  # share the cores with the pipeline's other processes (results do not change)
        model.on_epoch_start(epoch, gen)
        order = torch.randperm(n_train, generator=gen, device=device)
        sums: dict[str, torch.Tensor | float] = {}
        starts = range(0, n_train, tc.batch_size)
        for b in tqdm(starts, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if world.is_main else True,
                      delay=2):
            idx = order[b:b + tc.batch_size]
            users = data.train_users[idx]
            batch = Batch(users, data.train_items[idx], negatives(users, tc.negatives))
            rows = world.shard(len(idx)) if world.size > 1 else None
            for k, v in train_step(model, opt, data, batch, ranking, rows).items():
                sums[k] = sums.get(k, 0.0) + v
        # one host sync per epoch: the batch means of every logged value
        sums_vector = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in sums.values()])
        if world.size > 1:  # each rank logged its part of a sum over ranks
            distributed.all_reduce_sum_(sums_vector)
        means = (sums_vector / len(starts)).tolist()
        row = {"epoch": epoch} | dict(zip(sums, means))
        if world.is_main and (epoch % tc.eval_every == 0 or epoch == tc.max_epochs):
            t_eval = time.perf_counter()
            valid = evaluate(model, data, "valid", setup.eval.topk, setup.eval.batch_size)
            eval_seconds += time.perf_counter() - t_eval
            row |= {f"valid_{k}": v for k, v in valid.items() if k != "users"}
            if valid[select] > best_value:
                best_value, best_epoch, best_valid = valid[select], epoch, valid
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_evals = 0
            else:
                bad_evals += 1
        history.append(row)
        epoch_seconds.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{f"valid_{select}": f"{row.get(f'valid_{select}', math.nan):.4f}"})
        stop = None
        if not math.isfinite(row["loss"]):
            stop = f"stopped at epoch {epoch}: the training loss is {row['loss']}"
        elif bad_evals >= tc.patience:
            stop = f"early stop at epoch {epoch}: no better valid {select} for {tc.patience} evaluations"
        if world.size > 1:  # rank 0 alone evaluates: every rank follows its decision
            stop = (stop or "rank 0 stopped") if distributed.broadcast_flag(stop is not None, device) else None
        if stop is not None:
            if world.is_main:
                log(stop)
            break
    bar.close()
    model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_valid, best_state, time.perf_counter() - start,
                     eval_seconds, epoch_seconds)


def count_parameters(params) -> int:
    """Number of trainable values in an iterable of parameters."""
    return sum(p.numel() for p in params if p.requires_grad)
