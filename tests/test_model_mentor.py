"""MENTOR (sea/models/mentor.py) against its definition, computed here independently with
dense numpy on a hand-sized graph: the item–item graph, the forward pass, each loss term and
the total loss against the authors' scale; gradients, training, config, params.yaml."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_checks import assert_fit_learns, with_features
from test_model_dragon import dense_adjacency, hand_data
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.mentor import MENTOR, MENTORConfig

# ------------------------------------------------------------------ the definition, densely


def np_(t: torch.Tensor) -> np.ndarray:
    return t.double().detach().numpy()


def dense_item_graph(data: GraphData, k: int, image_weight: float) -> np.ndarray:
    """Per modality: top-k cosine neighbours (itself included), binary, D^-1/2 S D^-1/2 with
    D the row sums (= k), mixed w·image + (1 − w)·text."""
    out = 0.0
    for m, w in (("image", image_weight), ("text", 1.0 - image_weight)):
        x = np_(data.features[m])
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        s = np.zeros_like(sim)
        for i in range(len(sim)):
            s[i, np.argsort(-sim[i], kind="stable")[:k]] = 1.0
        d = s.sum(1) ** -0.5
        out = out + w * (d[:, None] * s * d[None, :])
    return out


def view_vectors(model: MENTOR, data: GraphData) -> dict[str, np.ndarray]:
    """h^v = Σ_{l=0..L} Â^l norm([p^v; W2 leaky(W1 x + b1) + b2]) for v in id, image, text."""
    adj = dense_adjacency(data)
    out = {}
    for v in ("id", "image", "text"):
        lin1, _, lin2 = model.mlp[v]
        x = np_(model.id_table) if v == "id" else np_(data.features[v])
        z = x @ np_(lin1.weight).T + np_(lin1.bias)
        f = np.where(z > 0, z, 0.01 * z) @ np_(lin2.weight).T + np_(lin2.bias)
        e = np.concatenate([np_(model.preference[v]), f])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        total, layer = e.copy(), e
        for _ in range(model.ui_layers):
            layer = adj @ layer
            total = total + layer
        out[v] = total
    return out


def expected(model: MENTOR, data: GraphData, s: np.ndarray):
    """Fused users/items and the four (users, items) tables of the alignment term, with the
    modality tables materialised as repeats ([v ‖ v])."""
    U = data.n_users
    h = view_vectors(model, data)
    sk = np.linalg.matrix_power(s, model.item_layers)
    g = {v: h[v][U:] + sk @ h[v][U:] for v in h}
    alpha = np_(model.fusion)
    user = np.concatenate([alpha[:, :1] * h["image"][:U], alpha[:, 1:] * h["text"][:U]], axis=1)
    item = np.concatenate([g["image"], g["text"]], axis=1)
    tables = [(user, item)] + [(np.tile(h[v][:U], 2), np.tile(g[v], 2)) for v in ("id", "image", "text")]
    return user, item, tables


def build(data: GraphData, **cfg) -> MENTOR:
    torch.manual_seed(0)
    setup = make_setup(
        "mentor", {"embedding_dim": 4, "mlp_hidden_dim": 6, "knn_k": 2} | cfg, modalities=list(data.features)
    )
    return MENTOR.build(data, setup.model_cfg, setup.model.modalities)


BATCH = Batch(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 3, 3, 5]), torch.tensor([[5], [4], [2], [1]]))

# ------------------------------------------------------------------ graph and forward


@pytest.mark.parametrize("k,w", [(2, 0.1), (3, 0.5), (1, 1.0)])
def test_item_graph_is_the_sparse_top_k_mix(k, w):
    data = hand_data()
    model = build(data, knn_k=k, image_knn_weight=w)
    graph = model.item_graph.matrix
    assert graph.layout == torch.sparse_csr and len(model.item_graph.values) <= 2 * 6 * k
    np.testing.assert_allclose(graph.to_dense().double().numpy(), dense_item_graph(data, k, w), atol=1e-6)


@pytest.mark.parametrize("cfg", [{}, {"ui_layers": 3, "item_layers": 1}, {"ui_layers": 0, "item_layers": 0}])
def test_forward_matches_the_definition(cfg):
    data = hand_data()
    model = build(data, **cfg)
    model.eval()
    with torch.no_grad():
        emb = model(data)
    user, item, _ = expected(model, data, dense_item_graph(data, 2, 0.1))
    assert emb.user.shape == (5, 8) and emb.item.shape == (6, 8) and emb.extras == {}
    np.testing.assert_allclose(np_(emb.user), user, atol=1e-5)
    np.testing.assert_allclose(np_(emb.item), item, atol=1e-5)
    np.testing.assert_allclose(np_(model.score(emb, torch.arange(5))), user @ item.T, atol=1e-4)


def test_eval_is_deterministic_and_training_adds_noise_only_to_the_noisy_views():
    data = hand_data()
    model = build(data)
    with torch.no_grad():
        a, b = model.eval()(data), model(data)
        t1, t2 = model.train()(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    torch.testing.assert_close(t1.user, a.user)
    torch.testing.assert_close(t1.item, a.item)
    assert not torch.allclose(t1.extras["noisy1"][0], t2.extras["noisy1"][0])
    assert not torch.allclose(t1.extras["noisy1"][1], t1.extras["noisy2"][1])


# ------------------------------------------------------------------ the loss terms


def test_align_is_the_sum_over_table_pairs_of_mean_and_variance_gaps():
    data = hand_data()
    model = build(data, align_weight=0.3, reg_weight=0.0, mask_weight_f=0.0, mask_weight_g=0.0)
    emb = model.train()(data)
    terms = model.extra_losses(emb, BATCH)
    _, _, tables = expected(model, data, dense_item_graph(data, 2, 0.1))
    stats = [
        (np.concatenate([u.ravel(), i.ravel()]).mean(), np.concatenate([u.ravel(), i.ravel()]).var(ddof=1))
        for u, i in tables
    ]
    want = sum(
        abs(stats[a][1] - stats[b][1]) + abs(stats[a][0] - stats[b][0]) for a in range(4) for b in range(a + 1, 4)
    )
    assert set(terms) == {"align"}
    assert terms["align"].value.item() == pytest.approx(want, rel=1e-5)
    assert terms["align"].weight == pytest.approx(0.3 * math.log(2))


def test_mask_f_is_one_minus_cosine_of_dropped_target_and_predictor():
    data = hand_data()
    model = build(data, mask_weight_f=2.0, reg_weight=0.0, align_weight=0.0, mask_weight_g=0.0, dropout=0.4)
    emb = model.train()(data)
    torch.manual_seed(3)
    value = model.extra_losses(emb, BATCH)["mask_f"].value
    torch.manual_seed(3)
    want = 0.0
    p_w, p_b = np_(model.predictor.weight), np_(model.predictor.bias)
    for table in (emb.user, emb.item):
        keep = torch.nn.functional.dropout(torch.ones_like(table), 0.4, training=True).double().numpy()
        x = np_(table)
        target, pred = keep * x, x @ p_w.T + p_b
        cos = (target * pred).sum(1) / (np.linalg.norm(target, axis=1) * np.linalg.norm(pred, axis=1))
        want += 1.0 - cos.mean()
    assert value.item() == pytest.approx(want, rel=1e-5)
    value.backward()
    assert model.predictor.weight.grad.abs().sum() > 0  # the authors' code gives it none (no_grad)


def test_mask_g_is_infonce_between_the_noisy_views_over_distinct_batch_rows():
    data = hand_data()
    model = build(data, mask_weight_g=0.01, temperature=0.4, reg_weight=0.0, align_weight=0.0, mask_weight_f=0.0)
    emb = model.train()(data)
    terms = model.extra_losses(emb, BATCH)

    def info_nce(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        logits = a @ b.T / 0.4
        return np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))

    (u1, i1), (u2, i2) = [tuple(np_(t) for t in emb.extras[n]) for n in ("noisy1", "noisy2")]
    users, items = [0, 1, 3], [0, 3, 5]
    want = info_nce(u1[users], u2[users]) + info_nce(i1[items], i2[items])
    assert set(terms) == {"mask_g"}
    assert terms["mask_g"].value.item() == pytest.approx(want, rel=1e-5)
    assert terms["mask_g"].weight == pytest.approx(0.01 * math.log(2))


def test_noisy_views_are_the_fusion_of_a_perturbed_propagation():
    """With noise 0 both noisy views are the scored vectors; with noise each hop moves by eps."""
    data = hand_data()
    model = build(data, noise_eps=0.0).train()
    with torch.no_grad():
        emb = model(data)
    for name in ("noisy1", "noisy2"):
        torch.testing.assert_close(emb.extras[name][0], emb.user)
        torch.testing.assert_close(emb.extras[name][1], emb.item)
    model = build(data, noise_eps=0.1, ui_layers=1).train()
    with torch.no_grad():
        emb = model(data)
        h = emb.extras["noisy1"][0][:, :4] / model.fusion[:, :1]
        clean = emb.user[:, :4] / model.fusion[:, :1]
    gap = (h - clean).norm(dim=1)  # eps·sign(.)·norm(noise): norm exactly eps per row
    torch.testing.assert_close(gap, torch.full_like(gap, 0.1), atol=1e-5, rtol=0)


def test_reg_and_the_total_loss_are_the_authors_times_ln2():
    data = hand_data()
    model = build(data, reg_weight=0.05)
    emb = model.train()(data)
    torch.manual_seed(1)
    terms = model.extra_losses(emb, BATCH)
    assert set(terms) == {"reg", "align", "mask_f", "mask_g"}
    p = {m: np_(model.preference[m])[[0, 1, 1, 3]] for m in ("image", "text")}
    want = np.mean(p["image"] ** 2) + np.mean(p["text"] ** 2) + np.mean(np_(model.fusion) ** 2)
    assert terms["reg"].value.item() == pytest.approx(want, rel=1e-6)
    u, pos, neg = emb.user[BATCH.users], emb.item[BATCH.pos], emb.item[BATCH.neg[:, 0]]
    ours = bpr_loss(u, pos, emb.item[BATCH.neg]) + sum(t.weight * t.value for t in terms.values())
    weights = {"reg": 0.05, "align": 0.1, "mask_f": 1.5, "mask_g": 1e-4}
    authors = -torch.log2(torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean() + sum(
        weights[k] * t.value for k, t in terms.items()
    )
    assert ours.item() == pytest.approx(math.log(2) * authors.item(), rel=1e-6)
    zero = build(data, reg_weight=0.0, align_weight=0.0, mask_weight_f=0.0, mask_weight_g=0.0)
    assert zero.extra_losses(zero.train()(data), BATCH) == {}


def test_one_modality_has_no_fusion_weight():
    data = hand_data()
    text = with_features(data, {"text": data.features["text"]})
    model = build(text)
    assert model.fusion is None and model.views == ["id", "text"] and model.predictor.in_features == 4
    emb = model.train()(text)
    assert emb.user.shape == (5, 4) and set(model.extra_losses(emb, BATCH)) == {"reg", "align", "mask_f", "mask_g"}


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("mentor", {"embedding_dim": 8, "mlp_hidden_dim": 16, "mask_weight_g": 0.1})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg", "align", "mask_f", "mask_g"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert names == {
        "id_table",
        "fusion",
        "predictor.weight",
        "predictor.bias",
        *(f"preference.{v}" for v in ("id", "image", "text")),
        *(f"mlp.{v}.{i}.{w}" for v in ("id", "image", "text") for i in (0, 2) for w in ("weight", "bias")),
    }


def test_trains():
    model, data = make("mentor", {"embedding_dim": 16, "mlp_hidden_dim": 32})
    assert_fit_learns("mentor", model, data, loss_ratio=0.8)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"mlp_hidden_dim": -1}, "mlp_hidden_dim"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"knn_k": 0}, "knn_k"),
        ({"image_knn_weight": 1.5}, "image_knn_weight"),
        ({"item_layers": -1}, "item_layers"),
        ({"reg_weight": -1e-3}, "reg_weight"),
        ({"align_weight": -0.1}, "align_weight"),
        ({"mask_weight_f": -1.0}, "mask_weight_f"),
        ({"dropout": 1.0}, "dropout"),
        ({"mask_weight_g": -1e-4}, "mask_weight_g"),
        ({"temperature": 0.0}, "temperature"),
        ({"noise_eps": -0.1}, "noise_eps"),
        ({"knn_chunk": 0}, "knn_chunk"),
        ({"user_knn_k": 10}, "user_knn_k"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"\[mentor\].*{name}"):
        MENTORConfig.from_dict(params, "mentor")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("mentor") is MENTOR and MENTOR.uses_features and MENTOR.Config is MENTORConfig
    assert MENTORConfig.from_dict(params["mentor"], "mentor") == MENTORConfig()
    # the authors' MENTOR.yaml as their model reads it: the item-item hops are n_mm_layers (1);
    # its n_layers (2) is read by nothing in their model (found by the parity check, docs/models/mentor.md)
    assert MENTORConfig() == MENTORConfig(64, 256, 2, 10, 0.1, 1, 1e-3, 0.1, 1.5, 0.5, 1e-4, 0.2, 0.1)
    assert params["tune"]["spaces"]["mentor"] == MENTOR.search_space
    assert MENTOR.search_space == {"train.lr": [1e-4], "mask_weight_g": [1e-4, 1e-3], "temperature": [0.2, 0.4, 0.6]}
