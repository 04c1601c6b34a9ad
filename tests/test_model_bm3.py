"""BM3 checked against its definition (Zhou et al., WWW 2023; MMRec's bm3.py) on a
hand-sized graph, computed here with dense tensors: the online and predicted vectors, the
scores, every loss term and its gradients (no gradient through the targets), the targets'
dropout, the config, and a short run through the trainer."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_seeded_dropout, assert_terms_match, record_targets
from test_sea import grads_missing, make, make_batch, make_setup, recall_at_10

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.bm3 import BM3, BM3Config
from sea.train import fit, train_step

# ------------------------------------------------------------------ a hand-sized graph

TRAIN = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (2, 0), (3, 4), (3, 2), (3, 1)]  # 4 users, 5 items


def tiny_data(dims=None) -> GraphData:
    dims = dims or {"image": 6, "text": 4}
    rows = [(u, i, "train") for u, i in TRAIN] + [(0, 2, "valid"), (1, 3, "test"), (2, 4, "test"), (3, 0, "valid")]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(3)
    return GraphData.build(inter, 5, {m: g.normal(size=(5, d)).astype(np.float32) for m, d in dims.items()})


def build(data: GraphData, **cfg) -> BM3:
    torch.manual_seed(0)
    setup = make_setup("bm3", {"embedding_dim": 3} | cfg, modalities=list(data.features))
    return BM3.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)


def dense_adjacency(n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the training pairs, from the list above."""
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in TRAIN:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    d = a.sum(1) ** -0.5
    return torch.tensor(d[:, None] * a * d[None, :], dtype=torch.float32)


def online_by_hand(model: BM3, data: GraphData) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items): the mean of layers 0..L of Â^l·[E_u; E_i], the items' + E_i."""
    adj = dense_adjacency(data.n_users, data.n_items)
    x = torch.cat([model.user.weight, model.item.weight])
    layers, h = [x], x
    for _ in range(model.layers):
        h = adj @ h
        layers.append(h)
    mean = torch.stack(layers).mean(0)
    return mean[: data.n_users], mean[data.n_users :] + model.item.weight


def predict(model: BM3, x: torch.Tensor) -> torch.Tensor:
    return x @ model.predictor.weight.T + model.predictor.bias


def cos_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − mean_b a_b·b_b / (‖a_b‖‖b_b‖), written out (a row dropped out whole has cosine 0)."""
    return 1 - ((a * b).sum(1) / (a.pow(2).sum(1).sqrt() * b.pow(2).sum(1).sqrt()).clamp_min(1e-8)).mean()


# 6 pairs (neither the number of users nor of items), a user and an item twice
BATCH = Batch(
    torch.tensor([0, 1, 3, 3, 2, 1]), torch.tensor([1, 2, 4, 1, 3, 1]), torch.tensor([[3], [0], [0], [2], [1], [4]])
)


# ------------------------------------------------------------------ registry and config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("bm3") is BM3 and BM3.uses_features and BM3.preferred_loss == "none"
    assert BM3Config.from_dict(params["bm3"], "bm3") == BM3Config()  # params.yaml holds the defaults
    cfg = BM3Config()
    assert (cfg.layers, cfg.dropout, cfg.reg_weight, cfg.cl_weight) == (1, 0.5, 0.1, 2.0)  # the authors' Baby best
    assert params["tune"]["spaces"]["bm3"] == {"layers": [1, 2], "dropout": [0.3, 0.5], "reg_weight": [0.1, 0.01]}
    assert make_setup("bm3").ranking_loss == "none"  # loss.kind auto: no ranking term


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("layers", -1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("reg_weight", -1.0),
        ("cl_weight", -0.5),
        ("separation", "clip"),
        ("generic_fraction", 1.0),
        ("head_dim", 0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"\[bm3\]: {field}"):
        BM3Config.from_dict({field: value}, "bm3")


# ------------------------------------------------------------------ forward and scores


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_forward_and_scores_match_the_definition(layers):
    data = tiny_data()
    model = build(data, layers=layers).eval()
    with torch.no_grad():
        emb = model(data)
        scores = model.score(emb, torch.arange(data.n_users))
        hu, hi = online_by_hand(model, data)
        pu, pi = predict(model, hu), predict(model, hi)
        again = model(data)
    assert torch.allclose(emb.user, pu, atol=1e-6) and torch.allclose(emb.item, pi, atol=1e-6)
    assert torch.allclose(scores, pu @ pi.T, atol=1e-6)  # MMRec's full_sort_predict: predicted vectors
    assert emb.extras == {}  # eval mode: nothing for the losses, nothing drawn
    assert torch.equal(again.user, emb.user) and torch.equal(again.item, emb.item)


# ------------------------------------------------------------------ the loss terms


def expected_terms(model: BM3, data: GraphData, batch: Batch, targets: dict) -> dict[str, torch.Tensor]:
    """Every term from the parameters, with the targets given (detached; one row per
    distinct user, item, in sorted order)."""
    hu, hi = online_by_hand(model, data)
    users, items = batch.users, batch.pos
    # each pair reads the target row of its user / item
    user_row = {u: r for r, u in enumerate(sorted(set(users.tolist())))}
    item_row = {i: r for r, i in enumerate(sorted(set(items.tolist())))}
    ur = torch.tensor([user_row[u] for u in users.tolist()])
    ir = torch.tensor([item_row[i] for i in items.tolist()])
    ut, it = targets["user"].detach()[ur], targets["item"].detach()[ir]
    out = {"graph": cos_loss(predict(model, hu[users]), it) + cos_loss(predict(model, hi[items]), ut)}
    align, mask = 0.0, 0.0
    for m in ("image", "text"):
        p = model.projections[m]
        h = data.features[m][items] @ p.weight.T + p.bias
        align = align + cos_loss(predict(model, h), it)
        mask = mask + cos_loss(predict(model, h), targets[m].detach()[ir])
    out |= {"align": align, "mask": mask}
    out["reg"] = (hu.pow(2).sum().sqrt() + hi.pow(2).sum().sqrt()) / data.n_items  # MMRec's EmbLoss
    return out


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_every_term_and_its_gradients_match_the_definition(dropout):
    data = tiny_data()
    model = build(data, layers=2, dropout=dropout, reg_weight=0.3, cl_weight=1.5)
    seen = record_targets(model)
    torch.manual_seed(11)
    terms = model.train().extra_losses(model(data), BATCH)
    assert set(terms) == {"graph", "align", "mask", "reg"}
    assert [t.weight for t in terms.values()] == [1.0, 1.5, 1.5, 0.3]
    # the targets are dropped-out copies of: the online vectors of the batch's distinct users
    # and items, and each modality's projection of its distinct items (one row, one mask each)
    users, items = sorted(set(BATCH.users.tolist())), sorted(set(BATCH.pos.tolist()))
    with torch.no_grad():
        hu, hi = online_by_hand(model, data)
        h = {
            m: data.features[m][items] @ model.projections[m].weight.T + model.projections[m].bias
            for m in ("image", "text")
        }
    inputs = [x for x, _ in seen]
    assert len(inputs) == 4
    for got, want in zip(inputs, [hu[users], hi[items], h["image"], h["text"]]):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    for x, y in seen:
        assert not y.requires_grad
        if dropout == 0:
            assert torch.equal(x, y)
        else:  # each coordinate zeroed or scaled by 1 / (1 − p)
            assert torch.all((y == 0) | torch.isclose(y, x / (1 - dropout)))
    targets = dict(zip(["user", "item", "image", "text"], [y for _, y in seen]))
    want = expected_terms(model, data, BATCH, targets)
    assert_terms_match(model, terms, want)


def test_the_targets_dropout_is_seeded_and_has_its_rate():
    model = build(tiny_data(), dropout=0.3)
    assert_seeded_dropout(model.targets, 0.3)


def test_the_negatives_are_not_read_and_zero_weights_drop_their_terms():
    data = tiny_data()
    model = build(data)
    other = Batch(BATCH.users, BATCH.pos, torch.zeros_like(BATCH.neg))
    values = []
    for batch in (BATCH, other):
        torch.manual_seed(4)
        values.append({k: t.value.item() for k, t in model.train().extra_losses(model(data), batch).items()})
    assert values[0] == values[1]
    plain = build(data, cl_weight=0.0, reg_weight=0.0)
    assert plain.projections is None
    assert set(plain.extra_losses(plain.train()(data), BATCH)) == {"graph"}


# ------------------------------------------------------------------ through the trainer


def test_the_trainer_step_has_no_ranking_term_and_trains_every_parameter():
    model, data = make("bm3")
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data), "auto")
    assert set(parts) == {"loss", "graph", "align", "mask", "reg"}
    assert not grads_missing(model)


def test_bm3_sea_adds_the_separation_terms_and_trains_every_parameter():
    model, data = make("bm3", {"separation": "sea"})
    plain, _ = make("bm3")
    for key, p in plain.named_parameters():  # switching it on leaves the backbone's initialisation
        assert torch.equal(p, model.get_parameter(key)), key
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data), "auto")
    assert {"graph", "align", "mask", "reg", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)
    estimators = {id(p) for p in model.separation.estimator_parameters()}
    assert estimators and not estimators & {id(p) for p in model.main_parameters()}
    emb = model.train()(data)
    assert emb.extras["content"] is emb.extras["split"]  # the projections read [g; s]


def test_training_is_reproducible_lowers_the_loss_and_learns():
    results = []
    for _ in range(2):
        model, data = make("bm3", {"layers": 2})
        setup = make_setup("bm3", {"layers": 2}, train={"max_epochs": 8, "patience": 8})
        history = fit(model, data, setup, 5, log=lambda s: None).history
        results.append((copy.deepcopy(model.state_dict()), history, recall_at_10(model, data)))
    (a, history, recall), (b, history_b, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a) and history == history_b
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert recall > 0.3  # random top-10 recalls about 1/6
