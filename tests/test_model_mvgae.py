"""MVGAE (sea/models/mvgae.py) against its definition, computed here independently with
dense numpy on a hand-sized graph: the experts' Gaussians, their product, the eval
vectors, the reconstruction and KL terms; the training draws; gradients, frozen
embeddings, training, config, params.yaml."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_model_mmgcn import hand_data, lrelu, np_
from test_sea import grads_missing, make, make_batch, make_setup, recall_at_10, step

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.mvgae import MVGAE, MVGAEConfig
from sea.train import fit

# ------------------------------------------------------------------ the definition (MMGCN's hand graph)


def build(data: GraphData, **cfg) -> MVGAE:
    torch.manual_seed(0)
    setup = make_setup("mvgae", {"embedding_dim": 4, "latent_dim": 3} | cfg, modalities=list(data.features))
    return MVGAE.build(data, setup.model_cfg, setup.model.modalities)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lin(layer, x):
    return x @ np_(layer.weight).T + np_(layer.bias)


def mean_matrix(data: GraphData) -> np.ndarray:
    """Row-normalised A + I over users then items."""
    U, n = data.n_users, data.n_users + data.n_items
    a = np.eye(n)
    u, i = data.train_users.numpy(), data.train_items.numpy() + U
    a[u, i] = a[i, u] = 1.0
    return a / a.sum(1, keepdims=True)


def expected_expert(enc, items: np.ndarray, m: np.ndarray):
    def conv(c, x):
        return norm(m @ (x @ np_(c.weight)) + np_(c.bias))

    x = norm(np.concatenate([np_(enc.preference), lin(enc.projection, items)]))
    for c, g in zip(enc.convs, enc.combine, strict=True):
        x = lrelu(lin(g, lrelu(conv(c, x))))
    mu = lin(enc.mu_combine, lrelu(conv(enc.mu_conv, x))) + lrelu(lin(enc.mu_own, x))
    lv = lin(enc.logvar_combine, lrelu(conv(enc.logvar_conv, x))) + lrelu(lin(enc.logvar_own, x))
    return mu, lv


def poe(experts):
    t = [1.0 / (np.exp(lv) + 1e-8) for _, lv in experts]
    return sum(mu * p for (mu, _), p in zip(experts, t, strict=True)) / sum(t), np.log(1.0 / sum(t))


def expected_gaussians(model: MVGAE, data: GraphData):
    """[fused, each modality's, the collaborative one] as (mu, logvar), numpy float64."""
    m = mean_matrix(data)
    experts = [expected_expert(model.encoders[k], data.features[k].double().numpy(), m) for k in model.modalities]
    experts.append(expected_expert(model.collaborative, np_(model.item_id), m))
    content = experts[0] if len(model.modalities) == 1 else poe(experts[:-1])
    return [poe([content, experts[-1]])] + experts


def expected_recon(z, users, pos, neg):
    zh = sig(z)
    ps = sig((zh[users] * zh[pos]).sum(1))
    ns = sig((zh[users] @ zh[neg].T).max(1))
    return -np.sum(np.log2(sig(ps - ns)))


def expected_kl(mu, lv):
    lv = np.minimum(lv, 10.0)
    return -0.5 * np.mean(np.sum(1 + lv - mu**2 - np.exp(lv), axis=1))


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    "cfg,modalities", [({}, ("image", "text")), ({"layers": 2}, ("image", "text")), ({}, ("text",))]
)
def test_forward_matches_the_definition(cfg, modalities):
    data = hand_data(modalities)
    model = build(data, **cfg)
    model.eval()
    with torch.no_grad():
        emb = model(data)
    (mu, _), *_ = expected_gaussians(model, data)
    assert emb.user.shape == (5, 4) and emb.item.shape == (6, 4) and emb.extras == {}
    np.testing.assert_allclose(emb.user.double().numpy(), sig(mu[:5]), atol=1e-5)
    np.testing.assert_allclose(emb.item.double().numpy(), sig(mu[5:]), atol=1e-5)
    scores = model.score(emb, torch.arange(5)).double().numpy()
    np.testing.assert_allclose(scores, sig(mu[:5]) @ sig(mu[5:]).T, atol=1e-5)


def test_sizes_follow_the_config():
    model = build(hand_data(), layers=2, latent_dim=3, embedding_dim=4)
    image = model.encoders["image"]
    assert image.preference.shape == (5, 3) and image.projection.weight.shape == (3, 7)
    assert [c.weight.shape for c in image.convs] == [(3, 4), (4, 4)]
    assert model.collaborative.projection.weight.shape == (3, 4) and model.item_id.shape == (6, 4)
    assert list(model.encoders) == ["image", "text"]


def test_eval_is_deterministic_and_training_draws_from_torchs_seeded_generator():
    data = hand_data()
    model = build(data, dropout=0.0, sample_scale=0.5)
    with torch.no_grad():
        a, b = model.eval()(data), model(data)
        assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
        torch.manual_seed(4)
        t1 = model.train()(data)
        torch.manual_seed(4)
        t2 = model(data)
        t3 = model(data)
    assert torch.equal(t1.user, a.user)  # the vectors are the means' sigmoid in both modes
    gaussians = expected_gaussians(model, data)
    assert len(t1.extras["gaussians"]) == 4
    for (mu, lv, z1), (_, _, z2), (_, _, z3), (emu, elv) in zip(
        t1.extras["gaussians"], t2.extras["gaussians"], t3.extras["gaussians"], gaussians, strict=True
    ):
        np.testing.assert_allclose(np_(mu), emu, atol=1e-5)
        np.testing.assert_allclose(np_(lv), elv, atol=1e-4)
        assert torch.equal(z1, z2) and not torch.equal(z1, z3)
        eps = (np_(z1) - emu) / (0.5 * np.exp(0.5 * np.minimum(elv, 10.0)))
        assert abs(eps.mean()) < 0.5 and 0.5 < eps.std() < 1.6  # standard normal draws


def test_dropout_only_in_training():
    data = hand_data()
    model = build(data, dropout=0.5, sample_scale=0.0)
    with torch.no_grad():
        torch.manual_seed(1)
        trained = model.train()(data)
        evaluated = model.eval()(data)
    assert not torch.equal(trained.user, evaluated.user)
    (mu, _), *_ = expected_gaussians(model, data)
    np.testing.assert_allclose(evaluated.user.double().numpy(), sig(mu[:5]), atol=1e-5)


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("negatives", [1, 3])
def test_losses_match_the_definition(negatives):
    """With no dropout and no noise z = mu: recon and KL summed over the four Gaussians,
    items at their own rows (users + item id), every negative of the batch a candidate."""
    data = hand_data()
    model = build(data, dropout=0.0, sample_scale=0.0, beta=0.3)
    g = torch.Generator().manual_seed(negatives)
    batch = Batch(torch.tensor([0, 0, 3, 4]), torch.tensor([1, 2, 3, 0]), torch.randint(6, (4, negatives), generator=g))
    terms = model.train().extra_losses(model(data), batch)
    assert set(terms) == {"recon", "kl"} and terms["recon"].weight == 1.0 and terms["kl"].weight == 0.3
    users, pos, neg = batch.users.numpy(), batch.pos.numpy() + 5, batch.neg.numpy().reshape(-1) + 5
    gaussians = expected_gaussians(model, data)
    recon = sum(expected_recon(mu, users, pos, neg) for mu, _ in gaussians)
    kl = sum(expected_kl(mu, lv) for mu, lv in gaussians)
    assert terms["recon"].value.item() == pytest.approx(recon, rel=1e-5)
    assert terms["kl"].value.item() == pytest.approx(kl, rel=1e-4)
    assert set(build(data, beta=0.0).train().extra_losses(model(data), batch)) == {"recon"}


def test_recon_uses_the_samples():
    data = hand_data()
    model = build(data, dropout=0.0, sample_scale=1.0).train()
    batch = Batch(torch.tensor([0, 1]), torch.tensor([1, 3]), torch.tensor([[4], [2]]))
    emb = model(data)
    users, pos, neg = batch.users.numpy(), batch.pos.numpy() + 5, batch.neg.numpy().reshape(-1) + 5
    recon = sum(expected_recon(np_(z), users, pos, neg) for _, _, z in emb.extras["gaussians"])
    assert model.extra_losses(emb, batch)["recon"].value.item() == pytest.approx(recon, rel=1e-5)
    assert model.preferred_loss == "none"


def test_logvar_is_clamped_in_the_kl_and_the_draw():
    from sea.models.mvgae import kl_to_standard_normal

    mu, lv = torch.zeros(2, 3), torch.full((2, 3), 30.0)
    assert kl_to_standard_normal(mu, lv).item() == pytest.approx(expected_kl(np.zeros((2, 3)), np.full((2, 3), 30.0)))
    model = build(hand_data(), sample_scale=1.0)
    torch.manual_seed(0)
    z = model.sample(mu, lv)
    assert z.abs().max().item() < 12 * math.exp(5.0)


# ------------------------------------------------------------------ frozen embeddings (MMRec's code)


def test_frozen_embeddings_are_buffers_that_stay_put():
    data = hand_data()
    model = build(data, frozen_embeddings=True)
    names = {n for n, _ in model.named_parameters()}
    assert "item_id" not in names and not any("preference" in n for n in names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, data, make_batch(data, n=8), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    after = model.state_dict()
    assert torch.equal(before["item_id"], after["item_id"])
    assert torch.equal(before["encoders.text.preference"], after["encoders.text.preference"])
    assert not torch.equal(before["encoders.text.mu_own.weight"], after["encoders.text.mu_own.weight"])
    assert torch.equal(build(data).item_id.detach(), before["item_id"])  # the same draw


# ------------------------------------------------------------------ training, config


def test_gradients_reach_every_parameter():
    model, data = make("mvgae", {"embedding_dim": 8, "latent_dim": 16, "layers": 2})
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert {"recon", "kl"} <= set(parts)
    assert not grads_missing(model)
    names = {n for n, _ in model.named_parameters()}
    assert {
        "item_id",
        "encoders.image.preference",
        "collaborative.logvar_conv.bias",
        "encoders.text.combine.1.weight",
    } <= names


def test_trains():
    model, data = make("mvgae", {"embedding_dim": 8, "latent_dim": 16})
    setup = make_setup("mvgae", modalities=list(data.features), train={"max_epochs": 6, "patience": 6})
    result = fit(model, data, setup, 5, log=lambda s: None, progress=False)
    # MMRec's decoder bounds each row's term to [0.45, 1.89] (and sigmoid of sigmoids saturates):
    # the loss moves little, but it must move down
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0] - 1.0
    assert recall_at_10(model, data) > 0.17  # random top-10 recalls about 1/6


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"latent_dim": -1}, "latent_dim"),
        ({"layers": 0}, "layers"),
        ({"beta": -0.1}, "beta"),
        ({"dropout": 1.0}, "dropout"),
        ({"sample_scale": -1.0}, "sample_scale"),
        ({"frozen_embeddings": "maybe"}, "frozen_embeddings"),
        ({"n_layers": 2}, "n_layers"),
    ],
)
def test_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=rf"mvgae.*{name}"):
        MVGAEConfig.from_dict(params, "mvgae")


def test_registered_and_params_yaml_holds_the_defaults():
    params = load_params()
    assert model_class("mvgae") is MVGAE and MVGAE.uses_features and MVGAE.Config is MVGAEConfig
    assert MVGAEConfig.from_dict(params["mvgae"], "mvgae") == MVGAEConfig()
    assert MVGAEConfig() == MVGAEConfig(64, 128, 1, 0.1, 0.1, 0.1, False)  # MMRec's sizes
    space = params["tune"]["spaces"]["mvgae"]
    assert space == MVGAE.search_space
    assert space == {"train.lr": [1e-4, 1e-3, 1e-2, 1e-1], "beta": [0.01, 0.1, 1.0]}  # MMRec's grid
