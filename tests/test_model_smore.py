"""SMORE (sea/models/smore.py) checked against its definition, computed here again in plain
NumPy (float64) on a hand-sized graph: the kNN and fusion graphs, the spectrum filters, the
item–item, behaviour and preference views, the L2 and InfoNCE terms; plus the gradients,
the config errors, the params.yaml section and a short training run."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.smore import SMORE, SMOREConfig, max_graph, user_item_block, weighted_knn_graph

# ------------------------------------------------------------------ a hand-sized graph

N_USERS, N_ITEMS = 5, 6
TRAIN = [(0, 0), (0, 1), (1, 1), (1, 2), (1, 5), (2, 3), (2, 0), (3, 4), (3, 5), (4, 2), (4, 3)]
SMALL = {"embedding_dim": 8, "ui_layers": 2, "item_layers": 2, "image_knn_k": 3, "text_knn_k": 2}


def tiny_data(dims=None) -> GraphData:
    """5 users, 6 items; every split non-empty."""
    dims = dims or {"image": 5, "text": 4}
    rows = [(u, i, "train") for u, i in TRAIN] + [(0, 2, "valid"), (1, 3, "test"), (4, 0, "test")]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(3)
    return GraphData.build(inter, N_ITEMS, {m: g.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in dims.items()})


def build(data: GraphData, cfg: dict | None = None, seed: int = 0) -> SMORE:
    torch.manual_seed(seed)
    setup = make_setup("smore", SMALL | (cfg or {}), modalities=list(data.features))
    model = SMORE.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)
    with torch.no_grad():  # non-zero biases, so that a misplaced one would show
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return model


# ------------------------------------------------------------------ the definition, in NumPy


def dense_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k cosine (self included) weighted by the cosine (≥ 0), w_ij / √(d_i d_j)."""
    x = x.astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    w = np.zeros_like(sim)
    for i in range(len(x)):
        nbrs = np.argsort(-sim[i], kind="stable")[:k]
        w[i, nbrs] = np.maximum(sim[i, nbrs], 0.0)
    d = w.sum(1)
    return w / np.sqrt(np.outer(d, d))


def dense_adjacency() -> np.ndarray:
    a = np.zeros((N_USERS + N_ITEMS,) * 2)
    for u, i in TRAIN:
        a[u, N_USERS + i] = a[N_USERS + i, u] = 1.0
    d = a.sum(1)
    return a / np.sqrt(np.outer(d, d))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def linear(layer, x):
    w = layer.weight.detach().double().numpy()
    return x @ w.T + (layer.bias.detach().double().numpy() if layer.bias is not None else 0.0)


def expected_views(model: SMORE, data: GraphData, cfg: dict) -> dict[str, np.ndarray]:
    """behaviour, side and final vectors of every node [users; items], as the paper defines them."""
    d, mods = cfg["embedding_dim"], list(data.features)
    ks = {"image": cfg["image_knn_k"], "text": cfg["text_knn_k"]}
    x = {m: data.features[m].double().numpy() for m in mods}
    graphs = {m: dense_knn(x[m], ks[m]) for m in mods}
    graphs["fusion"] = np.maximum.reduce([graphs[m] for m in mods])
    adj = dense_adjacency()
    r = adj[:N_USERS, N_USERS:]
    user, item = (e.weight.detach().double().numpy() for e in (model.user, model.item))
    complex_filter = {v: model.filters[v].detach().double().numpy() @ np.array([1.0, 1j]) for v in model.views}

    spectra = {m: np.fft.rfft(linear(model.projections[m], x[m]), axis=1, norm="ortho") for m in mods}
    spectra["fusion"] = np.prod([spectra[m] for m in mods], axis=0)
    filtered = {v: np.fft.irfft(spectra[v] * complex_filter[v], n=d, axis=1, norm="ortho") for v in model.views}

    layers, h = [np.concatenate([user, item])], np.concatenate([user, item])
    for _ in range(cfg["ui_layers"]):
        h = adj @ h
        layers.append(h)
    behaviour = np.mean(layers, axis=0)

    views = {}
    for v in model.views:
        h = item * sigmoid(linear(model.item_gates[v][0], filtered[v]))
        for _ in range(cfg["item_layers"]):
            h = graphs[v] @ h
        views[v] = np.concatenate([r @ h, h])
    prefer = {v: sigmoid(linear(model.preference_gates[v][0], behaviour)) for v in model.views}
    side = prefer["fusion"] * views["fusion"]
    for m in mods:
        q = model.queries[m]
        attention = softmax(linear(q[2], np.tanh(linear(q[0], views["fusion"]))))
        side = side + prefer[m] * attention * views[m]
    side = side / (len(mods) + 1)
    return {"behaviour": behaviour, "side": side, "final": behaviour + side}


def info_nce(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = np.exp(a @ b.T / tau)
    return float(np.mean(-np.log(np.diag(s) / s.sum(1))))


# ------------------------------------------------------------------ registry and params


def test_registered_with_its_section_holding_the_defaults():
    params = load_params()
    cls = model_class("smore")
    assert cls is SMORE and cls.Config is SMOREConfig and cls.uses_features
    assert SMOREConfig.from_dict(params["smore"], "smore") == SMOREConfig()
    assert set(params["smore"]) == set(SMOREConfig().to_dict())
    space = params["tune"]["spaces"]["smore"]
    assert set(space) <= set(SMOREConfig().to_dict())
    assert np.prod([len(v) for v in space.values()]) <= 12
    for key, values in space.items():  # every grid point is a valid section
        for value in values:
            SMOREConfig.from_dict({key: value}, "smore")


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("ui_layers", -1),
        ("item_layers", -1),
        ("image_knn_k", 0),
        ("text_knn_k", 0),
        ("cl_weight", -0.1),
        ("temperature", 0.0),
        ("reg_weight", -1e-4),
        ("dropout", 1.0),
        ("separation", "clip"),
        ("generic_fraction", 1.0),
        ("head_dim", 0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^params\.yaml \[smore\]: {field} "):
        SMOREConfig.from_dict({field: value}, "smore")


# ------------------------------------------------------------------ graphs


@pytest.mark.parametrize("k", [1, 3, 6, 9])
def test_knn_graph_matches_its_definition_whatever_the_chunk(k):
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(N_ITEMS, 4)), dtype=torch.float32)
    expected = dense_knn(x.numpy(), min(k, N_ITEMS))
    for chunk in (1, 4, 1024):
        got = weighted_knn_graph(x, k, chunk=chunk).to_dense().double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert np.all(np.diag(got) > 0)  # each item is its own first neighbour


def test_knn_graph_drops_negative_cosines():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.9, 0.2]])
    got = weighted_knn_graph(x, 3).to_dense()
    assert got[0, 1] == 0 and got[1, 0] == 0 and got[0, 2] > 0
    assert torch.isfinite(got).all()


def test_fusion_graph_is_the_entrywise_maximum():
    data = tiny_data()
    a, b = (weighted_knn_graph(data.features[m], k) for m, k in (("image", 3), ("text", 2)))
    got = max_graph([a, b]).to_dense()
    assert torch.equal(got, torch.maximum(a.to_dense(), b.to_dense()))
    model = build(data)
    assert torch.equal(model.item_graphs["fusion"].matrix.to_dense(), got)


def test_user_item_block_is_the_normalised_adjacencys():
    data = tiny_data()
    got = user_item_block(data.adj, N_USERS, N_ITEMS).to_dense().double().numpy()
    np.testing.assert_allclose(got, dense_adjacency()[:N_USERS, N_USERS:], rtol=1e-6)


# ------------------------------------------------------------------ forward and losses


@pytest.mark.parametrize("dim", [8, 7])
def test_forward_matches_its_definition(dim):
    data = tiny_data()
    model = build(data, {"embedding_dim": dim}).eval()
    with torch.no_grad():
        emb = model(data)
    expected = expected_views(model, data, SMALL | {"embedding_dim": dim})["final"]
    np.testing.assert_allclose(emb.user.double().numpy(), expected[:N_USERS], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(emb.item.double().numpy(), expected[N_USERS:], rtol=1e-4, atol=1e-6)


def test_forward_with_one_modality_matches_its_definition():
    data = tiny_data({"text": 4})
    model = build(data).eval()
    assert model.views == ["text", "fusion"]
    with torch.no_grad():
        emb = model(data)
    expected = expected_views(model, data, SMALL)["final"]
    np.testing.assert_allclose(emb.item.double().numpy(), expected[N_USERS:], rtol=1e-4, atol=1e-6)


def test_losses_match_their_definitions():
    data = tiny_data()
    cfg = {"dropout": 0.0, "cl_weight": 0.3, "reg_weight": 0.02, "temperature": 0.5}
    model = build(data, cfg).train()
    negatives = torch.tensor([[3, 4], [0, 3], [4, 0], [1, 2]])
    batch = Batch(torch.tensor([0, 1, 1, 3]), torch.tensor([1, 2, 5, 4]), negatives)
    emb = model(data)
    views = expected_views(model, data, SMALL | cfg)
    z = views["final"]
    u, p, n = z[batch.users.numpy()], z[N_USERS + batch.pos.numpy()], z[N_USERS + batch.neg.numpy()]
    reg = 0.5 * ((u**2).sum() + (p**2).sum() + (n**2).sum() / 2) / 4
    items, users = N_USERS + batch.pos.numpy(), batch.users.numpy()
    cl = info_nce(views["side"][items], views["behaviour"][items], 0.5) + info_nce(
        views["side"][users], views["behaviour"][users], 0.5
    )
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"reg", "cl"}
    assert terms["reg"].weight == 0.02 and terms["cl"].weight == 0.3
    assert terms["reg"].value.item() == pytest.approx(reg, rel=1e-4)
    assert terms["cl"].value.item() == pytest.approx(cl, rel=1e-4)
    # a zero weight skips its term
    assert build(data, {"cl_weight": 0.0, "reg_weight": 0.0}).extra_losses(emb, batch) == {}


def test_dropout_acts_in_training_only_and_eval_is_deterministic():
    data = tiny_data()
    model = build(data, {"dropout": 0.5})
    model.eval()
    with torch.no_grad():
        a, b = model(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item) and a.extras == {}
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = model(data)
    assert not torch.equal(c.item, a.item)
    assert set(c.extras) == {"behaviour", "side"}


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("separation", ["none", "sea"])
def test_gradients_reach_every_parameter(separation):
    model, data = make("smore", {"separation": separation})
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-3)
    logs = step(model, data, make_batch(data, negatives=2), opt)
    expected = {"loss", "bpr", "reg", "cl"} | ({"club", "solosim"} if separation == "sea" else set())
    assert expected <= set(logs)
    assert grads_missing(model) == []


def test_the_separation_leaves_the_backbone_initialisation_alone():
    plain, _ = make("smore")
    sea, _ = make("smore", {"separation": "sea"})
    for name, p in plain.state_dict().items():
        assert torch.equal(p, sea.state_dict()[name]), name
    assert sea.separation is not None and plain.separation is None


def test_graphs_stay_frozen_and_out_of_the_state_dict():
    model, data = make("smore")
    before = {v: g.values.clone() for v, g in model.item_graphs.items()}
    step(model, data, make_batch(data), torch.optim.Adam(model.parameters(), lr=1e-2))
    assert all(torch.equal(g.values, before[v]) for v, g in model.item_graphs.items())
    assert not any("graph" in k or "user_items" in k for k in model.state_dict())


def loss_of(model, data: GraphData, batch: Batch) -> float:
    """The trainer's total loss on ``batch`` (computed on a copy, left unchanged)."""
    copied = copy.deepcopy(model)
    return step(copied, data, batch, torch.optim.SGD(copied.parameters(), lr=0.0))["loss"]


def test_a_short_training_run_lowers_the_loss():
    model, data = make("smore")
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    batches = [make_batch(data, n=128, seed=s) for s in range(4)]
    torch.manual_seed(0)
    first = np.mean([loss_of(model, data, b) for b in batches])
    for _ in range(15):
        for b in batches:
            step(model, data, b, opt)
    torch.manual_seed(0)
    last = np.mean([loss_of(model, data, b) for b in batches])
    assert last < 0.8 * first
