"""One training loop for every registered model (:mod:`sea.models`), read top to bottom.

:func:`seed_everything`; :func:`load_graph_data` turns the graph and feature stages'
files into a :class:`~sea.models.base.GraphData`; :func:`build_model` makes the model
``model.name`` names; :func:`train_step` is one optimiser step (the model's forward, its
separately fitted parts, the ranking loss of ``loss.kind`` plus the model's own terms);
:func:`fit` runs the epochs: shuffled batches (of ``train.batch_size``, or the
``train.steps_per_epoch`` slices of the linear regime, docs/scale.md) with uniform negatives
(:mod:`sea.samplers`), validation (:func:`sea.evaluation.evaluate`) every
``train.eval_every`` epochs, early stopping, the best state kept.

Under torchrun (``train.processes > 1``) every rank runs this same loop; the few things
done differently there are hooks of :mod:`sea.distributed` that do nothing in one process.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sea import artifacts, distributed
from sea.batch import Batch, Term
from sea.evaluation import evaluate
from sea.losses import RankingLoss
from sea.models.base import GraphData, Recommender, adam, model_class
from sea.models.propagation import GraphPartition
from sea.runtime import rebalance
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup


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
    """The model ``model.name`` names, sized from ``data``, with its own params section (and
    the modalities, ``loss`` and ``club`` sections a model may read).

    A model trained with a cosine loss (``loss.kind`` ccl or softmax) is marked
    ``rank_by_cosine``: :func:`~sea.evaluation.embed` then returns unit vectors, so
    evaluation and recommendations rank by the cosine the loss trained (its vectors' norms
    are free)."""
    cls = model_class(setup.model.name)
    model = cls.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club).to(data.device)
    model.rank_by_cosine = setup.ranks_by_cosine
    return model


def train_step(
    model: Recommender,
    opt: torch.optim.Optimizer,
    data: GraphData,
    batch: Batch,
    loss: str | RankingLoss,
    rows: slice | None = None,
    scale: float = 1.0,
) -> dict[str, torch.Tensor | float]:
    """One optimiser step on a batch; returns the total loss and every term (unweighted)
    and whatever :meth:`~Recommender.auxiliary_step` logged, without a host sync.
    ``loss``: a :class:`~sea.losses.RankingLoss`, or a kind name (``auto``: the model's
    preferred loss) with the default params.

    ``rows``: on one of several ranks, this rank's rows of the global ``batch``; the
    ranking loss is taken over them only, and :func:`sea.distributed.step_on_shard` makes
    the step (the values returned are then this rank's part of a sum over ranks).

    ``scale``: the step is taken on ``scale`` times the loss (Mirror Gradient's two steps,
    :func:`mirror_step`); the values returned are the unscaled loss and terms.
    """
    if isinstance(loss, str):
        loss = RankingLoss(model.preferred_loss if loss == "auto" else loss)
    model.train()
    emb = model(data)
    logs = model.auxiliary_step(emb, batch)
    if rows is not None:  # keep the ranks' separately fitted parts equal (they are on the CPU)
        distributed.broadcast_(model.fitted_separately())
    terms = {} if loss.kind == "none" else {loss.kind: Term(loss(emb, batch, rows), 1.0)}
    terms |= model.extra_losses(emb, batch)
    total = sum(t.weight * t.value for t in terms.values())
    opt.zero_grad(set_to_none=True)
    if rows is not None:
        return distributed.step_on_shard(
            terms, loss.kind, rows, len(batch.users), model.main_parameters(), opt, logs, scale
        )
    (total * scale if scale != 1.0 else total).backward()
    opt.step()
    return {"loss": total.detach()} | {k: t.value.detach() for k, t in terms.items()} | logs


def mirror_step(
    model: Recommender,
    opt: torch.optim.Optimizer,
    data: GraphData,
    batch: Batch,
    loss: str | RankingLoss,
    alphas: tuple[float, float],
    rows: slice | None = None,
) -> dict[str, torch.Tensor | float]:
    r"""Mirror Gradient's pair of steps on one batch ("Mirror Gradient: Towards Robust
    Multimodal Recommender Systems via Exploring Flat Local Minima", Zhong et al., WWW 2024):
    a step on :math:`\alpha_1 L(\theta)`, then, at the weights :math:`\theta'` it reached, a
    step on :math:`-\alpha_2 L(\theta')` over the same batch (the same negatives). Returns the
    first step's values."""
    alpha1, alpha2 = alphas
    logs = train_step(model, opt, data, batch, loss, rows, scale=alpha1)
    train_step(model, opt, data, batch, loss, rows, scale=-alpha2)
    return logs


@dataclass
class FitResult:
    history: list[dict]  # one row per epoch: losses, and valid_<metric> where evaluated
    best_epoch: int
    best_valid: dict[str, float]
    best_state: dict[str, torch.Tensor]
    seconds: float  # timings: for the console and logs/, never for hashed outputs
    eval_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)


def fit(
    model: Recommender,
    data: GraphData,
    setup: TrainingSetup,
    seed: int,
    log: Callable[[str], None] = print,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train until ``train.patience`` evaluations pass without a better ``eval.select`` on
    validation, or ``train.max_epochs``; leave the best state loaded and return it.

    ``seed`` drives the batch order, the negatives and the model's per-epoch draws; the
    initialisation follows the global seed set before :func:`build_model`.

    Under torchrun every rank draws the same batch order, negatives and per-epoch draws
    from the same seeded stream (so the global batches are a single process's), takes its
    rows of each batch and starts from rank 0's weights. Rank 0 alone evaluates, keeps the
    best state and decides when to stop; the others follow its decision.

    ``on_eval(epoch, valid)``, when given, is called after each validation (on rank 0) with
    the epoch and the validation metrics; returning True stops training there, as early
    stopping does (the hyper-parameter search, :mod:`sea.tune`, prunes a trial this way).
    ``progress=False`` shows no epoch or batch bars (a caller with a bar of its own).
    Neither changes any result.
    """
    tc, select, device = setup.train, setup.eval.select, data.device
    if not model.trainable:
        return evaluate_untrained(model, data, setup)
    world = distributed.replicate(model)
    opt = adam(model.main_parameters(), tc.lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    ranking = setup.make_ranking_loss(data)
    mirror = tc.mirror_steps  # Mirror Gradient's (alpha1, alpha2) every mirror_interval-th batch, or None
    n_train = len(data.train_users)
    # train.partition_graph: the ranks divide each training step's propagation (rank 0 evaluates whole)
    divide = (
        GraphPartition(world.rank, world.size, setup.model.name).active
        if tc.partition_graph
        else contextlib.nullcontext
    )

    history: list[dict] = []
    best_value, best_epoch, best_valid = -math.inf, 0, {}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad_evals, start, eval_seconds, epoch_seconds = 0, time.perf_counter(), 0.0, []
    quiet = {} if world.is_main and progress else {"disable": True}  # rank 0's bars; TQDM_* variables still apply
    bar = tqdm(range(1, tc.max_epochs + 1), desc=f"{setup.model.name} seed {seed}", unit="epoch", **quiet)
    for epoch in bar:
        t0 = time.perf_counter()
        rebalance()  # share the cores with the pipeline's other processes (results do not change)
        model.on_epoch_start(epoch, gen)
        order = torch.randperm(n_train, generator=gen, device=device)
        sums: dict[str, torch.Tensor | float] = {}
        bounds = tc.batch_bounds(n_train)  # batches of batch_size, or steps_per_epoch slices (docs/scale.md)
        for i, (lo, hi) in tqdm(
            enumerate(bounds),
            total=len(bounds),
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=None if world.is_main and progress else True,
            delay=2,
        ):
            idx = order[lo:hi]
            users = data.train_users[idx]
            batch = Batch(users, data.train_items[idx], negatives(users, tc.negatives))
            with divide():
                if mirror is not None and i % tc.mirror_interval == 0:
                    values = mirror_step(model, opt, data, batch, ranking, mirror, world.rows(len(idx)))
                else:
                    values = train_step(model, opt, data, batch, ranking, world.rows(len(idx)))
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
        # one host sync per epoch: the batch means of every logged value (each rank logged its part)
        sums_vector = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in sums.values()])
        means = (world.sum_(sums_vector) / len(bounds)).tolist()
        row = {"epoch": epoch} | dict(zip(sums, means))
        asked = None  # on_eval's stop
        if world.is_main and (epoch % tc.eval_every == 0 or epoch == tc.max_epochs):
            t_eval = time.perf_counter()
            valid = evaluate(model, data, "valid", setup.eval.topk, setup.eval.chunk(data.n_items))
            eval_seconds += time.perf_counter() - t_eval
            row |= {f"valid_{k}": v for k, v in valid.items() if k != "users"}
            if valid[select] > best_value:
                best_value, best_epoch, best_valid = valid[select], epoch, valid
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_evals = 0
            else:
                bad_evals += 1
            if on_eval is not None and on_eval(epoch, valid):
                asked = f"stopped at epoch {epoch} by on_eval"
        history.append(row)
        epoch_seconds.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{f"valid_{select}": f"{row.get(f'valid_{select}', math.nan):.4f}"})
        stop = None
        if not math.isfinite(row["loss"]):
            stop = f"stopped at epoch {epoch}: the training loss is {row['loss']}"
        elif bad_evals >= tc.patience:
            stop = f"early stop at epoch {epoch}: no better valid {select} for {tc.patience} evaluations"
        elif asked is not None:
            stop = asked
        stop = world.follow_main(stop, device)  # rank 0 alone evaluates: every rank follows its decision
        if stop is not None:
            if world.is_main:
                log(stop)
            break
    bar.close()
    model.load_state_dict(best_state)
    return FitResult(
        history, best_epoch, best_valid, best_state, time.perf_counter() - start, eval_seconds, epoch_seconds
    )


def evaluate_untrained(model: Recommender, data: GraphData, setup: TrainingSetup) -> FitResult:
    """:func:`fit` for a model without training (``trainable`` False): one validation, as
    epoch 0; the model's state is its best."""
    start = time.perf_counter()
    valid = evaluate(model, data, "valid", setup.eval.topk, setup.eval.chunk(data.n_items))
    row = {"epoch": 0, "loss": 0.0} | {f"valid_{k}": v for k, v in valid.items() if k != "users"}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - start
    return FitResult([row], 0, valid, state, seconds, seconds, [seconds])


def count_parameters(params) -> int:
    """Number of trainable values in an iterable of parameters."""
    return sum(p.numel() for p in params if p.requires_grad)
