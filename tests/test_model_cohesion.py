"""COHESION (sea/models/cohesion.py) against its definition, computed here independently with
dense numpy on a hand-sized graph: the item–item graph, the forward pass (early fusion,
refined user–item propagation, late fusion, user–user and item–item hops), the adaptive BPR,
the penalty and the total loss against the authors'; gradients, training, config, params.yaml."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_checks import assert_fit_learns, with_features
from test_model_dragon import dense_adjacency, dense_user_graph, hand_data
from test_sea import grads_missing, make, make_batch, make_setup

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.cohesion import COHESION, COHESIONConfig, item_graph, knn_mean_graph
from sea.train import train_step

# ------------------------------------------------------------------ the definition, densely


def dense_knn_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Row i: 1/k at its top-k cosine neighbours, itself included."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    a = np.zeros_like(sim)
    for i in range(len(x)):
        a[i, np.argsort(-sim[i], kind="stable")[:k]] = 1.0 / k
    return a


def np_mlp(seq, x: np.ndarray) -> np.ndarray:
    lin1, _, lin2 = seq
    z = x @ lin1.weight.double().detach().numpy().T + lin1.bias.double().detach().numpy()
    z = np.where(z > 0, z, 0.01 * z)
    return z @ lin2.weight.double().detach().numpy().T + lin2.bias.double().detach().numpy()


def refined(adj: np.ndarray, x: np.ndarray, layers: int) -> np.ndarray:
    x0 = x / np.linalg.norm(x, axis=1, keepdims=True)
    out, h = x0.copy(), x0
    for _ in range(layers):
        h = adj @ h
        cos = (h * x0).sum(1) / np.maximum(np.linalg.norm(h, axis=1) * np.linalg.norm(x0, axis=1), 1e-8)
        h = cos[:, None] * h
        out = out + h
    return out


def expected_vectors(model: COHESION, data: GraphData, knn_k: int, user_k: int, image_weight: float = 0.1):
    U = data.n_users
    adj = dense_adjacency(data)
    e = model.item_id.double().detach().numpy()
    g = np_mlp(model.id_mlp, e)  # the id branch's own MLP of the id embedding
    id_items = np.sqrt((e**2 + g**2) / 2 + 1e-8)
    blocks = [refined(adj, np.concatenate([model.id_preference.double().detach().numpy(), id_items]), model.ui_layers)]
    for m in model.modalities:
        f = np_mlp(model.mlp[m], data.features[m].double().numpy())
        p = model.preference[m].double().detach().numpy()
        blocks.append(refined(adj, np.concatenate([p, np.sqrt((e**2 + f**2) / 2 + 1e-8)]), model.ui_layers))
    user = np.concatenate([b[:U] for b in blocks], axis=1)
    item = np.concatenate([b[U:] for b in blocks], axis=1)
    s_item = image_weight * dense_knn_mean(data.features["image"].double().numpy(), knn_k) + (
        1 - image_weight
    ) * dense_knn_mean(data.features["text"].double().numpy(), knn_k)
    hop = item
    for _ in range(model.item_layers):
        hop = s_item @ hop
    item = item + hop if model.item_layers > 0 else item
    s_user = dense_user_graph(data.train_users.numpy(), data.train_items.numpy(), U, data.n_items, user_k)
    return user + s_user @ user, item


def build(data: GraphData, **cfg) -> COHESION:
    torch.manual_seed(0)
    setup = make_setup(
        "cohesion",
        {"embedding_dim": 4, "mlp_hidden_dim": 6, "knn_k": 2, "user_knn_k": 2} | cfg,
        modalities=list(data.features),
    )
    return COHESION.build(data, setup.model_cfg, setup.model.modalities)


# ------------------------------------------------------------------ graphs and forward


@pytest.mark.parametrize("k", [1, 2, 3])
def test_item_graph_is_the_mixed_top_k_mean_with_itself_included(k):
    data = hand_data()
    x = {m: data.features[m] for m in ("image", "text")}
    got = item_graph(x, k, 0.3).to_dense().double().numpy()
    want = 0.3 * dense_knn_mean(x["image"].double().numpy(), k) + 0.7 * dense_knn_mean(x["text"].double().numpy(), k)
    np.testing.assert_allclose(got, want, atol=1e-7)
    # chunked the same as all at once; one modality: its own graph
    torch.testing.assert_close(
        knn_mean_graph(x["text"], k, chunk=2).to_dense(), knn_mean_graph(x["text"], k).to_dense()
    )
    one = item_graph({"text": x["text"]}, k, 0.3).to_dense().double().numpy()
    np.testing.assert_allclose(one, dense_knn_mean(x["text"].double().numpy(), k), atol=1e-7)


@pytest.mark.parametrize("cfg", [{}, {"ui_layers": 1, "item_layers": 2}, {"ui_layers": 3, "detach_id": False}])
def test_forward_matches_the_definition(cfg):
    data = hand_data()
    model = build(data, **cfg)
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data, 2, 2)
    assert emb.user.shape == (5, 12) and emb.item.shape == (6, 12)
    np.testing.assert_allclose(emb.user.numpy(), user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.item.numpy(), item, rtol=1e-5, atol=1e-6)


def test_forward_is_deterministic_and_the_same_in_training_and_eval():
    data = hand_data()
    model = build(data)
    a = model.train()(data)
    b = model.eval()(data)
    torch.testing.assert_close(a.user, b.user, rtol=0, atol=0)
    torch.testing.assert_close(a.item, b.item, rtol=0, atol=0)


def test_graphs_switched_off_and_one_modality():
    data = hand_data()
    model = build(data, user_knn_k=0, item_layers=0)
    assert model.user_graph is None
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(build(data, item_layers=0), data, 2, 2)  # same weights (same seed)
    s_user = dense_user_graph(data.train_users.numpy(), data.train_items.numpy(), 5, 6, 2)
    np.testing.assert_allclose(emb.item.numpy(), item, rtol=1e-5, atol=1e-6)
    # without the user hop: u = ũ, where the definition gave ũ + S_U ũ
    np.testing.assert_allclose(emb.user.numpy() + s_user @ emb.user.numpy(), user, rtol=1e-5, atol=1e-6)
    text = with_features(data, {"text": data.features["text"]})
    one = build(text)
    assert one.modalities == ["text"] and one(text).user.shape == (5, 8)


# ------------------------------------------------------------------ losses


def test_adaptive_bpr_matches_the_definition_and_its_weights_carry_no_gradient():
    data = hand_data()
    model = build(data)
    batch = Batch(torch.tensor([0, 1, 3]), torch.tensor([1, 3, 5]), torch.tensor([[4, 2], [5, 0], [0, 1]]))
    emb = model(data)
    u, it = emb.user.detach().double().numpy(), emb.item.detach().double().numpy()
    total, margins = 0.0, []
    for b in range(3):
        for n in range(2):
            s = [
                u[batch.users[b], j * 4 : (j + 1) * 4] @ (it[batch.pos[b]] - it[batch.neg[b, n]])[j * 4 : (j + 1) * 4]
                for j in range(3)
            ]
            s = np.array(s)
            w = 1 - np.exp(s) / np.exp(s).sum()
            margins.append((w, s))
            total += -np.log(1 / (1 + np.exp(-(w * s).sum())))
    terms = model.extra_losses(emb, batch)
    assert terms["bpr"].weight == 1.0
    assert terms["bpr"].value.item() == pytest.approx(total / 6, rel=1e-5)
    # gradient: as if the weights w were constants
    terms["bpr"].value.backward()
    got = model.item_id.grad.clone()
    model.zero_grad()
    emb = model(data)
    ub, pb, nb = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
    loss = 0.0
    for b in range(3):
        for n in range(2):
            w = torch.tensor(margins[b * 2 + n][0], dtype=torch.float32)
            d = (ub[b] * (pb[b] - nb[b, n])).view(3, 4).sum(1)
            loss = loss - torch.nn.functional.logsigmoid((w * d).sum())
    (loss / 6).backward()
    torch.testing.assert_close(got, model.item_id.grad, rtol=1e-4, atol=1e-7)


def test_reg_is_the_mean_square_of_the_batch_feature_preferences():
    data = hand_data()
    model = build(data, reg_weight=0.3)
    batch = Batch(torch.tensor([0, 0, 3]), torch.tensor([1, 2, 5]), torch.tensor([[4], [5], [0]]))
    emb = model(data)
    terms = model.extra_losses(emb, batch)
    p = {m: model.preference[m].detach().numpy()[[0, 0, 3]] for m in ("image", "text")}
    assert set(terms) == {"bpr", "reg"}
    assert terms["reg"].value.item() == pytest.approx(np.mean(p["image"] ** 2) + np.mean(p["text"] ** 2), rel=1e-6)
    assert terms["reg"].weight == pytest.approx(0.3 * math.log(2))
    assert set(build(data, reg_weight=0.0).extra_losses(emb, batch)) == {"bpr"}


def test_total_loss_is_the_authors_times_ln2():
    """Authors: −mean log₂σ(Σ_m w_m(s⁺_m − s⁻_m)) + λ·reg. Here: nats + λ·ln2·reg = ln 2 × theirs."""
    data = hand_data()
    model = build(data, reg_weight=0.05)
    batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 3, 4, 5]), torch.tensor([[5], [4], [0], [1]]))
    emb = model(data)
    u, pos, neg = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]]
    ps, ns = (u * pos).view(-1, 3, 4).sum(-1), (u * neg).view(-1, 3, 4).sum(-1)
    w = (1 - (ps - ns).softmax(-1)).repeat_interleave(4, dim=1)
    terms = model.extra_losses(emb, batch)
    ours = sum(t.weight * t.value for t in terms.values())
    theirs = -torch.log2(torch.sigmoid((u * pos * w).sum(1) - (u * neg * w).sum(1))).mean() + 0.05 * terms["reg"].value
    assert ours.item() == pytest.approx(math.log(2) * theirs.item(), rel=1e-5)


# ------------------------------------------------------------------ training, config


@pytest.mark.parametrize("detach_id", [True, False])
def test_gradients_reach_every_parameter(detach_id):
    model, data = make("cohesion", {"embedding_dim": 8, "mlp_hidden_dim": 16, "user_knn_k": 5, "detach_id": detach_id})
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data, negatives=2), "auto")
    assert set(parts) == {"loss", "bpr", "reg"}
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert {"item_id", "preference.image", "preference.text", "mlp.image.0.weight", "mlp.text.2.bias"} <= names
    # the authors' id preference and id MLP are never trained: buffers then
    assert ({"id_preference", "id_mlp.0.weight", "id_mlp.2.bias"} <= names) is not detach_id
    assert not {"id_preference", "id_mlp.0.weight", "id_mlp.2.bias"} & names or not detach_id


def test_trains():
    model, data = make("cohesion", {"embedding_dim": 16, "mlp_hidden_dim": 32, "user_knn_k": 10})
    assert make_setup("cohesion").ranking_loss == "none"
    assert_fit_learns("cohesion", model, data, lr=1e-2)


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
        ({"detach_id": "yes"}, "detach_id"),
        ({"dropout": 0.1}, "dropout"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"cohesion.*{name}"):
        COHESIONConfig.from_dict(params, "cohesion")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("cohesion") is COHESION and COHESION.uses_features and COHESION.preferred_loss == "none"
    assert COHESIONConfig.from_dict(params["cohesion"], "cohesion") == COHESIONConfig()
    assert COHESIONConfig() == COHESIONConfig(64, 256, 2, 1, 10, 0.1, 40, 1e-4, True)  # the authors' settings
    space = params["tune"]["spaces"]["cohesion"]
    assert space == COHESION.search_space == {"train.lr": [1e-3], "reg_weight": [1e-4], "ui_layers": [1, 2]}
