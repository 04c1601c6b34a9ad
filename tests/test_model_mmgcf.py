"""MMGCF checked against its definition (sea/models/mmgcf.py), recomputed here with dense
matrices on a hand-sized graph: the LightGCN over the whole and the pruned graph, every
fusion x weighting, the regulariser, the gradients, a short training run and the config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_training_lowers_loss, edge_batch, with_features

from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.mmgcf import MMGCF, MMGCFConfig
from sea.tune import TuneConfig, grid_points

FUSIONS = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")


def tiny_data() -> GraphData:
    """5 users, 6 items, image (7-d) and text (5-d) features; item 1 is a hub."""
    train = [(0, 0), (0, 1), (0, 4), (1, 1), (1, 2), (2, 1), (2, 3), (2, 5), (3, 0), (3, 1), (3, 5), (4, 2)]
    rows = [(u, i, "train") for u, i in train] + [(0, 2, "valid"), (1, 3, "valid"), (2, 4, "test"), (3, 2, "test")]
    rng = np.random.default_rng(0)
    feats = {"image": rng.normal(size=(6, 7)).astype(np.float32), "text": rng.normal(size=(6, 5)).astype(np.float32)}
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6, feats)


def build(data: GraphData, modalities=("image", "text"), **overrides) -> MMGCF:
    torch.manual_seed(0)
    cfg = MMGCFConfig.from_dict({"embedding_dim": 4, "feat_dim": 4} | overrides, "mmgcf")
    model = MMGCF.build(data, cfg, list(modalities))
    if model.alpha is not None:  # away from 0, so that a and 1 - a differ
        with torch.no_grad():
            model.alpha.fill_(0.7)
    return model


# ------------------------------------------------------------------ the definition, densely


def dense_adjacency(users, items, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph of the given edges (isolated nodes: zero rows)."""
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    a[torch.as_tensor(users), n_users + torch.as_tensor(items)] = 1.0
    a = a + a.T
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def whole_adjacency(data: GraphData) -> torch.Tensor:
    return dense_adjacency(data.train_users, data.train_items, data.n_users, data.n_items)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def reference(model: MMGCF, data: GraphData, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) vectors from the definition, dense, in float64, differentiable in the weights."""
    ego = torch.cat([model.user.weight, model.item.weight]).double()
    x, layers = ego, [ego]
    for _ in range(model.layers):
        x = adj @ x
        layers.append(x)
    h = sum(layers) / len(layers)
    user, item = h[: model.n_users], h[model.n_users :]
    f = [
        data.features[m].double() @ model.projections[m].weight.double().T + model.projections[m].bias.double()
        for m in model.modalities
    ]

    def lin(layer, x):
        return x @ layer.weight.double().T + layer.bias.double()

    mode = model.fusion_mode
    if model.weighting == "equal":
        if mode == "mean":
            mm = sum(f) / len(f)
            return user, (item + mm) / 2
        if mode == "sum":
            return user, item + sum(f)
        mm = lin(model.fuse_modalities, torch.cat(f, 1)) if len(f) > 1 else f[0]
        return user, lin(model.fuse_id_modal, torch.cat([item, mm], 1))
    if model.weighting == "alpha":
        a = 1 / (1 + torch.exp(-model.alpha.double()))
        parts = [a * item] + [(1 - a) * g for g in f]
    else:
        parts = [len(f) * unit(item)] + [unit(g) for g in f]
    if mode == "mean":
        return user, sum(parts) / len(parts)
    if mode == "sum":
        return user, sum(parts)
    return user, lin(model.fuse_all, torch.cat(parts, 1))


def pruned_adjacency(model: MMGCF, data: GraphData) -> torch.Tensor:
    """The dense normalised adjacency of the edges the model kept this epoch."""
    block = model.pruned.matrix.to_dense()[: data.n_users, data.n_users :] > 0
    users, items = block.nonzero(as_tuple=True)
    return dense_adjacency(users, items, data.n_users, data.n_items)


# ------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_eval_forward_matches_the_definition(fusion, weighting):
    data = tiny_data()
    model = build(data, fusion_mode=fusion, weighting=weighting, layers=2).eval()
    with torch.no_grad():
        emb, again = model(data), model(data)
        user, item = reference(model, data, whole_adjacency(data))
    assert torch.allclose(emb.user.double(), user, atol=1e-6)
    assert torch.allclose(emb.item.double(), item, atol=1e-6)
    assert torch.equal(emb.item, again.item)  # deterministic
    # the features matter: zeroing them changes the item vectors
    zero = with_features(data, {m: torch.zeros_like(x) for m, x in data.features.items()})
    with torch.no_grad():
        assert not torch.allclose(model(zero).item, emb.item, atol=1e-4)


@pytest.mark.parametrize("fusion, weighting", [("mean", "equal"), ("concat", "equal"), ("sum", "normalized")])
def test_a_single_modality(fusion, weighting):
    data = tiny_data()
    model = build(data, modalities=("text",), fusion_mode=fusion, weighting=weighting, layers=1).eval()
    assert model.fuse_modalities is None and list(model.projections) == ["text"]
    with torch.no_grad():
        user, item = reference(model, data, whole_adjacency(data))
        assert torch.allclose(model(data).item.double(), item, atol=1e-6)


def test_concat_with_a_wider_feat_dim():
    data = tiny_data()
    model = build(data, fusion_mode="concat", feat_dim=6, layers=3).eval()
    assert model.projections["image"].out_features == 6
    with torch.no_grad():
        emb = model(data)
        assert emb.item.shape == (6, 4)
        assert torch.allclose(emb.item.double(), reference(model, data, whole_adjacency(data))[1], atol=1e-6)


def test_train_forward_runs_over_the_pruned_graph():
    data = tiny_data()
    model = build(data, dropout=0.4, layers=3).train()
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        model(data)
    model.on_epoch_start(1, torch.Generator().manual_seed(3))
    kept = model.kept_edges(torch.Generator().manual_seed(3)).sort().values
    adj = pruned_adjacency(model, data)
    expected = dense_adjacency(model.edge_users[kept], model.edge_items[kept], data.n_users, data.n_items)
    assert torch.allclose(adj, expected) and len(kept) == round(0.6 * len(data.train_users))
    with torch.no_grad():
        emb = model(data)
        user, item = reference(model, data, adj)
        assert torch.allclose(emb.user.double(), user, atol=1e-6)
        assert torch.allclose(emb.item.double(), item, atol=1e-6)
        whole = reference(model, data, whole_adjacency(data))
        assert torch.allclose(model.eval()(data).user.double(), whole[0], atol=1e-6)  # eval: the whole graph
        assert not torch.allclose(whole[0], user, atol=1e-4)
    weights = 1 / np.sqrt(
        np.bincount(data.train_users.numpy())[data.train_users.numpy()]
        * np.bincount(data.train_items.numpy())[data.train_items.numpy()]
    )
    assert np.allclose(model.edge_weight.numpy(), weights)


def test_dropout_zero_trains_over_the_whole_graph():
    data = tiny_data()
    model = build(data, dropout=0.0).train()
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    assert model.pruned is None
    with torch.no_grad():
        assert torch.equal(model(data).item, model.eval()(data).item)


@pytest.mark.parametrize("negatives", [1, 3])
def test_reg_term_is_the_squared_layer0_norms_over_twice_the_batch(negatives):
    data = tiny_data()
    model = build(data, reg_weight=1e-2, dropout=0.0)
    batch = edge_batch(data, negatives)
    emb = model.train()(data)
    term = model.extra_losses(emb, batch)["reg"]
    u, p, n = model.user.weight[batch.users], model.item.weight[batch.pos], model.item.weight[batch.neg]
    expected = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(batch.users))
    assert term.weight == 1e-2 and torch.allclose(term.value, expected)
    assert build(data, reg_weight=0.0).extra_losses(emb, batch) == {}


# ------------------------------------------------------------------ gradients and training


@pytest.mark.parametrize("fusion, weighting", [("mean", "alpha"), ("concat", "equal"), ("concat", "normalized")])
def test_gradients_match_the_dense_definition_and_reach_every_parameter(fusion, weighting):
    data = tiny_data()
    model = build(data, fusion_mode=fusion, weighting=weighting, dropout=0.2, reg_weight=1e-2)
    batch = edge_batch(data, 1)
    model.train().on_epoch_start(1, torch.Generator().manual_seed(5))

    def loss_of(user, item):
        return bpr_loss(user[batch.users], item[batch.pos], item[batch.neg])

    emb = model(data)
    terms = model.extra_losses(emb, batch)
    (loss_of(emb.user, emb.item) + sum(t.weight * t.value for t in terms.values())).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert {"user.weight", "item.weight", "projections.image.weight", "projections.text.bias"} <= set(got)
    assert ("alpha" in got) == (weighting == "alpha")
    for name, g in got.items():
        assert g.abs().sum() > 0, f"{name} got no gradient"
    model.zero_grad()
    user, item = reference(model, data, pruned_adjacency(model, data))
    u, p, n = model.user.weight[batch.users], model.item.weight[batch.pos], model.item.weight[batch.neg]
    reg = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(batch.users))
    (loss_of(user, item) + 1e-2 * reg).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name].double(), p.grad.double(), atol=1e-6), name


def test_a_short_training_run_lowers_the_loss():
    data = tiny_data()
    model = build(data, dropout=0.1, weighting="alpha")
    assert_training_lowers_loss(model, data, edge_batch(data, 1))


def test_separation_adds_its_terms_and_leaves_the_backbone_initialisation():
    data = tiny_data()
    plain, split = build(data), build(data, separation="sea")
    for name, p in plain.named_parameters():
        assert torch.equal(p, dict(split.named_parameters())[name]), name
    batch = edge_batch(data, 1)
    split.train().on_epoch_start(1, torch.Generator().manual_seed(0))
    emb = split(data)
    assert "split" in emb.extras
    terms = split.extra_losses(emb, batch)
    assert {"reg", "club", "solosim"} <= set(terms)
    main = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg])
    (main + sum(t.weight * t.value for t in terms.values())).backward()
    for name, p in split.named_parameters():
        if not name.startswith("separation."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in split.separation.parameters())
    with torch.no_grad():  # the item vectors read the split features
        assert not torch.allclose(split.eval()(data).item, plain.eval()(data).item, atol=1e-4)


# ------------------------------------------------------------------ config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("mmgcf") is MMGCF and MMGCF.uses_features
    assert MMGCFConfig.from_dict(params["mmgcf"], "mmgcf") == MMGCFConfig()
    assert MMGCFConfig() == MMGCFConfig(64, 64, 2, 1e-3, "mean", "normalized", 0.2, "none", 0.5, 32)
    space = TuneConfig.from_dict(params.get("tune"), "tune").space("mmgcf")
    assert space["fusion_mode"].values == ("mean", "sum", "concat")
    assert space["weighting"].values == ("equal", "alpha", "normalized")
    assert {k: list(v.values) for k, v in space.items()} == MMGCF.search_space
    assert len(grid_points(space)) == 9


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("feat_dim", -1),
        ("layers", -1),
        ("reg_weight", -1e-3),
        ("fusion_mode", "prod"),
        ("weighting", "x"),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("separation", "x"),
    ],
)
def test_config_errors_name_the_param(field, value):
    with pytest.raises(ConfigError, match=rf"^params.yaml \[mmgcf\]: {field} "):
        MMGCFConfig.from_dict({field: value}, "mmgcf")


def test_feat_dim_must_match_unless_concat():
    with pytest.raises(ConfigError, match=r"^params.yaml \[mmgcf\]: feat_dim must equal embedding_dim"):
        MMGCFConfig.from_dict({"feat_dim": 32, "fusion_mode": "sum"}, "mmgcf")
    assert MMGCFConfig.from_dict({"feat_dim": 32, "fusion_mode": "concat"}, "mmgcf").feat_dim == 32
