"""VBPR and FREEDOM, alone and with SEA's separation, checked against their definitions
(SEA.md §4a) through the Recommender interface."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_sea import grads_missing, make, make_batch, make_setup, recall_at_10, step, train

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models import graphs
from sea.models.base import GraphData, model_class
from sea.models.freedom import FREEDOMConfig
from sea.models.graphs import item_item_graph, user_item_adjacency
from sea.models.vbpr import VBPRConfig

# ------------------------------------------------------------------ a hand-sized graph


def tiny_data(dims=None) -> GraphData:
    """3 users, 4 items; every split non-empty."""
    dims = dims or {"image": 3, "text": 2}
    rows = [
        (0, 0, "train"),
        (0, 1, "train"),
        (1, 1, "train"),
        (1, 2, "train"),
        (2, 3, "train"),
        (2, 0, "train"),
        (0, 2, "valid"),
        (1, 3, "test"),
        (2, 1, "test"),
    ]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(3)
    return GraphData.build(inter, 4, {m: g.normal(size=(4, d)).astype(np.float32) for m, d in dims.items()})


def build(name: str, data: GraphData, cfg: dict | None = None, loss: dict | None = None):
    cls = model_class(name)
    torch.manual_seed(0)
    setup = make_setup(name, cfg, loss=loss, modalities=list(data.features))
    return cls.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)


def test_registered_with_their_sections():
    params = load_params()
    for name, config in (("vbpr", VBPRConfig), ("freedom", FREEDOMConfig)):
        cls = model_class(name)
        assert cls.Config is config and cls.uses_features
        assert config.from_dict(params[name], name) == config()  # params.yaml holds the defaults
    for name, bad in (
        ("vbpr", {"separation": "clip"}),
        ("vbpr", {"reg_weight": -1}),
        ("freedom", {"dropout": 1.0}),
        ("freedom", {"generic_fraction": 0}),
        ("freedom", {"layers": -1}),
    ):
        with pytest.raises(ConfigError, match=rf"\[{name}\]"):
            model_class(name).Config.from_dict(bad, name)


# ------------------------------------------------------------------ VBPR


def test_vbpr_scores_match_its_definition():
    data = tiny_data()
    model = build("vbpr", data, {"embedding_dim": 5})
    with torch.no_grad():
        scores = model.score(model.eval()(data), torch.arange(3))
    E, b = model.content.weight.detach(), model.content.bias.detach()
    for u in range(3):
        gamma_u, theta_u = model.user[u, :5].detach(), model.user[u, 5:].detach()
        for i in range(4):
            f_i = torch.cat([data.features["image"][i], data.features["text"][i]])
            expected = gamma_u @ model.item_id[i].detach() + theta_u @ (E @ f_i + b)
            assert scores[u, i].item() == pytest.approx(expected.item(), abs=1e-5)


def test_vbpr_penalty_is_mmrec_embedding_l2():
    data = tiny_data()
    model = build("vbpr", data, {"reg_weight": 0.5})
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([[3, 0], [0, 1], [1, 2]]))
    emb = model(data)
    u, p, n = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
    expected = (u.pow(2).sum().sqrt() + p.pow(2).sum().sqrt() + n.pow(2).sum().sqrt()) / 3
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"reg"} and terms["reg"].weight == 0.5
    assert terms["reg"].value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert build("vbpr", data, {"reg_weight": 0.0}).extra_losses(emb, batch) == {}


def test_vbpr_sea_splits_each_modality_on_its_own():
    data = tiny_data({"image": 6, "text": 4})
    model = build("vbpr", data, {"separation": "sea", "embedding_dim": 5})
    sep = model.separation
    with torch.no_grad():
        emb = model.eval()(data)
        split = {m: data.features[m] @ sep.split[m].weight.T + sep.split[m].bias for m in ("image", "text")}
        content = torch.cat([split["image"], split["text"]], 1) @ model.content.weight.T + model.content.bias
    assert torch.allclose(emb.item[:, 5:], content, atol=1e-5)
    assert {m: sep.generic_dims[m] for m in sep.modalities} == {"image": 3, "text": 2}
    # a modality's split sees only its own feature
    changed = copy.copy(data)
    changed.features = dict(data.features, text=data.features["text"] + 1.0)
    with torch.no_grad():
        other = model(changed)
    assert torch.equal(other.extras["split"].full("image"), emb.extras["split"].full("image"))
    assert not torch.equal(other.extras["split"].full("text"), emb.extras["split"].full("text"))


def test_vbpr_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("vbpr", {"separation": "sea"})
    assert not {id(p) for p in model.separation.estimator_parameters()} & {id(p) for p in model.main_parameters()}
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)
    plain, _ = make("vbpr")
    assert plain.separation is None and list(plain.main_parameters()) == list(plain.parameters())


def test_vbpr_learns():
    model, data = make("vbpr")
    train(model, data, epochs=10)
    assert recall_at_10(model, data) > 0.4  # random top-10 recalls about 1/6


# ------------------------------------------------------------------ FREEDOM


def test_freedom_item_graph_is_frozen():
    model, data = make("freedom", {"knn_k": 4})
    expected = item_item_graph(data.features, 4, 0.1).to_dense()
    assert torch.equal(model.item_graph.matrix.to_dense(), expected)
    train(model, data, epochs=2)
    assert torch.equal(model.item_graph.matrix.to_dense(), expected)
    assert not any("graph" in k for k in model.state_dict())


@pytest.mark.parametrize("chunk_rows", [1, 7, 50])
def test_the_knn_graph_is_its_definition_whatever_the_chunk(monkeypatch, chunk_rows):
    """Built a chunk of rows at a time (never n × n similarities at once), the graph is the
    definition computed densely: A[i, j] = 1 when j is among i's top-k cosine neighbours
    (i itself excluded), normalised D^-1/2 A D^-1/2 by the rows' degrees."""
    n, k = 50, 4
    feats = torch.randn(n, 6, generator=torch.Generator().manual_seed(3))
    x = feats / feats.norm(dim=1, keepdim=True)
    sim = x @ x.T
    a = torch.zeros(n, n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        best = sorted(others, key=lambda j: -float(sim[i, j]))[:k]
        a[i, best] = 1.0
    d = a.sum(1).pow(-0.5)  # each row lists k items: the degrees (out-degrees) are all k
    expected = d[:, None] * a * d[None, :]
    monkeypatch.setattr(graphs, "KNN_CHUNK_ELEMENTS", chunk_rows * n)
    assert torch.allclose(graphs.knn_graph(feats, k).to_dense(), expected, atol=1e-6)


def test_freedom_pruning_keeps_the_right_count_renormalised():
    model, data = make("freedom", {"dropout": 0.7})
    n_edges = len(model.edge_weight)
    assert n_edges == len(torch.unique(data.train_users * data.n_items + data.train_items))
    gen = torch.Generator().manual_seed(0)
    kept = model.kept_edges(gen)
    assert len(kept) == len(set(kept.tolist())) == round(0.3 * n_edges)
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    users, items = model.edge_users[kept].numpy(), model.edge_items[kept].numpy()
    expected = user_item_adjacency(users, items, data.n_users, data.n_items).to_dense()
    assert torch.allclose(model.pruned.matrix.to_dense(), expected)
    assert torch.count_nonzero(expected) == 2 * len(kept)


def test_freedom_pruning_draws_with_probability_inverse_sqrt_degree():
    # a star (user 0 with 5 items) plus 2 edges between degree-1 nodes... in one graph
    users = torch.tensor([0, 0, 0, 0, 0, 1, 2])
    items = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    w = model_class("freedom").pruning_weights(users, items, 3, 7)
    assert torch.allclose(w, torch.tensor([1 / math.sqrt(5)] * 5 + [1.0, 1.0]))
    model, _ = make("freedom")
    model.edge_users, model.edge_items, model.edge_weight = users, items, w
    gen = torch.Generator().manual_seed(7)
    # keep one edge: it is edge j with probability w_j / Σw
    model.dropout = 1 - 1 / 7
    first = np.bincount([model.kept_edges(gen).item() for _ in range(4000)], minlength=7) / 4000
    assert np.abs(first - (w / w.sum()).numpy()).max() < 0.03, first
    # keep 3 of 7: the low-degree edges survive more often
    model.dropout = 1 - 3 / 7
    kept = np.bincount(np.concatenate([model.kept_edges(gen).numpy() for _ in range(2000)]), minlength=7) / 2000
    assert kept[5:].min() > kept[:5].max() + 0.2, kept


def test_freedom_pruning_is_seeded():
    model, _ = make("freedom")
    a = model.kept_edges(torch.Generator().manual_seed(11))
    b = model.kept_edges(torch.Generator().manual_seed(11))
    c = model.kept_edges(torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a.sort().values, c.sort().values)


def test_freedom_trains_on_the_pruned_graph_and_evaluates_on_the_full_one():
    model, data = make("freedom")
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        model.train()(data)
    gen = torch.Generator().manual_seed(0)
    model.on_epoch_start(1, gen)
    with torch.no_grad():
        pruned = model.train()(data)
        full = model.eval()(data)
        model.on_epoch_start(2, gen)
        assert not torch.equal(model.train()(data).user, pruned.user)  # a new graph each epoch
        assert torch.equal(model.eval()(data).user, full.user)  # eval ignores the pruning
    assert not torch.equal(pruned.user, full.user)
    # eval = LightGCN over data.adj, by hand
    with torch.no_grad():
        x = torch.cat([model.user.weight, model.item.weight])
        layers = [x, torch.sparse.mm(data.adj, x)]
        layers.append(torch.sparse.mm(data.adj, layers[-1]))
        mean = torch.stack(layers).mean(0)
        item = mean[data.n_users :] + torch.sparse.mm(model.item_graph.matrix, model.item.weight)
    assert torch.allclose(full.user, mean[: data.n_users], atol=1e-6)
    assert torch.allclose(full.item, item, atol=1e-6)


def test_freedom_without_dropout_trains_on_the_full_graph():
    model, data = make("freedom", {"dropout": 0.0})
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.train()(data).user, model.eval()(data).user)


def test_freedom_feature_bpr_matches_its_formula():
    model, data = make("freedom", {"reg_weight": 1e-3})
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    batch = make_batch(data, n=16, negatives=3)
    emb = model(data)
    term = model.extra_losses(emb, batch)["feature_bpr"]
    assert term.weight == 1e-3
    expected = 0.0
    for m in ("image", "text"):
        P = model.projections[m]
        losses = []
        for b in range(16):
            u = emb.user[batch.users[b]]
            pos = P(data.features[m][batch.pos[b]])
            for j in batch.neg[b]:
                losses.append(-torch.log(torch.sigmoid(u @ pos - u @ P(data.features[m][j]))))
        expected += torch.stack(losses).mean()
    assert term.value.item() == pytest.approx(expected.item(), rel=1e-5)
    # λ = 0: no term and no projections
    plain, _ = make("freedom", {"reg_weight": 0.0})
    plain.on_epoch_start(1, torch.Generator().manual_seed(0))
    assert plain.projections is None and plain.extra_losses(plain(data), batch) == {}


def test_bpr_with_several_negatives_matches_its_definition():  # the feature terms rely on it
    g = torch.Generator().manual_seed(4)
    u, p, n = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.randn(5, 4, 3, generator=g)
    expected = np.mean(
        [-math.log(1 / (1 + math.exp(-(u[b] @ p[b] - u[b] @ n[b, j]).item()))) for b in range(5) for j in range(4)]
    )
    assert bpr_loss(u, p, n).item() == pytest.approx(expected, rel=1e-5)


def test_freedom_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("freedom", {"separation": "sea"})
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "feature_bpr", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)
    estimators = {id(p) for p in model.separation.estimator_parameters()}
    assert estimators and not estimators & {id(p) for p in model.main_parameters()}
    # the projections read the split: [g; s] of each modality
    assert model.projections["image"].in_features == data.features["image"].shape[1]
    emb = model(data)
    assert emb.extras["content"] is emb.extras["split"]


def test_freedom_runs_are_reproducible_and_learn():
    results = []
    for _ in range(2):
        model, data = make("freedom", {"separation": "sea", "dropout": 0.5})
        train(model, data, epochs=6, seed=3)
        results.append((copy.deepcopy(model.state_dict()), recall_at_10(model, data)))
    (a, recall), (b, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert recall > 0.3  # random top-10 recalls about 1/6


@pytest.mark.parametrize("name", ["vbpr", "freedom"])
def test_the_separation_leaves_the_backbone_initialisation_alone(name):
    plain, _ = make(name)
    with_sea, _ = make(name, {"separation": "sea"})
    for key, p in plain.named_parameters():
        assert torch.equal(p, with_sea.get_parameter(key)), key
