"""MMGCN (sea/models/mmgcn.py) against its definition, computed here independently with
dense numpy on a hand-sized graph: the forward pass in each of its variants, the penalty
and the total loss against MMRec's formula; gradients, frozen embeddings, training,
config, params.yaml."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_fit_learns
from test_sea import grads_missing, make, make_batch, make_setup, step

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.mmgcn import MMGCN, MMGCNConfig

# ------------------------------------------------------------------ the definition, densely


def hand_data(modalities=("image", "text")) -> GraphData:
    """5 users, 6 items; item 5 has no training edge (an isolated node)."""
    train = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 3), (2, 1), (2, 2), (2, 4), (3, 3), (4, 4), (4, 0)]
    rows = [(u, i, "train") for u, i in train] + [(0, 3, "valid"), (1, 2, "test"), (3, 5, "valid"), (4, 5, "test")]
    g = np.random.default_rng(3)
    feats = {"image": g.normal(size=(6, 7)).astype(np.float32), "text": g.normal(size=(6, 5)).astype(np.float32)}
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6, {m: feats[m] for m in modalities})


def build(data: GraphData, **cfg) -> MMGCN:
    torch.manual_seed(0)
    setup = make_setup("mmgcn", {"embedding_dim": 4, "image_latent_dim": 3} | cfg, modalities=list(data.features))
    return MMGCN.build(data, setup.model_cfg, setup.model.modalities)


def lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.01 * x)


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def expected_vectors(model: MMGCN, data: GraphData, aggregation="mean", combination="concat", fusion="mean"):
    """(user, item) vectors from the definition (numpy, float64)."""
    U, n = data.n_users, data.n_users + data.n_items
    a = np.zeros((n, n))
    u, i = data.train_users.numpy(), data.train_items.numpy() + U
    a[u, i] = a[i, u] = 1.0
    if aggregation == "mean":
        deg = a.sum(1, keepdims=True)
        a = np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)
    ids = np_(model.id_embedding)
    outs = []
    for m, gcn in model.gcn.items():
        f = data.features[m].double().numpy()
        if gcn.projection is not None:
            f = f @ np_(gcn.projection.weight).T + np_(gcn.projection.bias)
        x = np.concatenate([np_(gcn.preference), f])
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        for w, own, comb in zip(gcn.aggregate, gcn.own, gcn.combine, strict=True):
            h = lrelu(a @ (x @ np_(w)))
            x_hat = lrelu(x @ np_(own.weight).T + np_(own.bias)) + ids
            if combination == "concat":
                x = lrelu(np.concatenate([h, x_hat], axis=1) @ np_(comb.weight).T + np_(comb.bias))
            else:
                x = lrelu(h @ np_(comb.weight).T + np_(comb.bias) + x_hat)
        outs.append(x)
    out = sum(outs) / (len(outs) if fusion == "mean" else 1)
    return out[:U], out[U:]


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"combination": "element"},
        {"aggregation": "sum", "fusion": "sum"},
        {"layers": 1, "text_latent_dim": 2, "image_latent_dim": 0},
        {"layers": 2, "combination": "element", "aggregation": "sum"},
    ],
)
def test_forward_matches_the_definition(cfg):
    data = hand_data()
    model = build(data, **cfg)
    model.eval()
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(
        model,
        data,
        cfg.get("aggregation", "mean"),
        cfg.get("combination", "concat"),
        cfg.get("fusion", "mean"),
    )
    assert emb.user.shape == (5, 4) and emb.item.shape == (6, 4)
    np.testing.assert_allclose(emb.user.double().numpy(), user, atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), item, atol=1e-5)
    np.testing.assert_allclose(model.score(emb, torch.arange(5)).double().numpy(), user @ item.T, atol=1e-5)


def test_sizes_follow_the_config():
    data = hand_data()
    model = build(data, layers=2, image_latent_dim=3, text_latent_dim=0)
    image, text = model.gcn["image"], model.gcn["text"]
    assert image.projection.weight.shape == (3, 7) and text.projection is None
    assert image.preference.shape == (5, 3) and text.preference.shape == (5, 5)
    assert [w.shape for w in image.aggregate] == [(3, 3), (4, 4)]
    assert [w.shape for w in text.aggregate] == [(5, 5), (4, 4)]
    assert [c.weight.shape for c in text.combine] == [(4, 9), (4, 8)]  # concat: [h; x-hat]
    assert model.id_embedding.shape == (11, 4)  # users then items, shared by the modalities
    element = build(data, layers=2, combination="element", text_latent_dim=0)
    assert [c.weight.shape for c in element.gcn["text"].combine] == [(4, 5), (4, 4)]


def test_forward_is_deterministic_and_the_same_in_training_and_eval():
    data = hand_data()
    model = build(data)
    with torch.no_grad():
        a = model.train()(data)
        b, c = model.eval()(data), model(data)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert torch.equal(b.user, c.user) and torch.equal(b.item, c.item)


def test_one_modality_is_its_gcn_alone():
    data = hand_data(("text",))
    model = build(data)
    assert list(model.gcn) == ["text"]
    with torch.no_grad():
        emb = model(data)
    user, item = expected_vectors(model, data)
    np.testing.assert_allclose(emb.user.double().numpy(), user, atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), item, atol=1e-5)


# ------------------------------------------------------------------ losses


def expected_reg(model: MMGCN, batch: Batch) -> float:
    """MMRec's penalty: mean square of the batch's user ids, half the positives' and the
    negatives' mean squares, and each modality's preferences' mean square."""
    ids, U = np_(model.id_embedding), model.n_users
    users, pos, neg = batch.users.numpy(), batch.pos.numpy(), batch.neg.numpy()
    reg = np.mean(ids[users] ** 2) + 0.5 * (np.mean(ids[U + pos] ** 2) + np.mean(ids[U + neg] ** 2))
    return reg + sum(np.mean(np_(g.preference) ** 2) for g in model.gcn.values())


@pytest.mark.parametrize("negatives", [1, 3])
def test_reg_is_mmrecs_mean_square_penalty(negatives):
    data = hand_data()
    model = build(data, reg_weight=0.3)
    g = torch.Generator().manual_seed(negatives)
    batch = Batch(torch.tensor([0, 0, 3, 4]), torch.tensor([1, 2, 3, 0]), torch.randint(6, (4, negatives), generator=g))
    emb = model(data)
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"reg"} and terms["reg"].weight == 0.3
    assert terms["reg"].value.item() == pytest.approx(expected_reg(model, batch), rel=1e-6)
    assert build(data, reg_weight=0.0).extra_losses(emb, batch) == {}


def test_total_loss_is_mmrecs():
    """MMRec (image only, one negative): −mean ln σ(s⁺ − s⁻) + λ·(mean(e[users2]² + e[items]²)
    + mean(p_image²)), its users repeated twice and the items interleaved (pos, neg)."""
    data = hand_data(("image",))
    lam = 0.05
    model = build(data, reg_weight=lam)
    batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 3, 4, 3]), torch.tensor([[5], [4], [0], [1]]))
    emb = model(data)
    term = model.extra_losses(emb, batch)["reg"]
    ours = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]) + term.weight * term.value
    out = torch.cat([emb.user, emb.item]).detach()
    ids = model.id_embedding.detach()
    user_tensor = batch.users.repeat_interleave(2)
    item_tensor = torch.stack([batch.pos, batch.neg[:, 0]]).t().reshape(-1) + 5
    score = (out[user_tensor] * out[item_tensor]).sum(1).view(-1, 2)
    mmrec = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))).mean()
    reg = (ids[user_tensor] ** 2 + ids[item_tensor] ** 2).mean() + (model.gcn["image"].preference.detach() ** 2).mean()
    assert ours.item() == pytest.approx((mmrec + lam * reg).item(), rel=1e-6)


# ------------------------------------------------------------------ frozen embeddings (MMRec's code)


def test_frozen_embeddings_are_buffers_that_stay_put():
    data = hand_data()
    model = build(data, frozen_embeddings=True, reg_weight=0.1)
    names = {n for n, _ in model.named_parameters()}
    assert "id_embedding" not in names and not any("preference" in n for n in names)
    assert {"id_embedding", "gcn.image.preference", "gcn.text.preference"} <= set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_batch(data, n=8)
    parts = step(model, data, batch, torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert "reg" not in parts  # nothing it reads learns (MMRec's is a constant)
    after = model.state_dict()
    assert torch.equal(before["id_embedding"], after["id_embedding"])
    assert torch.equal(before["gcn.text.preference"], after["gcn.text.preference"])
    assert not torch.equal(before["gcn.text.combine.0.weight"], after["gcn.text.combine.0.weight"])
    # the same draw as the trained model's: only the learning differs
    trained = build(data)
    assert torch.equal(trained.id_embedding.detach(), before["id_embedding"])


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("mmgcn", {"embedding_dim": 8, "image_latent_dim": 16})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "reg"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert {
        "id_embedding",
        "gcn.image.preference",
        "gcn.text.preference",
        "gcn.image.projection.weight",
        "gcn.image.aggregate.2",
        "gcn.text.own.0.bias",
        "gcn.text.combine.2.weight",
    } <= names


def test_trains():
    model, data = make("mmgcn", {"embedding_dim": 16, "image_latent_dim": 16})
    assert_fit_learns("mmgcn", model, data)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"layers": 0}, "layers"),
        ({"image_latent_dim": -1}, "image_latent_dim"),
        ({"text_latent_dim": -2}, "text_latent_dim"),
        ({"aggregation": "max"}, "aggregation"),
        ({"combination": "add"}, "combination"),
        ({"fusion": "concat"}, "fusion"),
        ({"reg_weight": -1e-3}, "reg_weight"),
        ({"frozen_embeddings": "maybe"}, "frozen_embeddings"),
        ({"n_layers": 2}, "n_layers"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"mmgcn.*{name}"):
        MMGCNConfig.from_dict(params, "mmgcn")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("mmgcn") is MMGCN and MMGCN.uses_features and MMGCN.Config is MMGCNConfig
    assert MMGCNConfig.from_dict(params["mmgcn"], "mmgcn") == MMGCNConfig()
    # MMRec's settings: 64, three layers, image projected to 256, text raw, mean, concat, mean
    assert MMGCNConfig() == MMGCNConfig(64, 3, 256, 0, "mean", "concat", "mean", 1e-4, False)
    space = params["tune"]["spaces"]["mmgcn"]
    assert space == MMGCN.search_space
    assert set(space["reg_weight"]) <= {0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
    assert set(space["train.lr"]) <= {1e-4, 5e-4, 1e-3, 5e-3, 1e-2}
