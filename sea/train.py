"""SEA's training loop: batches, CLUB estimator steps, early stopping on validation.

Read top to bottom: :func:`load_graph_data` turns the graph stage's tables and the feature
files into tensors; :func:`build_model` makes SEA and its CLUB estimators from the config;
:func:`train_step` is one optimiser step; :func:`fit` runs epochs, evaluates on validation
(embeddings recomputed in eval mode, never reused from training) and keeps the best state.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from sea.config import TrainingSetup
from sea.losses import CLUBEstimator, bpr_loss, fit_estimators, l2_distance_loss, solosim_loss
from sea.metrics import evaluate_ranking, to_csr
from sea.models.graphs import item_item_graph, user_item_adjacency
from sea.models.sea import SEA, SEAOutput


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


@dataclass
class GraphData:
    """Everything training and evaluation read, as tensors on one device."""

    n_users: int
    n_items: int
    train_users: torch.Tensor  # [n_train] long
    train_items: torch.Tensor  # [n_train] long
    features: dict[str, torch.Tensor]  # modality -> [n_items, dim]
    adj: torch.Tensor  # [(U + I), (U + I)] CSR
    item_graph: torch.Tensor  # [I, I] CSR
    csr: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # split -> (indptr, indices)


def load_graph_data(
    interactions: pd.DataFrame,
    features: dict[str, np.ndarray],
    *,
    knn_k: int,
    image_knn_weight: float,
    device: torch.device | str = "cpu",
) -> GraphData:
    """Tensors for training from the interactions table (user, item, split) and features."""
    n_users = int(interactions["user"].max()) + 1
    n_items = next(iter(features.values())).shape[0]
    if int(interactions["item"].max()) >= n_items:
        raise ValueError(f"interactions reference item {int(interactions['item'].max())} "
                         f"but the features have {n_items} rows")
    train = interactions[interactions["split"] == "train"]
    tu, ti = train["user"].to_numpy(np.int64), train["item"].to_numpy(np.int64)
    feats = {m: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32) for m, x in features.items()}
    csr = {}
    for name in ("train", "valid", "test"):
        part = interactions[interactions["split"] == name]
        csr[name] = to_csr(part["user"].to_numpy(np.int64), part["item"].to_numpy(np.int64), n_users)
    device = torch.device(device)
    return GraphData(
        n_users=n_users,
        n_items=n_items,
        train_users=torch.as_tensor(tu.copy(), device=device),
        train_items=torch.as_tensor(ti.copy(), device=device),
        features={m: x.to(device) for m, x in feats.items()},
        adj=user_item_adjacency(tu, ti, n_users, n_items).to(device),
        item_graph=item_item_graph(feats, knn_k, image_knn_weight).to(device),
        csr=csr,
    )


def build_model(data: GraphData, setup: TrainingSetup) -> tuple[SEA, nn.ModuleDict]:
    """SEA sized from the data and params, and its CLUB estimator(s).

    ``club.pairing: paper`` gives one estimator per modality, fitted on the (generic,
    unique) pairs it measures; ``reference`` gives the reference code's single shared
    estimator fitted on cross-modal pairs (for comparison only).
    """
    m = setup.model
    model = SEA(
        data.n_users, data.n_items,
        {name: data.features[name].shape[1] for name in m.modalities},
        embedding_dim=m.embedding_dim, generic_fraction=m.generic_fraction,
        mlp_hidden_dim=m.mlp_hidden_dim, gcn_layers=m.gcn_layers, head_dim=m.head_dim,
    )
    names = ["shared"] if setup.club.pairing == "reference" else list(m.modalities)
    estimators = nn.ModuleDict({n: CLUBEstimator(m.head_dim, m.head_dim, setup.club.hidden_dim) for n in names})
    return model, estimators


class NegativeSampler:
    """Uniform negatives that are not among the user's training items (seeded)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_items: int, generator: torch.Generator):
        self.n_items = n_items
        self.keys = torch.sort(users * n_items + items).values
        self.generator = generator

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        key = users * self.n_items + items
        pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == key

    def __call__(self, users: torch.Tensor, max_tries: int = 20) -> torch.Tensor:
        g = self.generator
        neg = torch.randint(self.n_items, users.shape, generator=g, device=g.device)
        for _ in range(max_tries):
            bad = self._is_positive(users, neg)
            if not bad.any():
                break
            neg[bad] = torch.randint(self.n_items, (int(bad.sum()),), generator=g, device=g.device)
        return neg


def auxiliary_losses(
    model: SEA,
    estimators: nn.ModuleDict,
    est_opt: torch.optim.Optimizer | None,
    out: SEAOutput,
    items: torch.Tensor,
    setup: TrainingSetup,
) -> dict[str, torch.Tensor]:
    """The CLUB (or ℓ2) and Solosim terms on ``items``; fits the CLUB estimators first."""
    loss, club = setup.loss, setup.club
    terms: dict[str, torch.Tensor] = {}
    if loss.club_weight > 0:
        pairs = model.club_pairs(out, items)
        if loss.distance == "l2":
            parts = [l2_distance_loss(g, s) for g, s in pairs.values()]
        elif club.pairing == "paper":
            fit_estimators({m: (estimators[m], g, s) for m, (g, s) in pairs.items()}, est_opt, club.steps)
            parts = [estimators[m].bound(g, s) for m, (g, s) in pairs.items()]
        else:  # reference: shared estimator fitted text→image, used within modality, clamped
            est = estimators["shared"]
            (gt, st), (gv, sv) = pairs["text"], pairs["image"]
            est.fit(torch.cat([gt, st]), torch.cat([gv, sv]), est_opt, club.steps)
            parts = [est.bound(g, s).clamp(min=0) for g, s in pairs.values()]
        terms["club"] = torch.stack(parts).mean()
    if loss.solosim_weight > 0 and model.has_cross_modal:
        text, image = model.solosim_pair(out, items)
        terms["solosim"] = solosim_loss(text, image, loss.temperature)
    return terms


def train_step(
    model: SEA,
    estimators: nn.ModuleDict,
    opt: torch.optim.Optimizer,
    est_opt: torch.optim.Optimizer | None,
    data: GraphData,
    users: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    setup: TrainingSetup,
) -> dict[str, float]:
    """One model step on a batch of (user, positive, negative) triples.

    The auxiliary terms are computed on the batch's distinct positive items; terms whose
    weight is 0 are not computed at all (their networks get no gradient).
    """
    model.train()
    out = model(data.features, data.adj, data.item_graph)
    terms = {"bpr": bpr_loss(out.user[users], out.item[pos], out.item[neg])}
    terms |= auxiliary_losses(model, estimators, est_opt, out, torch.unique(pos), setup)
    weights = {"bpr": 1.0, "club": setup.loss.club_weight, "solosim": setup.loss.solosim_weight}
    total = sum(weights[k] * v for k, v in terms.items())
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return {"loss": total.item()} | {k: v.item() for k, v in terms.items()}


@torch.no_grad()
def embed(model: SEA, data: GraphData) -> SEAOutput:
    """All user and item vectors, recomputed in eval mode."""
    model.eval()
    return model(data.features, data.adj, data.item_graph)


def evaluate(model: SEA, data: GraphData, split: str, ks: list[int], batch_size: int = 4096,
             out: SEAOutput | None = None) -> dict[str, float]:
    """Full-ranking metrics on ``split`` ('valid' or 'test'), masking training items only.

    ``out``: embeddings from :func:`embed` to reuse across splits (computed when absent).
    """
    out = embed(model, data) if out is None else out
    dev = out.user.device
    return evaluate_ranking(
        lambda u: SEA.score(out, u.to(dev)), data.csr["train"], data.csr[split],
        data.n_items, ks, batch_size,
    )


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_valid: dict[str, float]
    best_state: dict[str, torch.Tensor]
    seconds: float


def fit(
    model: SEA,
    estimators: nn.ModuleDict,
    data: GraphData,
    setup: TrainingSetup,
    device: torch.device,
    log: Callable[[str], None] = print,
    seed: int | None = None,
) -> FitResult:
    """Train until ``train.patience`` evaluations pass without a better ``eval.select``
    on validation, or ``train.max_epochs``; return the history and the best state.

    ``seed`` (default ``train.seed``) drives the batch order and the negatives; the
    model's initialisation follows the global seed set before :func:`build_model`."""
    tc, select = setup.train, setup.eval.select
    model.to(device)
    estimators.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    est_opt = torch.optim.Adam(estimators.parameters(), lr=setup.club.lr) if len(estimators) else None
    gen = torch.Generator(device=device).manual_seed(tc.seed if seed is None else seed)
    sampler = NegativeSampler(data.train_users, data.train_items, data.n_items, gen)
    n_train = len(data.train_users)

    history: list[dict] = []
    best = (-1.0, 0, {}, copy.deepcopy(model.state_dict()))
    bad_evals, start = 0, time.perf_counter()
    bar = tqdm(range(1, tc.max_epochs + 1), desc="train", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        order = torch.randperm(n_train, generator=gen, device=device)
        sums: dict[str, float] = {}
        n_batches = 0
        for b in range(0, n_train, tc.batch_size):
            idx = order[b:b + tc.batch_size]
            users, pos = data.train_users[idx], data.train_items[idx]
            parts = train_step(model, estimators, opt, est_opt, data, users, pos, sampler(users), setup)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
        row = {"epoch": epoch} | {k: v / n_batches for k, v in sums.items()}
        if epoch % tc.eval_every == 0 or epoch == tc.max_epochs:
            valid = evaluate(model, data, "valid", setup.eval.topk, setup.eval.batch_size)
            row |= {f"valid_{k}": v for k, v in valid.items() if k != "users"}
            if valid[select] > best[0]:
                best = (valid[select], epoch, valid, copy.deepcopy(model.state_dict()))
                bad_evals = 0
            else:
                bad_evals += 1
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{f"valid_{select}": f"{row.get(f'valid_{select}', float('nan')):.4f}"})
        if bad_evals >= tc.patience:
            log(f"early stop at epoch {epoch}: no better valid {select} for {tc.patience} evaluations")
            break
    bar.close()
    return FitResult(history, best[1], best[2], best[3], time.perf_counter() - start)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def load_pipeline_data(setup: TrainingSetup, device: torch.device) -> GraphData:
    """GraphData from the graph and feature stages' files (see :mod:`sea.artifacts`)."""
    from sea import artifacts

    interactions = pd.read_parquet(artifacts.INTERACTIONS)
    n_items = len(pd.read_parquet(artifacts.ITEMS, columns=["item"]))
    features = artifacts.read_features(setup.model.modalities, n_items)
    return load_graph_data(interactions, features, knn_k=setup.model.knn_k,
                           image_knn_weight=setup.model.image_knn_weight, device=device)
