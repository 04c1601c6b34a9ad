"""LGMRec (Guo et al., AAAI 2024) checked against its definition, written out here in plain
NumPy on a hand-sized graph: the forward pass (collaborative, modality and hypergraph
parts), the Gumbel-softmax and dropout of training, each loss term, the gradients, the
config, and a short training run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_sea import grads_missing, make, make_batch, recall_at_10, step, train

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.lgmrec import LGMRec, LGMRecConfig
from sea.tune import TuneConfig, grid_points

# ------------------------------------------------------------------ a hand-sized graph

N_USERS, N_ITEMS = 5, 6
TRAIN = [(0, 0), (0, 1), (0, 1), (1, 1), (1, 2), (1, 4), (2, 3), (2, 0), (3, 5), (3, 2), (3, 4)]  # (0, 1) twice


def tiny_data() -> GraphData:
    """5 users, 6 items; user 4 has no training item (only a validation one)."""
    rows = [(u, i, "train") for u, i in TRAIN] + [(0, 2, "valid"), (4, 3, "valid"), (1, 3, "test"), (2, 1, "test")]
    g = np.random.default_rng(3)
    feats = {"image": g.normal(size=(N_ITEMS, 7)), "text": g.normal(size=(N_ITEMS, 5))}
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    return GraphData.build(inter, N_ITEMS, {m: x.astype(np.float32) for m, x in feats.items()})


def tiny_model(data: GraphData, **overrides) -> LGMRec:
    cfg = LGMRecConfig.from_dict({"embedding_dim": 4, "hyper_num": 3} | overrides, "lgmrec")
    torch.manual_seed(0)
    model = LGMRec.build(data, cfg, ["image", "text"])
    with torch.no_grad():  # away from the small initialisation, so that every part matters
        for p in model.parameters():
            p.normal_()
    return model


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def expected_embeddings(model: LGMRec, data: GraphData, drop=None, noise=None):
    """LGMRec's user and item vectors from the paper's formulas, in float64 NumPy.
    ``noise[(m, "item"|"user")]``: Gumbel noise added to the logits (training);
    ``drop[(m, ...)]``: dropout masks already scaled by 1/keep_rate."""
    n_u, n_i = data.n_users, data.n_items
    R = np.zeros((n_u, n_i))
    for u, i in TRAIN:
        R[u, i] = 1.0  # binary: a repeated pair counts once
    A = np.block([[np.zeros((n_u, n_u)), R], [R.T, np.zeros((n_i, n_i))]])
    deg = A.sum(1)
    dinv = np.zeros_like(deg)
    dinv[deg > 0] = deg[deg > 0] ** -0.5
    A_hat = dinv[:, None] * A * dinv[None, :]
    tau = model.temperature

    e = np.concatenate([np_(model.user_emb.weight), np_(model.item_emb.weight)])
    layers = [e]
    for _ in range(model.ui_layers):
        layers.append(A_hat @ layers[-1])
    cge = np.mean(layers, axis=0)

    modal, glob, hyper = 0.0, 0.0, {}
    count = R.sum(1, keepdims=True)
    for m in model.modalities:
        x = data.features[m].double().numpy()
        p = x @ np_(model.projections[m])
        pu = np.where(count > 0, R @ p / np.maximum(count, 1), 0.0)  # mean of the user's items
        local = np.concatenate([pu, p])
        for _ in range(model.mm_layers):
            local = A_hat @ local
        modal = modal + normalize(local)

        logits_i = x @ np_(model.hyperedges[m])
        logits_u = R @ logits_i
        if noise is not None:
            logits_i, logits_u = logits_i + noise[(m, "item")], logits_u + noise[(m, "user")]
        h_i, h_u = softmax(logits_i / tau), softmax(logits_u / tau)
        if drop is not None:
            h_i, h_u = h_i * drop[(m, "item")], h_u * drop[(m, "user")]
        items = cge[n_u:]
        for _ in range(model.hyper_layers):
            edges = h_i.T @ items
            items = h_i @ edges
        users = h_u @ edges
        hyper[m] = (users, items)
        glob = glob + np.concatenate([users, items])
    out = cge + modal + model.alpha * normalize(glob)
    return out[:n_u], out[n_u:], hyper


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    "overrides",
    [{}, {"ui_layers": 1, "mm_layers": 3, "hyper_layers": 2, "alpha": 0.7}, {"cf_model": "mf", "mm_layers": 0}],
)
def test_eval_forward_matches_the_definition(overrides):
    data = tiny_data()
    model = tiny_model(data, **overrides).eval()
    with torch.no_grad():
        emb = model(data)
    user, item, hyper = expected_embeddings(model, data)
    np.testing.assert_allclose(np_(emb.user), user, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np_(emb.item), item, rtol=1e-4, atol=1e-4)
    for m in model.modalities:
        np.testing.assert_allclose(np_(emb.extras["hyper"][m][0]), hyper[m][0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np_(emb.extras["hyper"][m][1]), hyper[m][1], rtol=1e-4, atol=1e-4)
    # the score is the dot product
    users = torch.tensor([0, 3])
    torch.testing.assert_close(model.score(emb, users), emb.user[users] @ emb.item.T)


def test_user_without_training_items_has_zero_modality_mean():
    data = tiny_data()
    model = tiny_model(data, mm_layers=0, alpha=0.0, cf_model="mf").eval()
    with torch.no_grad():
        emb = model(data)
    # no propagation, no global part: user 4 is its id embedding alone (+ a zero modality part)
    torch.testing.assert_close(emb.user[4], model.user_emb.weight[4])


def test_training_draws_gumbel_noise_and_dropout_from_torchs_seeded_generator():
    data = tiny_data()
    model = tiny_model(data, keep_rate=0.6).train()
    torch.manual_seed(11)
    with torch.no_grad():
        emb = model(data)
    # the same draws, in the order the forward pass makes them: per modality the items'
    # then the users' Gumbel noise (-log E, E ~ Exp(1)); then per modality the dropout masks.
    torch.manual_seed(11)
    noise, drop = {}, {}
    for m in model.modalities:
        for who, n in (("item", N_ITEMS), ("user", N_USERS)):
            noise[(m, who)] = -torch.empty(n, 3).exponential_().log().double().numpy()
    for m in model.modalities:
        for who, n in (("item", N_ITEMS), ("user", N_USERS)):
            drop[(m, who)] = F.dropout(torch.ones(n, 3), 0.4).double().numpy()
    user, item, _ = expected_embeddings(model, data, drop=drop, noise=noise)
    np.testing.assert_allclose(np_(emb.user), user, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np_(emb.item), item, rtol=1e-4, atol=1e-4)
    # seeded: the same again; another seed draws otherwise; evaluation draws nothing
    torch.manual_seed(11)
    with torch.no_grad():
        assert torch.equal(model(data).user, emb.user)
        torch.manual_seed(12)
        assert not torch.equal(model(data).user, emb.user)
        model.eval()
        state = torch.get_rng_state()
        a, b = model(data), model(data)
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)


# ------------------------------------------------------------------ losses


def test_contrastive_and_reg_terms_match_their_definitions():
    data = tiny_data()
    model = tiny_model(data, cl_weight=0.5, reg_weight=0.25).eval()
    batch = Batch(
        torch.tensor([0, 1, 3, 0]), torch.tensor([1, 4, 5, 0]), torch.tensor([[2, 3], [0, 5], [1, 0], [4, 4]])
    )
    with torch.no_grad():
        emb = model(data)
        terms = model.extra_losses(emb, batch)
    assert set(terms) == {"hcl", "reg"}
    assert terms["hcl"].weight == 0.5 and terms["reg"].weight == 0.25
    _, _, hyper = expected_embeddings(model, data)
    tau = model.temperature

    def infonce_sum(anchor, positive_rows, candidates):
        a, c = normalize(anchor), normalize(candidates)
        total = 0.0
        for b, row in enumerate(positive_rows):
            sims = c @ a[b] / tau
            total += -np.log(np.exp(sims[row]) / np.exp(sims).sum())
        return total

    (u1, i1), (u2, i2) = hyper["image"], hyper["text"]
    users, pos = batch.users.numpy(), batch.pos.numpy()
    expected = infonce_sum(u1[users], users, u2) + infonce_sum(i1[pos], pos, i2)
    assert terms["hcl"].value.item() == pytest.approx(expected, rel=1e-4)

    # reg: (‖U_B‖ + ‖I⁺_B‖ + ‖I⁻_B‖) / B on the final vectors (Frobenius norms, not squared)
    user, item = np_(emb.user), np_(emb.item)
    neg = batch.neg.numpy()
    expected_reg = (
        np.linalg.norm(user[users]) + np.linalg.norm(item[pos]) + np.linalg.norm(item[neg].reshape(-1, 4))
    ) / len(users)
    assert terms["reg"].value.item() == pytest.approx(expected_reg, rel=1e-5)


def test_terms_with_weight_zero_are_skipped():
    data = tiny_data()
    model = tiny_model(data, cl_weight=0.0, reg_weight=0.0)
    emb = model(data)
    assert model.extra_losses(emb, make_batch(data, n=4)) == {}


def test_gradients_reach_every_parameter():
    model, data = make("lgmrec")
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "hcl", "reg"} <= set(parts)
    assert not grads_missing(model)


def test_lgmrec_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("lgmrec", {"separation": "sea"})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"bpr", "hcl", "reg", "club", "solosim"} <= set(parts)
    assert not grads_missing(model)
    plain, _ = make("lgmrec")
    fresh, _ = make("lgmrec", {"separation": "sea"})
    for key, p in plain.named_parameters():  # the separation leaves the backbone's initialisation alone
        assert torch.equal(p, fresh.get_parameter(key)), key


def test_training_lowers_the_loss_and_learns():
    model, data = make("lgmrec", {"cl_weight": 1e-5})
    batch = make_batch(data, n=128)
    model.eval()
    with torch.no_grad():
        before = F.logsigmoid(
            (model(data).user[batch.users] * (model(data).item[batch.pos] - model(data).item[batch.neg[:, 0]])).sum(1)
        )
    train(model, data, epochs=6, seed=3)
    model.eval()
    with torch.no_grad():
        emb = model(data)
        after = F.logsigmoid((emb.user[batch.users] * (emb.item[batch.pos] - emb.item[batch.neg[:, 0]])).sum(1))
    assert -after.mean() < 0.8 * -before.mean()
    assert recall_at_10(model, data) > 0.3  # random top-10 recalls about 1/6


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"cf_model": "ngcf"}, "cf_model"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"mm_layers": -1}, "mm_layers"),
        ({"hyper_layers": 0}, "hyper_layers"),
        ({"hyper_num": 0}, "hyper_num"),
        ({"keep_rate": 0.0}, "keep_rate"),
        ({"keep_rate": 1.5}, "keep_rate"),
        ({"alpha": -0.1}, "alpha"),
        ({"cl_weight": -1.0}, "cl_weight"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"separation": "clip"}, "separation"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"params.yaml \[lgmrec\]: .*{name}"):
        LGMRecConfig.from_dict(params, "lgmrec")


def test_one_modality_needs_cl_weight_zero():
    with pytest.raises(ConfigError, match=r"\[lgmrec\]: cl_weight"):
        make("lgmrec", modalities=("text",))
    model, data = make("lgmrec", {"cl_weight": 0.0}, modalities=("text",))
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert "hcl" not in parts and not grads_missing(model)


def test_registered_and_params_yaml_holds_the_defaults():
    assert model_class("lgmrec") is LGMRec and LGMRec.uses_features
    params = load_params()
    assert LGMRecConfig.from_dict(params["lgmrec"], "lgmrec") == LGMRecConfig()
    # MMRec's Baby values
    cfg = LGMRecConfig()
    assert (cfg.ui_layers, cfg.mm_layers, cfg.hyper_layers, cfg.hyper_num) == (2, 2, 1, 4)
    assert (cfg.keep_rate, cfg.alpha, cfg.cl_weight, cfg.reg_weight, cfg.temperature) == (0.5, 0.3, 1e-4, 1e-6, 0.2)
    space = TuneConfig.from_dict(params["tune"], "tune").space("lgmrec")  # checked against the section
    assert set(space) == {"hyper_num", "keep_rate", "alpha"} and len(grid_points(space)) == 12
