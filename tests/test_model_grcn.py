"""GRCN (sea/models/grcn.py) against its definition, computed here independently with dense
numpy on a hand-sized graph: the refining layer's per-node softmaxes, the refined edge
weights of each weight_mode with and without pruning, the paper's routing, the id
convolution, the penalty and the total loss against MMRec's; gradients, training, config,
params.yaml."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_fit_learns, with_features
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.grcn import GRCN, GRCNConfig

# ------------------------------------------------------------------ the definition, densely


def rows_normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def masked_softmax(s: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of ``s`` over the entries where ``mask`` is 1, along ``axis``; 0 elsewhere."""
    z = np.where(mask > 0, s, -np.inf)
    top = np.max(z, axis=axis, keepdims=True)
    e = np.where(mask > 0, np.exp(z - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(axis=axis, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def dense(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def expected_vectors(model: GRCN, data: GraphData) -> tuple[np.ndarray, np.ndarray]:
    """User and item vectors from the definition (numpy, float64, dense users × items)."""
    U = data.n_users
    a = np.zeros((U, data.n_items))
    a[data.train_users.numpy(), data.train_items.numpy()] = 1.0
    h_user, h_item, to_user, to_item = [], [], [], []
    for m in model.modalities:
        lin = model.projection[m]
        z = dense(data.features[m]) @ dense(lin.weight).T + dense(lin.bias)
        f = rows_normalised(np.where(z > 0, z, 0.01 * z))
        p = rows_normalised(dense(model.preference[m]))
        for _ in range(model.routing):
            p = rows_normalised(p + masked_softmax(p @ f.T, a, 1) @ f)
        s = p @ f.T
        au, ai = masked_softmax(s, a, 1), masked_softmax(s, a, 0)  # over the user's items / the item's users
        h_user.append(p + au @ f)
        h_item.append(f + ai.T @ p)
        to_user.append(au)
        to_item.append(ai)
    au, ai = np.stack(to_user), np.stack(to_item)  # [M, U, I]
    if model.weight_mode == "confid":
        c = dense(model.confidence)
        w_user = (au * c[U:].T[:, None, :]).max(0)  # towards the user: the item's confidence
        w_item = (ai * c[:U].T[:, :, None]).max(0)  # towards the item: the user's confidence
    elif model.weight_mode == "mean":
        w_user, w_item = au.mean(0), ai.mean(0)
    else:
        w_user, w_item = au.max(0), ai.max(0)
    if model.pruning:
        w_user, w_item = np.maximum(w_user, 0), np.maximum(w_item, 0)
    w_user, w_item = w_user * a, w_item * a  # only on training edges
    x = rows_normalised(dense(model.id_embedding))
    eu, ei = x[:U], x[U:]
    su, si = eu.copy(), ei.copy()
    for _ in range(model.id_layers):
        eu, ei = w_user @ ei, w_item.T @ eu
        su, si = su + eu, si + ei
    return np.concatenate([su] + h_user, 1), np.concatenate([si] + h_item, 1)


def hand_data() -> GraphData:
    """5 users, 6 items; item 5 has no training edge, user 4 one; a repeated pair counts once."""
    train = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 3), (2, 1), (2, 2), (2, 4), (3, 3), (3, 1), (4, 4), (0, 1)]
    rows = [(u, i, "train") for u, i in train] + [(0, 3, "valid"), (1, 2, "test"), (3, 5, "valid"), (4, 5, "test")]
    g = np.random.default_rng(7)
    feats = {"image": g.normal(size=(6, 5)).astype(np.float32), "text": g.normal(size=(6, 4)).astype(np.float32)}
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6, feats)


def build(data: GraphData, **cfg) -> GRCN:
    torch.manual_seed(0)
    setup = make_setup("grcn", {"embedding_dim": 4, "latent_dim": 3} | cfg, modalities=list(data.features))
    return GRCN.build(data, setup.model_cfg, setup.model.modalities)


def check_forward(model: GRCN, data: GraphData) -> None:
    with torch.no_grad():
        emb = model.eval()(data)
    user, item = expected_vectors(model, data)
    assert emb.user.shape == user.shape and emb.item.shape == item.shape
    np.testing.assert_allclose(dense(emb.user), user, atol=1e-5)
    np.testing.assert_allclose(dense(emb.item), item, atol=1e-5)


# ------------------------------------------------------------------ forward and losses


def test_forward_matches_the_definition():
    data = hand_data()
    model = build(data)
    assert model.edge_users.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]  # 12 distinct edges
    check_forward(model, data)
    assert model.forward(data).user.shape == (5, 4 + 2 * 3)
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data)
    np.testing.assert_allclose(dense(model.score(emb, torch.arange(5))), user @ item.T, atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [
        {"weight_mode": "mean"},
        {"weight_mode": "max"},
        {"pruning": False},
        {"routing": 2, "id_layers": 3},
        {"id_layers": 0},
    ],
)
def test_each_weight_mode_pruning_and_routing_match_the_definition(cfg):
    data = hand_data()
    check_forward(build(data, **cfg), data)


def test_pruning_and_routing_change_the_vectors():
    """The hand graph exercises them: some confidences are negative (pruned edges), and
    the paper's routing moves the preferences."""
    data = hand_data()
    base = build(data)
    assert (base.confidence < 0).any() and (base.confidence > 0).any()
    with torch.no_grad():
        a = base(data)
        for cfg in ({"pruning": False}, {"routing": 1}):
            other = build(data, **cfg)
            other.load_state_dict(base.state_dict())
            b = other(data)
            assert not torch.allclose(a.user, b.user), cfg
    assert build(data, weight_mode="mean").confidence is None


def test_forward_is_deterministic_and_the_same_in_training_and_eval():
    data = hand_data()
    model = build(data, routing=1)
    with torch.no_grad():
        a = model.train()(data)
        b, c = model.eval()(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert torch.equal(b.user, c.user) and torch.equal(b.item, c.item)


def test_one_modality():
    data = hand_data()
    text = with_features(data, {"text": data.features["text"]})
    model = build(text)
    assert model.modalities == ["text"] and model.confidence.shape == (11, 1)
    check_forward(model, text)


def expected_reg(model: GRCN, batch: Batch) -> float:
    """MMRec's penalty: mean square of id rows (user once per pair; items averaged over
    positive and negatives), of the batch users' preferences, and of the image table."""
    e = dense(model.id_embedding)
    users, pos, neg = batch.users.numpy(), batch.pos.numpy() + model.n_users, batch.neg.numpy() + model.n_users
    reg = np.mean(e[users] ** 2) + 0.5 * (np.mean(e[pos] ** 2) + np.mean(e[neg] ** 2))
    reg += sum(np.mean(dense(model.preference[m])[users] ** 2) for m in model.modalities)
    return reg + np.mean(dense(model.preference["image"]) ** 2)


def test_reg_matches_its_definition_with_several_negatives():
    data = hand_data()
    model = build(data, reg_weight=0.3)
    batch = Batch(torch.tensor([0, 0, 3]), torch.tensor([1, 2, 3]), torch.tensor([[4, 5], [5, 3], [0, 0]]))
    terms = model.extra_losses(model(data), batch)
    assert set(terms) == {"reg"} and terms["reg"].weight == 0.3
    assert terms["reg"].value.item() == pytest.approx(expected_reg(model, batch), rel=1e-6)
    assert build(data, reg_weight=0.0).extra_losses(model(data), batch) == {}


def test_total_loss_is_mmrecs():
    """MMRec: −mean ln σ(s⁺ − s⁻) + λ·(mean((E[u,u',…])² + (E[i⁺,i⁻,…])²) + mean(P^v²) +
    Σ_m mean(P^m[u,u,…]²)), with each user repeated for its positive and its negative."""
    data = hand_data()
    model = build(data, reg_weight=0.05)
    batch = Batch(torch.tensor([0, 1, 2, 4]), torch.tensor([0, 3, 4, 4]), torch.tensor([[5], [4], [0], [1]]))
    emb = model(data)
    u, pos, neg = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]]
    term = model.extra_losses(emb, batch)["reg"]
    ours = bpr_loss(u, pos, emb.item[batch.neg]) + term.weight * term.value
    users = batch.users.repeat_interleave(2)
    items = torch.stack([batch.pos, batch.neg[:, 0]], 1).reshape(-1) + model.n_users
    e, p = model.id_embedding, model.preference
    reg = (e[users] ** 2 + e[items] ** 2).mean() + (p["image"] ** 2).mean()
    reg = reg + (p["image"][users] ** 2).mean() + (p["text"][users] ** 2).mean()
    mmrec = -torch.log(torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean() + 0.05 * reg
    assert ours.item() == pytest.approx(mmrec.item(), rel=1e-6)


# ------------------------------------------------------------------ training, config


@pytest.mark.parametrize("cfg", [{}, {"routing": 2, "pruning": False}])
def test_gradients_reach_every_parameter(cfg):
    model, data = make("grcn", {"embedding_dim": 8, "latent_dim": 8} | cfg)
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert names == {
        "id_embedding",
        "confidence",
        "preference.image",
        "preference.text",
        "projection.image.weight",
        "projection.image.bias",
        "projection.text.weight",
        "projection.text.bias",
    }


def test_nothing_dense_in_users_by_items():
    """Edge weights live on the training edges: no buffer has n_users × n_items entries."""
    model, data = make("grcn", {"embedding_dim": 8, "latent_dim": 8})
    n_edges = len(model.edge_users)
    assert n_edges < data.n_users * data.n_items / 4
    sizes = [b.numel() for b in model.buffers()]
    assert max(sizes) <= n_edges + data.n_users + data.n_items + 1


def test_trains():
    model, data = make("grcn", {"embedding_dim": 16, "latent_dim": 16})
    assert_fit_learns("grcn", model, data)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"latent_dim": -1}, "latent_dim"),
        ({"routing": -1}, "routing"),
        ({"id_layers": -1}, "id_layers"),
        ({"weight_mode": "sum"}, "weight_mode"),
        ({"pruning": "yes"}, "pruning"),
        ({"reg_weight": -1e-3}, "reg_weight"),
        ({"aggr_mode": "add"}, "aggr_mode"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"grcn\W.*{name}"):  # [grcn] ..., or grcn.pruning
        GRCNConfig.from_dict(params, "grcn")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("grcn") is GRCN and GRCN.uses_features and GRCN.Config is GRCNConfig
    assert GRCNConfig.from_dict(params["grcn"], "grcn") == GRCNConfig()
    assert GRCNConfig() == GRCNConfig(64, 64, 0, 2, "confid", True, 1e-3)  # MMRec's settings
    space = params["tune"]["spaces"]["grcn"]
    assert space == GRCN.search_space
    assert set(space["reg_weight"]) <= {1e-1, 1e-2, 1e-3, 1e-4, 1e-5} and 1e-3 in space["train.lr"]
