"""DRAGON (sea/models/dragon.py) against its definition, computed here independently with
dense numpy on hand-sized graphs: the user–user co-occurrence graph, the forward pass, the
penalty and the total loss against MMRec's; gradients, training, config, params.yaml."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from model_checks import (
    assert_fit_learns,
    assert_one_modality_is_its_own_vectors,
    assert_sea_reads_its_splits,
    with_features,
)
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.dragon import DRAGON, DRAGONConfig
from sea.models.graphs import co_occurrence_topk, user_user_graph

# ------------------------------------------------------------------ the definition, densely


def dense_user_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int) -> np.ndarray:
    """Row u: softmax over u's top-k co-occurring users (count desc, then id asc; count > 0,
    not u) of their counts of common distinct items; 0 elsewhere."""
    r = np.zeros((n_users, n_items))
    r[users, items] = 1.0
    common = r @ r.T
    out = np.zeros((n_users, n_users))
    for u in range(n_users):
        cands = sorted((-common[u, v], v) for v in range(n_users) if v != u and common[u, v] > 0)[:k]
        if cands:
            c = np.array([-c for c, _ in cands])
            w = np.exp(c - c.max()) / np.exp(c - c.max()).sum()
            out[u, [v for _, v in cands]] = w
    return out


def dense_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k cosine neighbours (not itself), then D^-1/2 A D^-1/2 with D the row sums."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    a = np.zeros_like(sim)
    for i in range(len(x)):
        a[i, np.argsort(-sim[i])[:k]] = 1.0
    d = a.sum(1) ** -0.5
    return d[:, None] * a * d[None, :]


def dense_adjacency(data: GraphData) -> np.ndarray:
    n = data.n_users + data.n_items
    a = np.zeros((n, n))
    u, i = data.train_users.numpy(), data.train_items.numpy() + data.n_users
    a[u, i] = a[i, u] = 1.0
    d = a.sum(1)
    d = np.where(d > 0, d, np.inf) ** -0.5
    return d[:, None] * a * d[None, :]


def expected_vectors(model: DRAGON, data: GraphData, knn_k: int, user_k: int, image_weight: float = 0.1):
    """User and item vectors from the definition (numpy, float64)."""
    U = data.n_users
    adj = dense_adjacency(data)
    h = []
    for m in model.modalities:
        lin1, _, lin2 = model.mlp[m]
        x = data.features[m].double().numpy()
        f = np.where(
            (z := x @ lin1.weight.double().detach().numpy().T + lin1.bias.double().detach().numpy()) > 0, z, 0.01 * z
        )
        f = f @ lin2.weight.double().detach().numpy().T + lin2.bias.double().detach().numpy()
        e = np.concatenate([model.preference[m].double().detach().numpy(), f])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        total, layer = e.copy(), e
        for _ in range(model.ui_layers):
            layer = adj @ layer
            total = total + layer
        h.append(total)
    alpha = model.fusion.double().detach().numpy()
    user = np.concatenate([alpha[:, j : j + 1] * hm[:U] for j, hm in enumerate(h)], axis=1)
    item = np.concatenate([hm[U:] for hm in h], axis=1)
    s_item = image_weight * dense_knn(data.features["image"].double().numpy(), knn_k) + (1 - image_weight) * dense_knn(
        data.features["text"].double().numpy(), knn_k
    )
    hop = item
    for _ in range(model.item_layers):
        hop = s_item @ hop
    s_user = dense_user_graph(data.train_users.numpy(), data.train_items.numpy(), U, data.n_items, user_k)
    return user + s_user @ user, item + hop


def hand_data() -> GraphData:
    """5 users, 6 items; user 4 shares no item with anyone, users 0 and 2 tie with user 1."""
    train = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 3), (2, 1), (2, 2), (2, 4), (3, 3), (3, 5), (4, 4)]
    rows = [(u, i, "train") for u, i in train] + [(0, 3, "valid"), (1, 2, "test"), (3, 0, "valid"), (4, 5, "test")]
    g = np.random.default_rng(7)
    feats = {"image": g.normal(size=(6, 5)).astype(np.float32), "text": g.normal(size=(6, 4)).astype(np.float32)}
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6, feats)


def build(data: GraphData, **cfg) -> DRAGON:
    torch.manual_seed(0)
    setup = make_setup(
        "dragon",
        {"embedding_dim": 4, "mlp_hidden_dim": 6, "knn_k": 2, "user_knn_k": 2} | cfg,
        modalities=list(data.features),
    )
    return DRAGON.build(data, setup.model_cfg, setup.model.modalities)


# ------------------------------------------------------------------ the user–user graph


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_user_graph_is_the_softmax_over_each_users_top_k_co_occurring_users(k):
    g = np.random.default_rng(k)
    n_users, n_items = 14, 9
    users, items = g.integers(0, n_users, 50), g.integers(0, n_items, 50)  # repeats: counted once
    expected = dense_user_graph(users, items, n_users, n_items, k)
    got = user_user_graph(torch.as_tensor(users), torch.as_tensor(items), n_users, n_items, k).to_dense()
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    r = np.zeros((n_users, n_items))
    r[users, items] = 1.0
    co_occurring = ((r @ r.T) * (1 - np.eye(n_users)) > 0).sum(1)
    assert ((expected > 0).sum(1) == np.minimum(co_occurring, k)).all()
    assert k > 3 or (co_occurring > k).any()  # the cut at k is exercised


def test_user_graph_by_hand_and_chunked():
    data = hand_data()
    rows, cols, counts = co_occurrence_topk(data.train_users, data.train_items, 5, 6, 1)
    # user 0 shares 2 items with 1 and 2 (a tie: the lower id wins); 1: 2 with 0; 2: 2 with 0;
    # 3 shares item 3 with 1; 4 shares item 4 with 2
    assert rows.tolist() == [0, 1, 2, 3, 4] and cols.tolist() == [1, 0, 0, 1, 2]
    assert counts.tolist() == [2.0, 2.0, 2.0, 1.0, 1.0]
    for chunk in (1, 5, 7, 1000):  # one user per block, and several
        again = co_occurrence_topk(data.train_users, data.train_items, 5, 6, 2, chunk_elements=chunk)
        whole = co_occurrence_topk(data.train_users, data.train_items, 5, 6, 2)
        assert all(torch.equal(a, b) for a, b in zip(again, whole))


def test_a_user_without_co_occurring_users_gets_no_user_hop():
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1])
    graph = user_user_graph(users, items, 3, 2, 40).to_dense()
    assert graph[2].abs().sum() == 0 and graph[0, 1] == 1.0 and graph[1, 0] == 1.0


# ------------------------------------------------------------------ forward and losses


def test_forward_matches_the_definition():
    data = hand_data()
    model = build(data)
    model.eval()
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data, knn_k=2, user_k=2)
    assert emb.user.shape == (5, 8) and emb.item.shape == (6, 8)
    np.testing.assert_allclose(emb.user.double().numpy(), user, atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), item, atol=1e-5)
    scores = model.score(emb, torch.arange(5))
    np.testing.assert_allclose(scores.double().numpy(), user @ item.T, atol=1e-4)


def test_forward_with_more_hops_matches_the_definition():
    data = hand_data()
    model = build(data, ui_layers=3, item_layers=2, user_knn_k=3)
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data, knn_k=2, user_k=3)
    np.testing.assert_allclose(emb.user.double().numpy(), user, atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), item, atol=1e-5)


def test_forward_is_deterministic_and_the_same_in_training_and_eval():
    data = hand_data()
    model = build(data)
    with torch.no_grad():
        a = model.train()(data)
        b, c = model.eval()(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert torch.equal(b.user, c.user) and torch.equal(b.item, c.item)


def test_graphs_switched_off_and_one_modality():
    data = hand_data()
    model = build(data)
    bare = build(data, item_layers=0, user_knn_k=0)
    bare.load_state_dict(model.state_dict())
    assert bare.user_graph is None
    with torch.no_grad():
        full, plain = model(data), bare(data)
    # the full model adds one hop over each homogeneous graph to the plain vectors
    torch.testing.assert_close(full.item, plain.item + torch.sparse.mm(model.item_graph.matrix, plain.item))
    torch.testing.assert_close(full.user, plain.user + torch.sparse.mm(model.user_graph.matrix, plain.user))
    # one modality: no fusion weight, the modality's own vectors
    text = with_features(data, {"text": data.features["text"]})
    assert_one_modality_is_its_own_vectors(build(text, user_knn_k=0, item_layers=0), text)


# ------------------------------------------------------------------ DRAGON+SEA


def test_dragon_sea_feeds_each_modalitys_split_to_its_mlp():
    data = hand_data()
    plain, sea = build(data), build(data, separation="sea")
    assert_sea_reads_its_splits(plain, sea, data)


def test_dragon_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("dragon", {"separation": "sea", "embedding_dim": 8, "mlp_hidden_dim": 16})
    assert not {id(p) for p in model.separation.estimator_parameters()} & {id(p) for p in model.main_parameters()}
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("dragon", {"embedding_dim": 8, "mlp_hidden_dim": 16, "user_knn_k": 5})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert {"fusion", "preference.image", "preference.text", "mlp.image.0.weight", "mlp.text.2.bias"} <= names


def test_trains():
    model, data = make("dragon", {"embedding_dim": 16, "mlp_hidden_dim": 32, "user_knn_k": 10})
    assert_fit_learns("dragon", model, data)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"mlp_hidden_dim": -1}, "mlp_hidden_dim"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"item_layers": -1}, "item_layers"),
        ({"knn_k": 0}, "knn_k"),
        ({"image_knn_weight": 1.5}, "image_knn_weight"),
        ({"user_knn_k": -1}, "user_knn_k"),
        ({"reg_weight": -1e-3}, "reg_weight"),
        ({"construction": "cat"}, "construction"),
        ({"separation": "clip"}, "separation"),
        ({"generic_fraction": 1.0}, "generic_fraction"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"\[dragon\].*{name}"):
        DRAGONConfig.from_dict(params, "dragon")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("dragon") is DRAGON and DRAGON.uses_features and DRAGON.Config is DRAGONConfig
    assert DRAGONConfig.from_dict(params["dragon"], "dragon") == DRAGONConfig()
    assert DRAGONConfig() == DRAGONConfig(64, 256, 2, 1, 10, 0.1, 40, 1e-3)  # MMRec's settings
    space = params["tune"]["spaces"]["dragon"]
    assert space["reg_weight"] == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5] and 1e-4 in space["train.lr"]
    assert F.leaky_relu(torch.tensor(-1.0)).item() == pytest.approx(-0.01)  # the MLP's slope, as MMRec's
