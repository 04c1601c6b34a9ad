"""LayerGCN checked against its definition (sea/models/layergcn.py), recomputed here with
dense matrices on a hand-sized graph: the refined propagation over the whole and the
pruned graph, the edge pruning (degree-sensitive and uniform epochs in turn), the
regulariser, the gradients, a short training run and the config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_training_lowers_loss, edge_batch

from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.layergcn import LayerGCN, LayerGCNConfig
from sea.tune import TuneConfig, grid_points


def tiny_data() -> GraphData:
    """5 users, 6 items, every split non-empty; item 1 is a hub, user 4 a single-edge user."""
    train = [(0, 0), (0, 1), (0, 4), (1, 1), (1, 2), (2, 1), (2, 3), (2, 5), (3, 0), (3, 1), (3, 5), (4, 2)]
    rows = [(u, i, "train") for u, i in train] + [(0, 2, "valid"), (1, 3, "valid"), (2, 4, "test"), (3, 2, "test")]
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6)


def build(data: GraphData, **overrides) -> LayerGCN:
    torch.manual_seed(0)
    cfg = LayerGCNConfig.from_dict({"embedding_dim": 4} | overrides, "layergcn")
    return LayerGCN.build(data, cfg)


# ------------------------------------------------------------------ the definition, densely


def dense_adjacency(users, items, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph of the given edges (isolated nodes: zero rows)."""
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    a[torch.as_tensor(users), n_users + torch.as_tensor(items)] = 1.0
    a = a + a.T
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def reference(model: LayerGCN, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) vectors from the paper's formulas, dense, differentiable in the weights:
    e^(l+1) = cos((Â e^(l))_v, e^(0)_v) · (Â e^(l))_v, output Σ_{l=1..L} e^(l)."""
    ego = torch.cat([model.user.weight, model.item.weight]).double()
    x, out = ego, torch.zeros_like(ego)
    for _ in range(model.layers):
        x = adj @ x
        cos = (x * ego).sum(1) / (x.norm(dim=1) * ego.norm(dim=1)).clamp_min(1e-8)
        x = cos[:, None] * x
        out = out + x
    return out[: model.n_users], out[model.n_users :]


def pruned_adjacency(model: LayerGCN, data: GraphData) -> torch.Tensor:
    """The dense normalised adjacency of the edges the model kept this epoch."""
    dense = model.pruned.matrix.to_dense()
    block = dense[: data.n_users, data.n_users :] > 0
    users, items = block.nonzero(as_tuple=True)
    return dense_adjacency(users, items, data.n_users, data.n_items)


# ------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_eval_forward_matches_the_definition_over_the_whole_graph(layers):
    data = tiny_data()
    model = build(data, layers=layers).eval()
    with torch.no_grad():
        emb = model(data)
        again = model(data)
        user, item = reference(model, dense_adjacency(data.train_users, data.train_items, data.n_users, data.n_items))
    assert torch.allclose(emb.user.double(), user, atol=1e-6)
    assert torch.allclose(emb.item.double(), item, atol=1e-6)
    assert torch.equal(emb.user, again.user) and torch.equal(emb.item, again.item)  # deterministic
    # not LightGCN: the refinement changes the vectors
    plain = dense_adjacency(data.train_users, data.train_items, data.n_users, data.n_items)
    ego = torch.cat([model.user.weight, model.item.weight]).double()
    x, unrefined = ego, torch.zeros_like(ego)
    for _ in range(layers):
        x = plain @ x
        unrefined = unrefined + x
    assert not torch.allclose(emb.user.double(), unrefined[: data.n_users], atol=1e-3)


def test_train_forward_runs_over_the_pruned_graph():
    data = tiny_data()
    model = build(data, dropout=0.3, layers=3).train()
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        model(data)
    for epoch in (1, 2):
        model.on_epoch_start(epoch, torch.Generator().manual_seed(epoch))
        adj = pruned_adjacency(model, data)
        assert int((adj[: data.n_users] > 0).sum()) == round(0.7 * len(data.train_users))
        with torch.no_grad():
            emb = model(data)
            user, item = reference(model, adj)
        assert torch.allclose(emb.user.double(), user, atol=1e-6)
        assert torch.allclose(emb.item.double(), item, atol=1e-6)
    with torch.no_grad():  # evaluation ignores the pruned graph
        whole = reference(model, dense_adjacency(data.train_users, data.train_items, data.n_users, data.n_items))
        assert torch.allclose(model.eval()(data).item.double(), whole[1], atol=1e-6)


def test_dropout_zero_trains_over_the_whole_graph():
    data = tiny_data()
    model = build(data, dropout=0.0).train()
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    assert model.pruned is None
    with torch.no_grad():
        assert torch.equal(model(data).item, model.eval()(data).item)


def test_reg_term_is_half_the_squared_layer0_norms_over_the_batch():
    data = tiny_data()
    model = build(data, reg_weight=1e-3, dropout=0.0)
    batch = edge_batch(data, 2)
    emb = model.train()(data)
    term = model.extra_losses(emb, batch)["reg"]
    u, p, n = model.user.weight[batch.users], model.item.weight[batch.pos], model.item.weight[batch.neg]
    expected = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(batch.users)
    assert term.weight == 1e-3 and torch.allclose(term.value, expected)
    assert build(data, reg_weight=0.0).extra_losses(emb, batch) == {}


# ------------------------------------------------------------------ edge pruning


def test_pruning_alternates_degree_sensitive_and_uniform_epochs():
    data = tiny_data()
    model = build(data, dropout=0.5)
    keep = round(0.5 * len(model.edge_weight))
    expected_weight = 1.0 / np.sqrt(
        np.bincount(data.train_users.numpy())[data.train_users.numpy()]
        * np.bincount(data.train_items.numpy())[data.train_items.numpy()]
    )
    assert np.allclose(model.edge_weight.numpy(), expected_weight)  # the edges are distinct and sorted as given
    for epoch, degree in [(1, True), (2, False), (3, True), (4, False)]:
        assert model.degree_sensitive(epoch) is degree
        g = torch.Generator().manual_seed(11)
        model.on_epoch_start(epoch, g)
        drawn = model.kept_edges if degree else model.uniform_edges
        kept = drawn(torch.Generator().manual_seed(11)).sort().values
        users, items = model.edge_users[kept], model.edge_items[kept]
        assert len(kept) == keep
        assert torch.allclose(
            pruned_adjacency(model, data), dense_adjacency(users, items, data.n_users, data.n_items), atol=1e-6
        )
    assert all(build(data, pruning="degree").degree_sensitive(e) for e in (1, 2))
    assert not any(build(data, pruning="uniform").degree_sensitive(e) for e in (1, 2))


def test_degree_sensitive_draws_keep_low_degree_edges_more_often():
    data = tiny_data()
    model = build(data, dropout=0.5)
    g = torch.Generator().manual_seed(3)
    counts = {True: torch.zeros(len(model.edge_weight)), False: torch.zeros(len(model.edge_weight))}
    for _ in range(2000):
        counts[True][model.kept_edges(g)] += 1
        counts[False][model.uniform_edges(g)] += 1
    degree, uniform = counts[True] / 2000, counts[False] / 2000
    assert (uniform - 0.5).abs().max() < 0.05  # uniform: every edge kept half the time
    order = model.edge_weight.argsort()
    lightest, heaviest = order[0], order[-1]  # hub-to-hub edge vs. the single-edge user's edge
    assert degree[heaviest] > degree[lightest] + 0.2
    corr = np.corrcoef(model.edge_weight.numpy(), degree.numpy())[0, 1]
    assert corr > 0.8


# ------------------------------------------------------------------ gradients and training


def test_gradients_match_the_dense_definition_and_reach_every_parameter():
    data = tiny_data()
    model = build(data, dropout=0.2, reg_weight=1e-2)
    batch = edge_batch(data, 1)
    model.train().on_epoch_start(1, torch.Generator().manual_seed(5))

    def loss_of(user, item):
        return bpr_loss(user[batch.users], item[batch.pos], item[batch.neg])

    emb = model(data)
    terms = model.extra_losses(emb, batch)
    (loss_of(emb.user, emb.item) + sum(t.weight * t.value for t in terms.values())).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert set(got) == {"user.weight", "item.weight"}
    for name, g in got.items():
        assert g.abs().sum() > 0, f"{name} got no gradient"
    model.zero_grad()
    user, item = reference(model, pruned_adjacency(model, data))
    u, p, n = model.user.weight[batch.users], model.item.weight[batch.pos], model.item.weight[batch.neg]
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(batch.users)
    (loss_of(user, item) + 1e-2 * reg).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name].double(), p.grad.double(), atol=1e-6), name


def test_a_short_training_run_lowers_the_loss():
    data = tiny_data()
    model = build(data, dropout=0.1)
    assert_training_lowers_loss(model, data, edge_batch(data, 1))


# ------------------------------------------------------------------ config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("layergcn") is LayerGCN and not LayerGCN.uses_features
    assert LayerGCNConfig.from_dict(params["layergcn"], "layergcn") == LayerGCNConfig()
    assert LayerGCNConfig() == LayerGCNConfig(64, 4, 0.1, 1e-4, "alternate")
    space = TuneConfig.from_dict(params.get("tune"), "tune").space("layergcn")
    assert space["dropout"].values == (0.0, 0.1, 0.2)
    assert space["reg_weight"].values == (1e-2, 1e-3, 1e-4, 1e-5)
    assert {k: list(v.values) for k, v in space.items()} == LayerGCN.search_space
    assert len(grid_points(space)) == 12


@pytest.mark.parametrize(
    "field, value",
    [("embedding_dim", 0), ("layers", 0), ("dropout", 1.0), ("dropout", -0.1), ("reg_weight", -1e-3), ("pruning", "x")],
)
def test_config_errors_name_the_param(field, value):
    with pytest.raises(ConfigError, match=rf"^params.yaml \[layergcn\]: {field} "):
        LayerGCNConfig.from_dict({field: value}, "layergcn")
