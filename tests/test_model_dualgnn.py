"""DualGNN (sea/models/dualgnn.py) against its definition, computed here independently with
dense numpy on a hand-sized graph: the forward pass, the penalty and the total loss against
MMRec's; MMRec's in-place fusion as a reparametrisation; DualGNN+SEA; gradients, training,
config, params.yaml."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_checks import (
    assert_fit_learns,
    assert_one_modality_is_its_own_vectors,
    assert_sea_reads_its_splits,
    with_features,
)
from test_model_dragon import dense_adjacency, dense_user_graph, hand_data
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.dualgnn import DualGNN, DualGNNConfig

# ------------------------------------------------------------------ the definition, densely


def modality_vectors(model: DualGNN, data: GraphData) -> list[np.ndarray]:
    """h^m = Σ_{l=0..L} Â^l norm([p^m; W2 leaky(W1 x + b1) + b2]), float64."""
    adj = dense_adjacency(data)
    out = []
    for m in model.modalities:
        lin1, _, lin2 = model.mlp[m]
        w1, b1 = lin1.weight.double().detach().numpy(), lin1.bias.double().detach().numpy()
        w2, b2 = lin2.weight.double().detach().numpy(), lin2.bias.double().detach().numpy()
        z = data.features[m].double().numpy() @ w1.T + b1
        f = np.where(z > 0, z, 0.01 * z) @ w2.T + b2
        e = np.concatenate([model.preference[m].double().detach().numpy(), f])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        total, layer = e.copy(), e
        for _ in range(model.ui_layers):
            layer = adj @ layer
            total = total + layer
        out.append(total)
    return out


def expected_vectors(model: DualGNN, data: GraphData, user_k: int) -> tuple[np.ndarray, np.ndarray]:
    """u = ũ + S_U ũ with ũ = Σ_m α_um h^m_u; i = Σ_m h^m_i."""
    U = data.n_users
    h = modality_vectors(model, data)
    alpha = model.fusion.double().detach().numpy()
    fused = sum(alpha[:, j : j + 1] * hm[:U] for j, hm in enumerate(h))
    s_user = dense_user_graph(data.train_users.numpy(), data.train_items.numpy(), U, data.n_items, user_k)
    return fused + s_user @ fused, sum(hm[U:] for hm in h)


def build(data: GraphData, **cfg) -> DualGNN:
    torch.manual_seed(0)
    setup = make_setup(
        "dualgnn", {"embedding_dim": 4, "mlp_hidden_dim": 6, "user_knn_k": 2} | cfg, modalities=list(data.features)
    )
    return DualGNN.build(data, setup.model_cfg, setup.model.modalities)


# ------------------------------------------------------------------ forward and losses


@pytest.mark.parametrize("cfg,user_k", [({}, 2), ({"ui_layers": 3, "user_knn_k": 3}, 3), ({"ui_layers": 0}, 2)])
def test_forward_matches_the_definition(cfg, user_k):
    data = hand_data()
    model = build(data, **cfg)
    model.eval()
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data, user_k)
    assert emb.user.shape == (5, 4) and emb.item.shape == (6, 4)
    np.testing.assert_allclose(emb.user.double().numpy(), user, atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), item, atol=1e-5)
    np.testing.assert_allclose(model.score(emb, torch.arange(5)).double().numpy(), user @ item.T, atol=1e-4)


def test_the_user_graph_is_dragons_sparse_top_k():
    data = hand_data()
    model = build(data, user_knn_k=1)
    expected = dense_user_graph(data.train_users.numpy(), data.train_items.numpy(), 5, 6, 1)
    np.testing.assert_allclose(model.user_graph.matrix.to_dense().numpy(), expected, atol=1e-6)
    assert model.user_graph.matrix.layout == torch.sparse_csr and len(model.user_graph.values) == 5
    assert expected[4, 2] == 1.0  # user 4 shares item 4 with user 2 only


def test_forward_is_deterministic_and_the_same_in_training_and_eval():
    data = hand_data()
    model = build(data)
    with torch.no_grad():
        a = model.train()(data)
        b, c = model.eval()(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert torch.equal(b.user, c.user) and torch.equal(b.item, c.item)


def test_mmrecs_in_place_fusion_is_a_reparametrisation_of_the_weighted_sum():
    """MMRec adds t_rep into v_rep in place, so its users are α_v·(h^v + h^t) + α_t·h^t: the
    weighted sum here with the text weight α_v + α_t."""
    data = hand_data()
    model = build(data, user_knn_k=0)
    h = modality_vectors(model, data)
    alpha = model.fusion.double().detach().numpy()
    mmrec = alpha[:, :1] * (h[0][:5] + h[1][:5]) + alpha[:, 1:] * h[1][:5]
    with torch.no_grad():
        model.fusion[:, 1] += model.fusion[:, 0]
        emb = model(data)
    np.testing.assert_allclose(emb.user.double().numpy(), mmrec, atol=1e-5)
    assert not np.allclose(sum(alpha[:, j : j + 1] * hm[:5] for j, hm in enumerate(h)), mmrec, atol=1e-3)


def test_user_graph_switched_off_and_one_modality():
    data = hand_data()
    model = build(data)
    bare = build(data, user_knn_k=0)
    bare.load_state_dict(model.state_dict())
    assert bare.user_graph is None
    with torch.no_grad():
        full, plain = model(data), bare(data)
    torch.testing.assert_close(full.item, plain.item)
    torch.testing.assert_close(full.user, plain.user + torch.sparse.mm(model.user_graph.matrix, plain.user))
    text = with_features(data, {"text": data.features["text"]})
    assert_one_modality_is_its_own_vectors(build(text, user_knn_k=0), text)


# ------------------------------------------------------------------ DualGNN+SEA


def test_dualgnn_sea_feeds_each_modalitys_split_to_its_mlp_and_trains_every_parameter():
    data = hand_data()
    plain, sea = build(data), build(data, separation="sea")
    assert_sea_reads_its_splits(plain, sea, data)
    model, toy = make("dualgnn", {"separation": "sea", "embedding_dim": 8, "mlp_hidden_dim": 16})
    parts = step(model, toy, make_batch(toy), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "club", "solosim"} <= set(parts)
    assert not grads_missing(model)


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("dualgnn", {"embedding_dim": 8, "mlp_hidden_dim": 16, "user_knn_k": 5})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert names == {
        "fusion",
        "preference.image",
        "preference.text",
        *(f"mlp.{m}.{i}.{w}" for m in ("image", "text") for i in (0, 2) for w in ("weight", "bias")),
    }


def test_trains():
    model, data = make("dualgnn", {"embedding_dim": 16, "mlp_hidden_dim": 32, "user_knn_k": 10})
    assert_fit_learns("dualgnn", model, data)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"mlp_hidden_dim": -1}, "mlp_hidden_dim"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"user_knn_k": -1}, "user_knn_k"),
        ({"reg_weight": -1e-3}, "reg_weight"),
        ({"knn_k": 10}, "knn_k"),
        ({"separation": "clip"}, "separation"),
        ({"generic_fraction": 1.0}, "generic_fraction"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"\[dualgnn\].*{name}"):
        DualGNNConfig.from_dict(params, "dualgnn")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("dualgnn") is DualGNN and DualGNN.uses_features and DualGNN.Config is DualGNNConfig
    assert DualGNNConfig.from_dict(params["dualgnn"], "dualgnn") == DualGNNConfig()
    assert DualGNNConfig() == DualGNNConfig(64, 256, 2, 40, 1e-3, "none")  # MMRec's settings
    assert params["tune"]["spaces"]["dualgnn"] == DualGNN.search_space
    assert DualGNN.search_space == {"train.lr": [1e-2, 1e-3, 1e-4], "reg_weight": [1e-1, 1e-2, 1e-3, 1e-4]}
