"""SEA's model, losses and training step, checked against their definitions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sea.config import TrainingSetup
from sea.data.split import split
from sea.losses import CLUBEstimator, bpr_loss, fit_estimators, l2_distance_loss, solosim_loss
from sea.train import build_model, evaluate, fit, load_graph_data, seed_everything, train_step


def toy_data(feature_dims=None, seed: int = 0, n_users: int = 120, n_items: int = 60):
    """Users who each like one of 4 clusters; text features reveal the cluster."""
    feature_dims = feature_dims or {"image": 24, "text": 20}
    rng = np.random.default_rng(seed)
    user_c, item_c = rng.integers(0, 4, n_users), rng.integers(0, 4, n_items)
    rows = [(u, i, 5.0, int(rng.integers(1e9)))
            for u in range(n_users)
            for i in rng.choice(np.flatnonzero(item_c == user_c[u]), 6, replace=False)]
    inter = split(pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]), "mmrec", 1)
    onehot = np.eye(4)[item_c]
    feats = {m: (onehot @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(n_items, d))).astype(np.float32)
             for m, d in feature_dims.items()}
    return inter, feats


def make(params: dict | None = None, feature_dims=None, deterministic: bool = True, **sizes):
    setup = TrainingSetup.from_params({"train": {"lr": 1e-2, "batch_size": 256, "max_epochs": 3},
                                       "club": {"steps": 3}} | (params or {}))
    inter, feats = toy_data(feature_dims, **sizes)
    feats = {m: feats[m] for m in setup.model.modalities}
    data = load_graph_data(inter, feats, knn_k=5, image_knn_weight=0.1)
    seed_everything(0, deterministic)
    model, estimators = build_model(data, setup)
    return setup, data, model, estimators


def batch(data, n=64):
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_users), generator=g)[:n]
    users, pos = data.train_users[idx], data.train_items[idx]
    return users, pos, torch.randint(data.n_items, (n,), generator=g)


def optimizers(setup, model, estimators):
    return (torch.optim.Adam(model.parameters(), lr=setup.train.lr),
            torch.optim.Adam(estimators.parameters(), lr=setup.club.lr))


# ------------------------------------------------------------------ losses


def test_bpr_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    u, p, n = (torch.randn(8, 5, generator=g) for _ in range(3))
    expected = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    assert bpr_loss(u, p, n).item() == pytest.approx(expected.item(), rel=1e-5)


def test_solosim_is_cross_entropy_of_scaled_cosine_matrix():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    tau = 0.2
    sim = torch.tensor([[F.cosine_similarity(a[i], b[j], dim=0).item() / tau for j in range(10)] for i in range(10)])
    expected = np.mean([-(sim[i, i] - torch.logsumexp(sim[i], 0)).item() for i in range(10)])
    assert solosim_loss(a, b, tau).item() == pytest.approx(expected, rel=1e-5)


def test_l2_distance_loss_is_minus_squared_distance_of_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert l2_distance_loss(a, b).item() == pytest.approx(-2.0)


def _club_estimate(draw, steps=600):
    """Fit the estimator on one draw of (x, y) and report the bound on a fresh draw."""
    torch.manual_seed(0)
    x, y = draw(0)
    est = CLUBEstimator(x.shape[1], y.shape[1], hidden_dim=16)
    est.fit(x, y, torch.optim.Adam(est.parameters(), lr=1e-2), steps)
    x, y = draw(1)
    with torch.no_grad():
        return float(np.mean([est.bound(x, y).item() for _ in range(20)]))


def test_club_bounds_mutual_information_of_correlated_gaussians():
    d, rho, n = 4, 0.8, 2000

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)

    true_mi = -0.5 * d * math.log(1 - rho**2)  # 2.04 nats
    exact_club = d * rho**2 / (1 - rho**2)  # 7.1 nats with the true conditional
    estimate = _club_estimate(draw)
    assert true_mi - 0.15 <= estimate <= exact_club * 1.2, (estimate, true_mi, exact_club)


def test_club_is_near_zero_for_independent_samples():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)

    assert abs(_club_estimate(draw)) < 0.1


def test_joint_fit_equals_separate_fits():
    g = torch.Generator().manual_seed(5)
    data = {m: (torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)) for m in ("a", "b")}
    torch.manual_seed(0)
    joint = {m: CLUBEstimator(4, 4, 8) for m in data}
    separate = copy.deepcopy(joint)
    opt = torch.optim.Adam([p for e in joint.values() for p in e.parameters()], lr=1e-2)
    fit_estimators({m: (joint[m], *data[m]) for m in data}, opt, 10)
    for m, est in separate.items():
        est.fit(*data[m], torch.optim.Adam(est.parameters(), lr=1e-2), 10)
        for p, q in zip(est.parameters(), joint[m].parameters(), strict=True):
            assert torch.equal(p, q)


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("dims", [{"image": 24, "text": 20}, {"image": 48, "text": 7}, {"image": 4096, "text": 384}])
def test_any_feature_width_works(dims):
    setup, data, model, _ = make(feature_dims=dims)
    out = model(data.features, data.adj, data.item_graph)
    m = setup.model
    assert out.user.shape == (data.n_users, 2 * m.embedding_dim)
    assert out.item.shape == (data.n_items, 2 * m.embedding_dim)
    for name, d in dims.items():
        assert out.generic[name].shape[1] + out.unique[name].shape[1] == d


def test_every_parameter_gets_a_gradient():
    setup, data, model, estimators = make()
    opt, est_opt = optimizers(setup, model, estimators)
    for p in model.parameters():
        p.grad = None
    train_step(model, estimators, opt, est_opt, data, *batch(data), setup)
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_zero_weights_mean_plain_bpr():
    setup, data, model, estimators = make({"loss": {"club_weight": 0.0, "solosim_weight": 0.0}})
    reference = copy.deepcopy(model)
    opt, est_opt = optimizers(setup, model, estimators)
    est_before = copy.deepcopy(estimators.state_dict())
    users, pos, neg = batch(data)
    train_step(model, estimators, opt, est_opt, data, users, pos, neg, setup)
    aux = [p for n, p in model.named_parameters() if n.startswith(("club_", "solosim_"))]
    assert aux and all(p.grad is None for p in aux)
    assert all(torch.equal(est_before[k], v) for k, v in estimators.state_dict().items())
    # the same step by hand: plain BPR on the same batch
    ref_opt = torch.optim.Adam(reference.parameters(), lr=setup.train.lr)
    reference.train()
    out = reference(data.features, data.adj, data.item_graph)
    bpr_loss(out.user[users], out.item[pos], out.item[neg]).backward()
    ref_opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7), name


def test_optimisers_do_not_cross():
    setup, data, model, estimators = make()
    opt, est_opt = optimizers(setup, model, estimators)
    model_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    est_ids = {id(p) for g in est_opt.param_groups for p in g["params"]}
    assert model_ids == {id(p) for p in model.parameters()}
    assert est_ids == {id(p) for p in estimators.parameters()}
    assert not model_ids & est_ids
    # a model step leaves the estimators as they were after their own steps
    users, pos, neg = batch(data)
    out = model(data.features, data.adj, data.item_graph)
    items = torch.unique(pos)
    for m, (g, s) in model.club_pairs(out, items).items():
        estimators[m].fit(g, s, est_opt, 2)
    est_after_fit = copy.deepcopy(estimators.state_dict())
    model_before = copy.deepcopy(model.state_dict())
    loss = sum(estimators[m].bound(g, s) for m, (g, s) in model.club_pairs(out, items).items())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(est_after_fit[k], v) for k, v in estimators.state_dict().items())
    assert any(not torch.equal(model_before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("params", [
    {"model": {"modalities": ["text"]}},
    {"loss": {"distance": "l2"}},
    {"club": {"pairing": "reference", "steps": 2}},
])
def test_variants_train(params):
    setup, data, model, estimators = make(params)
    opt, est_opt = optimizers(setup, model, estimators)
    parts = train_step(model, estimators, opt, est_opt, data, *batch(data), setup)
    assert np.isfinite(parts["loss"])
    assert ("solosim" in parts) == (len(setup.model.modalities) == 2)


def test_training_learns():
    setup, data, model, estimators = make({"train": {"lr": 1e-2, "batch_size": 128, "max_epochs": 8,
                                                     "patience": 8, "seed": 5}})
    res = fit(model, estimators, data, setup, torch.device("cpu"), log=lambda s: None)
    model.load_state_dict(res.best_state)
    # clustered toy data: 15 of 60 items are relevant; random top-10 would recall ~1/6
    assert evaluate(model, data, "test", [10])["recall@10"] > 0.4


def test_two_cpu_runs_give_identical_metrics():
    """Big enough for torch to use several threads (where sparse products are not
    deterministic unless asked to be)."""
    results = []
    for _ in range(2):
        setup, data, model, estimators = make({"train": {"lr": 1e-3, "batch_size": 2048, "max_epochs": 3,
                                                         "seed": 5}}, n_users=1500, n_items=600)
        res = fit(model, estimators, data, setup, torch.device("cpu"), log=lambda s: None)
        model.load_state_dict(res.best_state)
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in res.history]
        results.append((history, evaluate(model, data, "test", [10, 20])))
    assert results[0] == results[1]
