"""MGCN (Yu et al., ACM MM 2023), alone and with SEA's separation, checked against its
definition on a hand-sized graph (every matrix dense and built here from the raw edges and
features), through the Recommender interface and the real trainer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_fit_learns, with_features
from test_sea import grads_missing, make, make_batch, make_setup, step, train

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.mgcn import MGCN, MGCNConfig

EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (2, 0), (3, 4), (3, 2), (4, 3), (4, 4), (4, 1)]


def tiny_data(dims=None) -> GraphData:
    """5 users, 5 items; every split non-empty."""
    dims = dims or {"image": 4, "text": 3}
    rows = [(u, i, "train") for u, i in EDGES] + [(0, 2, "valid"), (1, 3, "test"), (3, 0, "test")]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(7)
    return GraphData.build(inter, 5, {m: g.normal(size=(5, d)).astype(np.float32) for m, d in dims.items()})


def build(data: GraphData, cfg: dict | None = None, loss: dict | None = None) -> MGCN:
    torch.manual_seed(0)
    setup = make_setup(
        "mgcn", {"embedding_dim": 6, "knn_k": 2} | (cfg or {}), loss=loss, modalities=list(data.features)
    )
    return MGCN.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)


# ------------------------------------------------------------------ the definition, dense


def dense_adjacency(n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite training graph, users then items."""
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    for u, i in EDGES:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def dense_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each item linked to its k most cosine-similar other items, rows and columns
    normalised by the row degrees (k): entries 1/k."""
    x = x.double() / x.double().norm(dim=1, keepdim=True)
    sim = x @ x.T
    n = len(x)
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -sim[i, j].item())
        a[i, others[:k]] = 1.0
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def expected_views(model: MGCN, data: GraphData, k: int) -> dict[str, torch.Tensor]:
    """The ID view, the modality view and the final vectors, from the definition in float64."""
    U, n_items = data.n_users, data.n_items
    p = {n: t.detach().double() for n, t in model.named_parameters()}
    adj = dense_adjacency(U, n_items)
    x = torch.cat([p["user.weight"], p["item.weight"]])
    layers = [x]
    for _ in range(model.ui_layers):
        layers.append(adj @ layers[-1])
    id_view = torch.stack(layers).mean(0)
    R = adj[:U, U:]
    views = []
    for m in model.modalities:
        f = data.features[m].double()
        projected = f @ p[f"projections.{m}.weight"].T + p[f"projections.{m}.bias"]
        gate = torch.sigmoid(projected @ p[f"purifiers.{m}.weight"].T + p[f"purifiers.{m}.bias"])
        h = p["item.weight"] * gate
        S = dense_knn(data.features[m], k)
        for _ in range(model.item_layers):
            h = S @ h
        views.append(torch.cat([R @ h, h]))
    w1, b1, w2 = p["attention.0.weight"], p["attention.0.bias"], p["attention.2.weight"]
    scores = torch.cat([torch.tanh(v @ w1.T + b1) @ w2.T for v in views], dim=1)  # [N, M]
    alpha = scores.exp() / scores.exp().sum(1, keepdim=True)
    common = sum(alpha[:, j : j + 1] * v for j, v in enumerate(views))
    specific = [
        torch.sigmoid(id_view @ p[f"preferences.{m}.weight"].T + p[f"preferences.{m}.bias"]) * (v - common)
        for m, v in zip(model.modalities, views)
    ]
    modality_view = (common + sum(specific)) / (len(views) + 1)
    final = id_view + modality_view
    return {"id_view": id_view, "modality_view": modality_view, "user": final[:U], "item": final[U:]}


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Mean over rows i of −log(exp(cos(a_i, b_i)/τ) / Σ_j exp(cos(a_i, b_j)/τ))."""
    a, b = a.double(), b.double()
    cos = lambda x, y: (x @ y / (x.norm() * y.norm())).item()  # noqa: E731
    n = len(a)
    return (
        sum(
            -math.log(math.exp(cos(a[i], b[i]) / tau) / sum(math.exp(cos(a[i], b[j]) / tau) for j in range(n)))
            for i in range(n)
        )
        / n
    )


# ------------------------------------------------------------------ config


def test_registered_with_its_section_holding_the_defaults():
    cls = model_class("mgcn")
    assert cls is MGCN and cls.Config is MGCNConfig and cls.uses_features
    assert MGCNConfig.from_dict(load_params()["mgcn"], "mgcn") == MGCNConfig()
    assert MGCNConfig() == MGCNConfig(64, 2, 1, 10, 1e-4, 0.01, 0.2, "none", 0.5, 32)  # MMRec's defaults


@pytest.mark.parametrize(
    "bad",
    [
        {"embedding_dim": 0},
        {"ui_layers": -1},
        {"item_layers": -1},
        {"knn_k": 0},
        {"reg_weight": -1e-4},
        {"cl_weight": -0.1},
        {"cl_temperature": 0.0},
        {"separation": "clip"},
        {"generic_fraction": 1.0},
        {"head_dim": 0},
    ],
)
def test_a_bad_value_is_one_line_naming_the_param(bad):
    (field,) = bad
    with pytest.raises(ConfigError, match=rf"^params\.yaml \[mgcn\]: {field}") as err:
        MGCNConfig.from_dict(bad, "mgcn")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ forward and losses


@pytest.mark.parametrize("cfg", [{}, {"ui_layers": 1, "item_layers": 2}])
def test_forward_matches_the_definition(cfg):
    data = tiny_data()
    model = build(data, cfg)
    with torch.no_grad():
        emb = model.eval()(data)
    expected = expected_views(model, data, k=2)
    for key in ("user", "item"):
        assert torch.allclose(getattr(emb, key).double(), expected[key], atol=1e-5), key
    for key in ("id_view", "modality_view"):
        assert torch.allclose(emb.extras[key].double(), expected[key], atol=1e-5), key
    assert model.score(emb, torch.arange(5)).shape == (5, 5)


def test_one_modality_is_fused_too():
    data = tiny_data({"text": 3})
    model = build(data)
    with torch.no_grad():
        emb = model.eval()(data)
    expected = expected_views(model, data, k=2)
    assert torch.allclose(emb.item.double(), expected["item"], atol=1e-5)
    # one modality: the common part is its view, the specific part 0, the modality view half of it
    assert torch.allclose(emb.extras["modality_view"].double(), expected["modality_view"], atol=1e-5)


def test_the_item_graphs_are_frozen_top_k_and_out_of_the_state_dict():
    data = tiny_data()
    model = build(data, {"knn_k": 3})
    for m in ("image", "text"):
        assert torch.allclose(model.item_graphs[m].matrix.to_dense().double(), dense_knn(data.features[m], 3))
        assert model.item_graphs[m].matrix.values().numel() == 5 * 3  # sparse top-k, never dense
    assert torch.allclose(model.user_item.matrix.to_dense().double(), dense_adjacency(5, 5)[:5, 5:])
    assert not any("graph" in n or "user_item" in n for n in model.state_dict())
    assert not any("graph" in n or "user_item" in n for n, _ in model.named_parameters())


def test_loss_terms_match_their_definitions():
    data = tiny_data()
    model = build(data, {"reg_weight": 0.5, "cl_weight": 0.3, "cl_temperature": 0.4})
    neg = torch.tensor([[3, 2], [0, 4], [1, 0], [2, 0]])
    batch = Batch(torch.tensor([0, 1, 3, 4]), torch.tensor([1, 2, 4, 3]), neg)
    emb = model.train()(data)
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"reg", "cl"} and terms["reg"].weight == 0.5 and terms["cl"].weight == 0.3
    u, p, n = (t.detach().double() for t in (emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]))
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 4
    assert terms["reg"].value.item() == pytest.approx(reg.item(), rel=1e-5)
    mm, ids = emb.extras["modality_view"].detach(), emb.extras["id_view"].detach()
    cl = info_nce(mm[5 + batch.pos], ids[5 + batch.pos], 0.4) + info_nce(mm[batch.users], ids[batch.users], 0.4)
    assert terms["cl"].value.item() == pytest.approx(cl, rel=1e-5)
    assert build(data, {"reg_weight": 0.0, "cl_weight": 0.0}).extra_losses(emb, batch) == {}


def test_eval_is_deterministic():
    data = tiny_data()
    model = build(data).eval()
    with torch.no_grad():
        a, b = model(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)


# ------------------------------------------------------------------ training


def test_gradients_reach_every_parameter():
    model, data = make("mgcn")
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "cl"} <= set(parts)
    assert not grads_missing(model)


def test_training_lowers_the_loss_and_learns():
    model, data = make("mgcn")
    assert_fit_learns("mgcn", model, data, epochs=8, loss_ratio=0.8)


def test_mgcn_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("mgcn", {"separation": "sea"})
    assert model.projections["image"].in_features == data.features["image"].shape[1]
    estimators = {id(p) for p in model.separation.estimator_parameters()}
    assert estimators and not estimators & {id(p) for p in model.main_parameters()}
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "cl", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)


def test_mgcn_sea_projects_the_split_features():
    data = tiny_data({"image": 6, "text": 4})
    model = build(data, {"separation": "sea"})
    sep = model.separation
    with torch.no_grad():
        split = {m: data.features[m] @ sep.split[m].weight.T + sep.split[m].bias for m in ("image", "text")}
        emb = model.eval()(data)
        # the same model reading the materialised split as its raw features, without the separation
        model.separation = None
        other = model(with_features(data, split))
    assert torch.allclose(emb.item, other.item, atol=1e-5) and torch.allclose(emb.user, other.user, atol=1e-5)


def test_the_separation_leaves_the_backbone_initialisation_alone():
    plain, _ = make("mgcn")
    with_sea, _ = make("mgcn", {"separation": "sea"})
    for key, p in plain.named_parameters():
        assert torch.equal(p, with_sea.get_parameter(key)), key


def test_runs_are_reproducible():
    states = []
    for _ in range(2):
        model, data = make("mgcn")
        train(model, data, epochs=2, seed=3)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_pointwise_is_the_function_in_pieces():
    from sea.models.mgcn import pointwise
    from sea.ops import GRAIN

    x = torch.randn(3 * GRAIN + 5, 3, generator=torch.Generator().manual_seed(0)) * 4
    calls = []
    out = pointwise(lambda t: calls.append(t.numel()) or torch.sigmoid(t), x)
    assert calls == [GRAIN] * 9 + [15] and out.shape == x.shape
    assert torch.allclose(out, torch.sigmoid(x), atol=1e-7, rtol=0)
    small = torch.randn(4, 5)
    assert torch.equal(pointwise(torch.tanh, small), torch.tanh(small))
