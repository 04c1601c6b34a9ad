"""GUME (Lin et al., CIKM 2024) checked against its definition on a hand-sized graph (every
matrix dense and built here from the raw edges and features), through the Recommender
interface and the real trainer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_fit_learns
from test_model_mgcn import info_nce
from test_sea import grads_missing, make, make_batch, make_setup, step, train

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.gume import GUME, GUMEConfig, neighbour_lists

EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (2, 0), (3, 4), (3, 2), (4, 3), (4, 4), (4, 1), (0, 5)]
U, N_ITEMS, K = 5, 6, 3


def tiny_data(dims=None) -> GraphData:
    """5 users, 6 items; every split non-empty."""
    dims = dims or {"image": 4, "text": 3}
    rows = [(u, i, "train") for u, i in EDGES] + [(0, 2, "valid"), (1, 3, "test"), (3, 0, "test")]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(3)
    return GraphData.build(inter, N_ITEMS, {m: g.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in dims.items()})


def build(data: GraphData, cfg: dict | None = None) -> GUME:
    torch.manual_seed(0)
    setup = make_setup("gume", {"embedding_dim": 6, "knn_k": K} | (cfg or {}), modalities=list(data.features))
    return GUME.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)


# ------------------------------------------------------------------ the definition, dense


def dense_lists(x: torch.Tensor, k: int) -> list[set[int]]:
    """Each item's k most cosine-similar other items, by sorting."""
    x = x.double() / x.double().norm(dim=1, keepdim=True)
    sim = x @ x.T
    n = len(x)
    return [set(sorted((j for j in range(n) if j != i), key=lambda j: -sim[i, j].item())[:k]) for i in range(n)]


def sym_norm(a: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2, D the row sums."""
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * a * d[None, :]


def dense_knn(data: GraphData, m: str) -> torch.Tensor:
    a = torch.zeros(N_ITEMS, N_ITEMS, dtype=torch.float64)
    for i, nbrs in enumerate(dense_lists(data.features[m], K)):
        a[i, sorted(nbrs)] = 1.0
    return sym_norm(a)


def dense_links(data: GraphData) -> torch.Tensor:
    """C: item i -> j when j is in i's list of every modality."""
    lists = [dense_lists(data.features[m], K) for m in data.features]
    c = torch.zeros(N_ITEMS, N_ITEMS, dtype=torch.float64)
    for i in range(N_ITEMS):
        for j in set.intersection(*(lst[i] for lst in lists)):
            c[i, j] = 1.0
    return c


def dense_enhanced(data: GraphData) -> torch.Tensor:
    a = torch.zeros(U + N_ITEMS, U + N_ITEMS, dtype=torch.float64)
    for u, i in EDGES:
        a[u, U + i] = a[U + i, u] = 1.0
    a[U:, U:] = dense_links(data)
    return sym_norm(a)


def lightgcn(adj: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    out = [x]
    for _ in range(layers):
        out.append(adj @ out[-1])
    return torch.stack(out).mean(0)


def expected(model: GUME, data: GraphData) -> dict[str, torch.Tensor]:
    """Every view and the final vectors from the definition, in float64."""
    p = {n: t.detach().double() for n, t in model.named_parameters()}
    adj = dense_enhanced(data)
    id_view = lightgcn(adj, torch.cat([p["user.weight"], p["item.weight"]]), model.ui_layers)
    views, extended = [], []
    for m in model.modalities:
        f = data.features[m].double()
        projected = f @ p[f"projections.{m}.weight"].T + p[f"projections.{m}.bias"]
        h = p["item.weight"] * torch.sigmoid(projected @ p[f"purifiers.{m}.weight"].T + p[f"purifiers.{m}.bias"])
        for _ in range(model.item_layers):
            h = dense_knn(data, m) @ h
        views.append(torch.cat([adj[:U, U:] @ h, h]))
        extended.append(lightgcn(adj, torch.cat([p[f"extended_users.{m}"], h]), model.ui_layers))
    w1, b1, w2 = p["attention.0.weight"], p["attention.0.bias"], p["attention.2.weight"]
    alpha = torch.softmax(torch.cat([torch.tanh(v @ w1.T + b1) @ w2.T for v in views], dim=1), dim=1)
    common = sum(alpha[:, j : j + 1] * v for j, v in enumerate(views))
    specific = [
        torch.sigmoid(id_view @ p[f"preferences.{m}.weight"].T + p[f"preferences.{m}.bias"]) * (v - common)
        for m, v in zip(model.modalities, views)
    ]
    modality_view = (common + sum(specific)) / (len(views) + 1)
    final = id_view + modality_view
    return {
        "id_view": id_view,
        "modality_view": modality_view,
        "views": views,
        "extended": sum(extended) / len(extended),
        "user": final[:U],
        "item": final[U:],
    }


# ------------------------------------------------------------------ config


def test_registered_with_its_section_holding_the_defaults():
    cls = model_class("gume")
    assert cls is GUME and cls.Config is GUMEConfig and cls.uses_features
    params = load_params()
    assert GUMEConfig.from_dict(params["gume"], "gume") == GUMEConfig()
    # the authors' GUME.yaml, Baby block
    assert GUMEConfig() == GUMEConfig(64, 3, 2, 10, 1e-5, 0.1, 0.01, 0.4, 0.01, 0.1, 0.1, 0.1)
    assert params["tune"]["spaces"]["gume"] == GUME.search_space


@pytest.mark.parametrize(
    "bad",
    [
        {"embedding_dim": 0},
        {"ui_layers": -1},
        {"item_layers": -1},
        {"knn_k": 0},
        {"reg_weight": -1e-4},
        {"extended_reg_weight": -0.1},
        {"bm_weight": -0.1},
        {"bm_temperature": 0.0},
        {"um_weight": -0.1},
        {"um_temperature": -1.0},
        {"vt_weight": -0.1},
        {"noise_eps": -0.1},
    ],
)
def test_a_bad_value_is_one_line_naming_the_param(bad):
    (field,) = bad
    with pytest.raises(ConfigError, match=rf"^params\.yaml \[gume\]: {field}") as err:
        GUMEConfig.from_dict(bad, "gume")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ graphs


def test_the_graphs_are_the_definitions_sparse_and_out_of_the_state_dict():
    data = tiny_data()
    model = build(data)
    assert dense_links(data).sum() > 0  # the toy data does link some items
    assert torch.allclose(model.adjacency.matrix.to_dense().double(), dense_enhanced(data), atol=1e-7)
    assert torch.allclose(model.user_item.matrix.to_dense().double(), dense_enhanced(data)[:U, U:], atol=1e-7)
    for m in ("image", "text"):
        assert torch.allclose(model.item_graphs[m].matrix.to_dense().double(), dense_knn(data, m), atol=1e-7)
        assert model.item_graphs[m].matrix.values().numel() == N_ITEMS * K  # sparse top-k
    assert not any("graph" in n or "user_item" in n or "adjacency" in n for n in model.state_dict())


def test_neighbour_lists_are_the_same_chunk_by_chunk():
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(1))
    whole = neighbour_lists(x, 4)
    assert torch.equal(whole, neighbour_lists(x, 4, rows_per_chunk=3))
    assert [set(r.tolist()) for r in whole] == dense_lists(x, 4)


# ------------------------------------------------------------------ forward and losses


@pytest.mark.parametrize("cfg", [{}, {"ui_layers": 1, "item_layers": 1}])
def test_forward_matches_the_definition(cfg):
    data = tiny_data()
    model = build(data, cfg)
    want = expected(model, data)
    with torch.no_grad():
        emb = model.eval()(data)
        train_emb = model.train()(data)
    for key in ("user", "item"):
        assert torch.allclose(getattr(emb, key).double(), want[key], atol=1e-5), key
        assert torch.allclose(getattr(train_emb, key).double(), want[key], atol=1e-5), key
    for key in ("id_view", "modality_view"):
        assert torch.allclose(emb.extras[key].double(), want[key], atol=1e-5), key
    assert "extended" not in emb.extras  # evaluation skips the extended views
    assert torch.allclose(train_emb.extras["extended"].double(), want["extended"], atol=1e-5)
    assert model.score(emb, torch.arange(U)).shape == (U, N_ITEMS)


def test_one_modality_links_along_its_own_lists():
    data = tiny_data({"text": 3})
    model = build(data)
    assert torch.allclose(model.adjacency.matrix.to_dense().double(), dense_enhanced(data), atol=1e-7)
    with torch.no_grad():
        emb = model.eval()(data)
    assert torch.allclose(emb.item.double(), expected(model, data)["item"], atol=1e-5)
    batch = Batch(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([[3], [0]]))
    assert "vt" not in model.train().extra_losses(model(data), batch)


def test_loss_terms_match_their_definitions():
    data = tiny_data()
    weights = {"reg_weight": 0.5, "extended_reg_weight": 0.2, "bm_weight": 0.3, "um_weight": 0.4, "vt_weight": 0.6}
    model = build(data, weights | {"bm_temperature": 0.3, "um_temperature": 0.25, "noise_eps": 0.0})
    neg = torch.tensor([[3, 2], [0, 4], [1, 0], [5, 0]])
    batch = Batch(torch.tensor([0, 1, 3, 4]), torch.tensor([1, 2, 4, 3]), neg)
    emb = model.train()(data)
    terms = model.extra_losses(emb, batch)
    names = {"reg": "reg_weight", "extended_reg": "extended_reg_weight", "bm": "bm_weight", "um": "um_weight"}
    assert set(terms) == set(names) | {"vt"} and terms["vt"].weight == 0.6
    assert all(terms[t].weight == weights[w] for t, w in names.items())
    want = expected(model, data)
    u, p, n = want["user"][batch.users], want["item"][batch.pos], want["item"][batch.neg]
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 4
    assert terms["reg"].value.item() == pytest.approx(reg.item(), rel=1e-5)
    ext_items = want["extended"][U:][batch.pos]
    assert terms["extended_reg"].value.item() == pytest.approx((0.5 * ext_items.pow(2).sum() / 4).item(), rel=1e-5)
    mm, ids, pos = want["modality_view"], want["id_view"], U + batch.pos
    bm = info_nce(mm[pos], ids[pos], 0.3) + info_nce(mm[batch.users], ids[batch.users], 0.3)
    assert terms["bm"].value.item() == pytest.approx(bm, rel=1e-5)
    a, b = want["views"]
    vt = (a.var() - b.var()).abs() + (a.mean() - b.mean()).abs()  # unbiased variance, as torch.var
    assert terms["vt"].value.item() == pytest.approx(vt.item(), rel=1e-4)
    # noise_eps 0: the noisy copies are the vectors themselves
    ext_u, mm_u = want["extended"][batch.users], mm[batch.users]
    um = info_nce(ext_u, mm_u, 0.25) + info_nce(mm_u, mm_u, 0.25) + info_nce(ext_u, ext_u, 0.25)
    assert terms["um"].value.item() == pytest.approx(um, rel=1e-5)
    zero = {k: 0.0 for k in weights}
    assert build(data, zero).train().extra_losses(build(data, zero).train()(data), batch) == {}


def test_the_noisy_copies_move_each_row_by_eps_along_its_signs():
    model = build(tiny_data(), {"noise_eps": 0.1})
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(4)
    y = model.perturbed(x)
    delta = y - x
    assert torch.allclose(delta.norm(dim=1), torch.full((7,), 0.1), atol=1e-6)
    assert (delta * torch.sign(x) >= 0).all()
    torch.manual_seed(4)
    assert torch.equal(model.perturbed(x), y) and not torch.equal(model.perturbed(x), y)


def test_eval_is_deterministic():
    data = tiny_data()
    model = build(data).eval()
    with torch.no_grad():
        a, b = model(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)


# ------------------------------------------------------------------ training


def test_gradients_reach_every_parameter():
    model, data = make("gume")
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "bm", "vt", "um", "extended_reg"} <= set(parts)
    assert not grads_missing(model)


def test_training_lowers_the_loss_and_learns():
    model, data = make("gume")
    assert_fit_learns("gume", model, data, epochs=8, loss_ratio=0.8)


def test_runs_are_reproducible():
    states = []
    for _ in range(2):
        model, data = make("gume")
        train(model, data, epochs=2, seed=3)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
