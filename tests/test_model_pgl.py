"""PGL (Principal Graph Learning, AAAI 2025): the forward pass in evaluation and training,
the local and global principal subgraphs and the contrastive term, each checked against its
definition computed here with plain dense numpy on a hand-sized graph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.pgl import PGL, PGLConfig, principal_reconstruction, weighted_draw

# 5 users, 6 items; user 4 has a single item, item 5 a single user.
EDGES = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (2, 4), (3, 3), (3, 4), (3, 1), (4, 5), (1, 0)]


def hand_graph(seed: int = 0) -> GraphData:
    rng = np.random.default_rng(seed)
    rows = [(u, i, "train") for u, i in EDGES] + [(u, (u + 3) % 6, "valid") for u in range(5)]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    feats = {"image": rng.normal(size=(6, 7)).astype(np.float32), "text": rng.normal(size=(6, 5)).astype(np.float32)}
    return GraphData.build(inter, 6, feats)


def make(data: GraphData, **overrides) -> PGL:
    torch.manual_seed(0)
    cfg = PGLConfig.from_dict({"embedding_dim": 4, "knn_k": 2} | overrides, "pgl")
    return PGL.build(data, cfg)


def dense_adjacency(edges, n_users: int, n_items: int) -> np.ndarray:
    """D^-1/2 A D^-1/2 of the bipartite graph, users then items, written out."""
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in edges:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    return inv[:, None] * a * inv[None, :]


def dense_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k cosine neighbours (not itself), symmetric-normalised by the out-degree k."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    a = np.zeros_like(sim)
    for i, row in enumerate(sim):
        a[i, np.argsort(-row, kind="stable")[:k]] = 1.0
    deg = a.sum(1)
    return a / np.sqrt(deg[:, None] * deg[None, :])


def expected_embeddings(model: PGL, data: GraphData, adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The definition: layer 0 (user id vectors; normalised projections per modality),
    the mean of L LightGCN layers over ``adj``, plus K hops over the kNN item graph."""
    blocks = []
    for m in ("image", "text"):
        p = model.projections[m]
        z = model.tables[m].detach().numpy() @ p.weight.detach().numpy().T + p.bias.detach().numpy()
        blocks.append(z / np.linalg.norm(z, axis=1, keepdims=True))
    items = np.concatenate(blocks, axis=1)
    users = np.concatenate([model.user[m].weight.detach().numpy() for m in ("image", "text")], axis=1)
    x = np.concatenate([users, items])
    layers, out = [x], x
    for _ in range(model.ui_layers):
        out = adj @ out
        layers.append(out)
    mean = np.mean(layers, axis=0)
    s = 0.1 * dense_knn(data.features["image"].numpy(), 2) + 0.9 * dense_knn(data.features["text"].numpy(), 2)
    latent = items
    for _ in range(model.item_layers):
        latent = s @ latent
    return mean[: data.n_users], mean[data.n_users :] + latent


def test_registered_and_params_yaml_holds_the_config_defaults():
    assert model_class("pgl") is PGL and PGL.uses_features
    assert PGLConfig.from_dict(load_params()["pgl"], "pgl") == PGLConfig()
    assert PGLConfig().mode == "local"


def test_eval_forward_is_the_definition_over_the_whole_graph():
    data = hand_graph()
    model = make(data, ui_layers=2, item_layers=1).eval()
    with torch.no_grad():
        emb = model(data)
        again = model(data)
    user, item = expected_embeddings(model, data, dense_adjacency(EDGES, 5, 6))
    np.testing.assert_allclose(emb.user.numpy(), user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.item.numpy(), item, rtol=1e-5, atol=1e-6)
    assert emb.user.shape == (5, 8) and emb.item.shape == (6, 8)  # one 4-wide block per modality
    assert torch.equal(emb.user, again.user) and torch.equal(emb.item, again.item)


def test_training_forward_propagates_over_this_epochs_local_subgraph():
    data = hand_graph()
    model = make(data, ui_layers=3, item_layers=2, keep_ratio=0.5)
    model.train()
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        model(data)
    gen = torch.Generator().manual_seed(3)
    model.on_epoch_start(1, gen)
    kept = model.kept_edges(torch.Generator().manual_seed(3))
    assert len(kept) == int(0.5 * len(EDGES))  # ⌊keep_ratio · E⌋
    edges = list(zip(model.edge_users[kept].tolist(), model.edge_items[kept].tolist(), strict=True))
    assert set(edges) <= set(EDGES)
    with torch.no_grad():
        emb = model(data)
    user, item = expected_embeddings(model, data, dense_adjacency(edges, 5, 6))
    np.testing.assert_allclose(emb.user.numpy(), user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.item.numpy(), item, rtol=1e-5, atol=1e-6)
    # a later epoch draws another subgraph from the same generator; evaluation ignores it
    first = model.principal.matrix.to_dense()
    model.on_epoch_start(2, gen)
    assert not torch.equal(first, model.principal.matrix.to_dense())
    with torch.no_grad():
        full = model.eval()(data)
    user, _ = expected_embeddings(model, data, dense_adjacency(EDGES, 5, 6))
    np.testing.assert_allclose(full.user.numpy(), user, rtol=1e-5, atol=1e-6)


def test_weighted_draw_follows_the_multinomial_law_without_replacement():
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gen = torch.Generator().manual_seed(0)
    first = np.zeros(4)
    pairs = {}
    n = 6000
    for _ in range(n):
        idx = weighted_draw(weight, 1, gen)
        first[idx.item()] += 1
        two = tuple(weighted_draw(weight, 2, gen).tolist())
        assert two[0] < two[1]  # distinct, increasing
        pairs[two] = pairs.get(two, 0) + 1
    np.testing.assert_allclose(first / n, [0.1, 0.2, 0.3, 0.4], atol=0.02)
    # P({0, 1}) without replacement = p0·p1/(1 − p0) + p1·p0/(1 − p1)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    expected = p[0] * p[1] / (1 - p[0]) + p[1] * p[0] / (1 - p[1])
    assert abs(pairs.get((0, 1), 0) / n - expected) < 0.01


def test_local_draw_favours_low_degree_edges():
    data = hand_graph()
    model = make(data, keep_ratio=0.3)
    du = np.bincount(model.edge_users.numpy(), minlength=5)
    di = np.bincount(model.edge_items.numpy(), minlength=6)
    np.testing.assert_allclose(
        model.edge_weight.numpy(), 1 / np.sqrt(du[model.edge_users.numpy()] * di[model.edge_items.numpy()]), rtol=1e-6
    )
    gen = torch.Generator().manual_seed(1)
    counts = np.zeros(len(EDGES))
    for _ in range(2000):
        counts[model.kept_edges(gen).numpy()] += 1
    lone = [k for k, (u, i) in enumerate(zip(model.edge_users.tolist(), model.edge_items.tolist())) if (u, i) == (4, 5)]
    assert counts[lone[0]] == counts.max()  # the edge of degree-1 endpoints is the most often kept


def test_global_subgraph_is_the_weighted_truncated_svd_of_the_user_item_block():
    data = hand_graph()
    a = dense_adjacency(EDGES, 5, 6)
    block = a[:5, 5:]
    rank, m = 4, 2
    for threshold in (0.0, 0.05):
        got = principal_reconstruction(torch.tensor(block, dtype=torch.float32).to_sparse(), rank, m, threshold)
        p, s, qt = np.linalg.svd(block)
        r = (p[:, :m] * (s[:m] * s[rank - m : rank])) @ qt[:m]
        r[np.abs(r) < threshold] = 0.0
        expected = np.zeros_like(a)
        expected[:5, 5:], expected[5:, :5] = r, r.T
        dense = got.to_dense().numpy()
        np.testing.assert_allclose(dense, expected, atol=1e-5)
        assert np.array_equal(dense, dense.T)  # exactly symmetric: propagate's spmm relies on it
        if threshold:
            assert 0 < got.values().numel() < 2 * r.size
    # the model propagates over it in training and is unchanged by on_epoch_start
    model = make(data, mode="global", svd_rank=rank, svd_components=m, svd_threshold=0.0, ui_layers=2)
    model.train()
    before = model.principal.matrix.to_dense()
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    assert torch.equal(before, model.principal.matrix.to_dense())
    with torch.no_grad():
        emb = model(data)
    user, item = expected_embeddings(model, data, before.numpy().astype(np.float64))
    np.testing.assert_allclose(emb.user.numpy(), user, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb.item.numpy(), item, rtol=1e-4, atol=1e-5)


def test_global_subgraph_does_not_touch_the_global_generator():
    block = torch.tensor(dense_adjacency(EDGES, 5, 6)[:5, 5:], dtype=torch.float32).to_sparse()
    torch.manual_seed(5)
    principal_reconstruction(block, 4, 2, 0.0)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    a, b = principal_reconstruction(block, 4, 2, 0.0), principal_reconstruction(block, 4, 2, 0.0)
    assert torch.equal(a.to_dense(), b.to_dense())


def info_nce(a: np.ndarray, b: np.ndarray, t: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a @ b.T / t
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_contrastive_term_is_half_the_two_infonce_of_dropout_views(dropout):
    data = hand_graph()
    model = make(data, dropout=dropout, cl_temperature=0.3, reg_weight=0.7)
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    model.train()
    batch = Batch(torch.tensor([0, 1, 2, 3, 1]), torch.tensor([0, 3, 4, 1, 1]), torch.tensor([[5], [5], [5], [5], [2]]))
    emb = model(data)
    torch.manual_seed(11)
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"cl"} and terms["cl"].weight == 0.7
    # the same masks, drawn in the same order from the same seed, as 0/1 · 1/(1 − p)
    torch.manual_seed(11)
    u, i = emb.user[batch.users].detach().numpy(), emb.item[batch.pos].detach().numpy()
    masks = [F.dropout(torch.ones(x.shape), dropout).numpy() for x in (u, u, i, i)]
    if dropout == 0:
        assert all((mk == 1).all() for mk in masks)
    expected = (info_nce(u * masks[0], u * masks[1], 0.3) + info_nce(i * masks[2], i * masks[3], 0.3)) / 2
    assert terms["cl"].value.item() == pytest.approx(expected, rel=1e-5)
    assert make(data, reg_weight=0.0).extra_losses(emb, batch) == {}


def test_gradients_reach_every_parameter():
    data = hand_graph()
    for tune in (True, False):
        model = make(data, tune_features=tune)
        names = {n for n, _ in model.named_parameters()}
        assert any(n.startswith("tables.") for n in names) == tune
        model.on_epoch_start(1, torch.Generator().manual_seed(0))
        model.train()
        model.zero_grad()
        batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 3, 4, 1]), torch.tensor([[5], [5], [3], [0]]))
        emb = model(data)
        loss = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg])
        loss = loss + sum(t.weight * t.value for t in model.extra_losses(emb, batch).values())
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_a_short_training_run_lowers_the_loss():
    data = hand_graph()
    model = make(data, keep_ratio=0.8, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    users, items = data.train_users, data.train_items
    neg = torch.tensor([[(i.item() + 3) % 6] for i in items])  # fixed negatives
    batch = Batch(users, items, neg)

    def held() -> float:
        model.eval()
        with torch.no_grad():
            emb = model(data)
            return bpr_loss(emb.user[users], emb.item[items], emb.item[neg]).item()

    before = held()
    for epoch in range(1, 31):
        model.train()
        model.on_epoch_start(epoch, gen)
        emb = model(data)
        loss = bpr_loss(emb.user[users], emb.item[items], emb.item[neg])
        loss = loss + sum(t.weight * t.value for t in model.extra_losses(emb, batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held() < 0.5 * before


def test_one_modality():
    data = hand_graph()
    torch.manual_seed(0)
    model = PGL.build(data, PGLConfig.from_dict({"embedding_dim": 4, "knn_k": 2}, "pgl"), ["text"])
    with torch.no_grad():
        emb = model.eval()(data)
    assert emb.user.shape == (5, 4) and list(model.projections) == ["text"]


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"item_layers": -1}, "item_layers"),
        ({"knn_k": 0}, "knn_k"),
        ({"image_knn_weight": 1.5}, "image_knn_weight"),
        ({"mode": "both"}, "mode"),
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"svd_rank": 0}, "svd_rank"),
        ({"svd_components": 40}, "svd_components"),
        ({"svd_threshold": -1.0}, "svd_threshold"),
        ({"reg_weight": -0.1}, "reg_weight"),
        ({"dropout": 1.0}, "dropout"),
        ({"cl_temperature": 0.0}, "cl_temperature"),
        ({"tune_features": "yes"}, "tune_features"),
        ({"n_layers": 2}, "n_layers"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"pgl.*{name}"):
        PGLConfig.from_dict(params, "pgl")
