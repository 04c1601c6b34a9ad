"""DA-MRS (sea/models/damrs.py) against its definition, computed here independently with
dense numpy on hand-sized graphs: the three item–item graphs (also built in several chunks),
the forward pass, and each loss term against MMRec's formulas (its weighted BPR, its
pseudo-labelled neighbour discrimination, its four-log symmetric KL); gradients, training,
config, params.yaml."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_checks import assert_fit_learns
from test_model_dragon import dense_adjacency, hand_data
from test_sea import grads_missing, make, make_batch, make_setup

import sea.models.damrs as damrs_module
from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.damrs import DAMRS, DAMRSConfig, behaviour_graph, consistent_knn_graphs
from sea.train import train_step

# ------------------------------------------------------------------ the definition, densely


def sym_norm(a: np.ndarray) -> np.ndarray:
    """D^-1/2 A D^-1/2 with D the row sums (out-degrees), as the reference normalises."""
    d = a.sum(1)
    inv = np.where(d > 0, d, 1.0) ** -0.5 * (d > 0)
    return inv[:, None] * a * inv[None, :]


def dense_consistent_knn(features: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Cosine matrices; mask where any modality is below its mean; top-k of each kept row."""
    sims = {}
    for m, x in features.items():
        z = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims[m] = z @ z.T
    keep = np.logical_and.reduce([s >= s.mean() for s in sims.values()])
    out = {}
    for m, s in sims.items():
        a = np.zeros_like(s)
        for i in range(len(s)):
            kept = np.flatnonzero(keep[i])
            best = kept[np.argsort(-s[i, kept], kind="stable")[:k]]
            a[i, best] = 1.0
        out[m] = sym_norm(a)
    return out


def dense_behaviour(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int, least: int):
    """Shared-user counts RᵀR; self-loop + top-k (count desc, id asc) of those with >= least."""
    r = np.zeros((n_users, n_items))
    r[users, items] = 1.0
    c = r.T @ r
    np.fill_diagonal(c, 0)
    a = np.eye(n_items)
    for i in range(n_items):
        cand = [j for j in range(n_items) if c[i, j] >= least]
        cand.sort(key=lambda j: (-c[i, j], j))
        a[i, cand[:k]] = 1.0
    return sym_norm(a)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_bpr(u, pos, neg, pos_views, neg_views):
    """MMRec's get_weight_modal + bpr_loss (one negative), float64."""
    p = sigmoid(np.stack([(u * normalize(h)).sum(1) for h in pos_views]))  # [V, B]
    n_mean = sigmoid(np.stack([(u * normalize(h)).sum(1) for h in neg_views])).mean()
    p_mean = p.mean(0)
    w_pos = np.clip(p_mean * np.exp(-p.var(0, ddof=1)) ** 2, 0, 1)
    w_neg = np.clip((p.max(0) - n_mean) * (p_mean < n_mean), 0, 1)
    d = (u * pos).sum(1) - (u * neg).sum(1)
    return -np.mean(np.log(sigmoid(d)) * w_pos + np.log(sigmoid(-d)) * w_neg)


def reference_neighbour_loss(views: list[np.ndarray], ids: np.ndarray, k: int, tau: float) -> float:
    """MMRec's label_prediction, generate_pesudo_labels and neighbor_discrimination."""
    z = [normalize(h) for h in views]
    probs = []
    for zv in z:
        s = zv[ids] @ zv.T
        e = np.exp(s - s.max(1, keepdims=True))
        probs.append(e / e.sum(1, keepdims=True))
    total = 0.0
    for a, zv in enumerate(z):
        score = sum(probs) + probs[a]
        mm = np.argsort(-score, axis=1, kind="stable")[:, :k]
        single_p = probs[a].copy()
        np.put_along_axis(single_p, mm, 0.0, axis=1)
        single = np.argsort(-single_p, axis=1, kind="stable")[:, :k]
        e = np.exp(zv[ids] @ zv.T / tau)
        ttl = e.sum(1)
        mm_s = np.take_along_axis(e, mm, 1).sum(1)
        s_s = np.take_along_axis(e, single, 1).sum(1)
        total += np.mean(-np.log(mm_s / ttl + 1e-9) - np.log(s_s / (ttl - mm_s) + 1e-9))
    return total / len(z)


def reference_kl(u, cf, content):
    """MMRec's KL(p_g, p_t) + KL(p_t, p_g), four logs, mean over pairs."""
    p_g, p_t = sigmoid(u @ normalize(cf).T), sigmoid(u @ normalize(content).T)

    def kl(p1, p2):
        return p1 * np.log(p1) - p1 * np.log(p2) + (1 - p1) * np.log(1 - p1) - (1 - p1) * np.log(1 - p2)

    return np.mean(kl(p_g, p_t) + kl(p_t, p_g))


def build(data: GraphData, **cfg) -> DAMRS:
    torch.manual_seed(0)
    setup = make_setup("damrs", {"embedding_dim": 4, "knn_k": 2, "pseudo_k": 2} | cfg, modalities=list(data.features))
    return DAMRS.build(data, setup.model_cfg, setup.model.modalities)


def as64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ------------------------------------------------------------------ the graphs


@pytest.mark.parametrize("k,chunk_entries", [(1, 1 << 23), (3, 1 << 23), (3, 20), (20, 11)])
def test_modality_graphs_keep_the_top_k_cross_modally_consistent_links(monkeypatch, k, chunk_entries):
    monkeypatch.setattr(damrs_module, "CHUNK_ENTRIES", chunk_entries)  # 20 entries: rows in chunks of 2
    g = np.random.default_rng(k)
    feats = {"image": g.normal(size=(11, 5)) + 0.5, "text": g.normal(size=(11, 7))}
    got = consistent_knn_graphs({m: torch.as_tensor(x, dtype=torch.float32) for m, x in feats.items()}, k)
    expected = dense_consistent_knn(feats, k)
    for m in feats:
        np.testing.assert_allclose(got[m].to_dense().numpy(), expected[m], atol=1e-6)
    assert (np.diag(expected["image"]) > 0).all()  # each item its own neighbour
    if k == 20:  # fewer consistent items than k: rows of different lengths
        assert len({int((row > 0).sum()) for row in expected["text"]}) > 1


def test_a_single_modality_is_masked_by_its_own_mean_only():
    g = np.random.default_rng(3)
    x = g.normal(size=(8, 4))
    got = consistent_knn_graphs({"text": torch.as_tensor(x, dtype=torch.float32)}, 3)["text"]
    np.testing.assert_allclose(got.to_dense().numpy(), dense_consistent_knn({"text": x}, 3)["text"], atol=1e-6)


@pytest.mark.parametrize("k,least,chunk_entries", [(2, 2, 1 << 23), (2, 1, 30), (3, 2, 30), (0, 2, 1 << 23)])
def test_behaviour_graph_links_the_items_sharing_most_users(monkeypatch, k, least, chunk_entries):
    monkeypatch.setattr(damrs_module, "CHUNK_ENTRIES", chunk_entries)  # 30 entries: items in chunks of 2
    g = np.random.default_rng(k + 10 * least)
    n_users, n_items = 12, 9
    users, items = g.integers(0, n_users, 60), g.integers(0, n_items, 60)  # repeats: counted once
    got = behaviour_graph(torch.as_tensor(users), torch.as_tensor(items), n_users, n_items, k, least)
    expected = dense_behaviour(users, items, n_users, n_items, k, least)
    np.testing.assert_allclose(got.to_dense().numpy(), expected, atol=1e-6)
    if k == 2 and least == 1:  # ties in the counts occur here and went to the lower id
        r = np.zeros((n_users, n_items))
        r[users, items] = 1
        c = r.T @ r
        np.fill_diagonal(c, 0)
        assert any(len(set(row)) < len(row) for row in c)


# ------------------------------------------------------------------ forward and losses


@pytest.mark.parametrize("cfg", [{}, {"ui_layers": 3, "mm_layers": 2}, {"ui_layers": 0, "mm_layers": 0}])
def test_forward_matches_the_definition(cfg):
    data = hand_data()
    model = build(data, **cfg)
    model.eval()
    with torch.no_grad():
        emb = model(data)
        again = model(data)
    assert torch.equal(emb.user, again.user) and torch.equal(emb.item, again.item) and emb.extras == {}
    feats = {m: data.features[m].double().numpy() for m in ("image", "text")}
    graphs = list(dense_consistent_knn(feats, 2).values())
    graphs.append(dense_behaviour(data.train_users.numpy(), data.train_items.numpy(), data.n_users, data.n_items, 2, 2))
    x = np.concatenate([as64(model.user.weight), as64(model.item.weight)])
    adj, layers = dense_adjacency(data), cfg.get("ui_layers", 2)
    total, layer = x.copy(), x
    for _ in range(layers):
        layer = adj @ layer
        total = total + layer
    total /= layers + 1
    views = []
    for s in graphs:
        h = as64(model.item.weight)
        for _ in range(cfg.get("mm_layers", 1)):
            h = s @ h
        views.append(h)
    item = total[5:] + sum(views) / 3
    np.testing.assert_allclose(as64(emb.user), total[:5], atol=1e-6)
    np.testing.assert_allclose(as64(emb.item), item, atol=1e-6)
    model.train()
    emb = model(data)
    for got, want in zip(emb.extras["views"], views, strict=True):
        np.testing.assert_allclose(as64(got), want, atol=1e-6)
    np.testing.assert_allclose(as64(emb.extras["cf_item"]), total[5:], atol=1e-6)


def trained_model(data: GraphData, **cfg) -> DAMRS:
    """A model whose vectors are far from the initial ones (so the weights vary)."""
    model = build(data, **cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        model.user.weight.copy_(torch.randn(model.user.weight.shape, generator=g))
        model.item.weight.copy_(torch.randn(model.item.weight.shape, generator=g))
    return model.train()


def test_denoised_bpr_is_mmrecs_weighted_bpr():
    data = hand_data()
    model = trained_model(data)
    users, pos = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 3, 4, 5, 4, 2])
    batch = Batch(users, pos, torch.tensor([[5], [4], [0], [1], [2], [3]]))
    emb = model(data)
    u = as64(emb.user)[batch.users.numpy()]
    items, views = as64(emb.item), [as64(h) for h in emb.extras["views"]]
    pos, neg = batch.pos.numpy(), batch.neg[:, 0].numpy()
    expected = reference_bpr(u, items[pos], items[neg], [h[pos] for h in views], [h[neg] for h in views])
    got = model.denoised_bpr(emb, batch)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    w_pos, w_neg = model.feedback_weights(emb.user[batch.users], emb.extras["views"], batch)
    assert (w_neg > 0).any() and (w_neg == 0).any() and not w_pos.requires_grad  # both cases occur


def test_denoised_bpr_with_several_negatives_averages_over_them():
    data = hand_data()
    model = trained_model(data)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([0, 3, 4]), torch.tensor([[5, 1], [4, 0], [0, 3]]))
    emb = model(data)
    u = as64(emb.user)[batch.users.numpy()]
    items, views = as64(emb.item), [as64(h) for h in emb.extras["views"]]
    pos, neg = batch.pos.numpy(), batch.neg.numpy()
    p = sigmoid(np.stack([(u * normalize(h[pos])).sum(1) for h in views]))
    n_mean = sigmoid(np.stack([np.einsum("bd,bnd->bn", u, normalize(h[neg])) for h in views])).mean()
    w_pos = np.clip(p.mean(0) * np.exp(-p.var(0, ddof=1)) ** 2, 0, 1)[:, None]
    w_neg = np.clip((p.max(0) - n_mean) * (p.mean(0) < n_mean), 0, 1)[:, None]
    d = (u * items[pos]).sum(1)[:, None] - np.einsum("bd,bnd->bn", u, items[neg])
    expected = -np.mean(w_pos * np.log(sigmoid(d)) + w_neg * np.log(sigmoid(-d)))
    assert model.denoised_bpr(emb, batch).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("pseudo_k,tau", [(2, 0.2), (1, 0.5)])
def test_align_item_is_mmrecs_neighbour_discrimination(pseudo_k, tau):
    data = hand_data()
    model = trained_model(data, pseudo_k=pseudo_k, temperature=tau)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([0, 3, 4]), torch.tensor([[5], [4], [0]]))
    emb = model(data)
    ids = np.unique(np.concatenate([batch.pos.numpy(), batch.neg.numpy().ravel()]))
    expected = reference_neighbour_loss([as64(h) for h in emb.extras["views"]], ids, pseudo_k, tau)
    assert model.align_item(emb, batch).item() == pytest.approx(expected, rel=1e-5)


def test_align_user_is_mmrecs_symmetric_kl():
    data = hand_data()
    model = trained_model(data)
    batch = Batch(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 3, 1, 5]), torch.tensor([[5], [4], [2], [1]]))
    emb = model(data)
    users = np.unique(batch.users.numpy())
    ids = np.unique(np.concatenate([batch.pos.numpy(), batch.neg.numpy().ravel()]))
    expected = reference_kl(as64(emb.user)[users], as64(emb.extras["cf_item"])[ids], as64(emb.extras["content"])[ids])
    assert expected > 1e-3
    assert model.align_user(emb, batch).item() == pytest.approx(expected, rel=1e-5)


def test_terms_and_their_weights_and_zero_weights_skip_them():
    data = hand_data()
    batch = Batch(torch.tensor([0, 1]), torch.tensor([0, 3]), torch.tensor([[5], [4]]))
    model = build(data, kl_weight=0.5, neighbor_weight=0.01).train()
    terms = model.extra_losses(model(data), batch)
    assert {k: t.weight for k, t in terms.items()} == {"denoised_bpr": 1.0, "align_item": 0.01, "align_user": 0.5}
    model = build(data, kl_weight=0.0, neighbor_weight=0.0).train()
    assert set(model.extra_losses(model(data), batch)) == {"denoised_bpr"}
    assert DAMRS.preferred_loss == "none"


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("damrs", {"embedding_dim": 8})
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data, negatives=2), "auto")
    assert {"denoised_bpr", "align_item", "align_user"} <= set(parts) and "bpr" not in parts
    assert not grads_missing(model)
    assert {n for n, _ in model.named_parameters()} == {"user.weight", "item.weight"}


def test_trains():
    model, data = make("damrs", {"embedding_dim": 16})
    assert_fit_learns("damrs", model, data, loss_ratio=0.8)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"mm_layers": -1}, "mm_layers"),
        ({"knn_k": 0}, "knn_k"),
        ({"behaviour_knn_k": -1}, "behaviour_knn_k"),
        ({"behaviour_min_common": 0}, "behaviour_min_common"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"neighbor_weight": -1e-3}, "neighbor_weight"),
        ({"pseudo_k": 0}, "pseudo_k"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"\[damrs\].*{name}"):
        DAMRSConfig.from_dict(params, "damrs")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("damrs") is DAMRS and DAMRS.uses_features and DAMRS.Config is DAMRSConfig
    assert DAMRSConfig.from_dict(params["damrs"], "damrs") == DAMRSConfig()
    assert DAMRSConfig() == DAMRSConfig(64, 2, 1, 10, 2, 2, 1.0, 1e-3, 10, 0.2)  # MMRec's settings
    assert params["tune"]["spaces"]["damrs"] == DAMRS.search_space
    assert DAMRS.search_space == {"kl_weight": [0.1, 1.0], "neighbor_weight": [1e-4, 1e-3, 1e-2], "ui_layers": [1, 2]}
