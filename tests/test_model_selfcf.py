"""SelfCF checked against its definition (Zhou et al., ACM TORS 2023; MMRec's
selfcfed_lgn.py) on a hand-sized graph, computed here with dense tensors: the online
vectors, the eval-mode vectors and scores, the edge dropout (value, transpose and
gradients), every loss term and its gradients (no gradient through the targets), the
config, and a short run through the trainer."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from model_checks import assert_seeded_dropout, assert_terms_match, record_targets
from test_model_bm3 import BATCH, TRAIN, dense_adjacency
from test_sea import grads_missing, make, make_batch, make_setup, recall_at_10

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.selfcf import SelfCF, SelfCFConfig, mirror_entries
from sea.train import fit, train_step

# ------------------------------------------------------------------ a hand-sized graph (BM3's, without features)

N_USERS, N_ITEMS = 4, 5


def tiny_data() -> GraphData:
    rows = [(u, i, "train") for u, i in TRAIN] + [(0, 2, "valid"), (1, 3, "test"), (2, 4, "test"), (3, 0, "valid")]
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), N_ITEMS)


def build(data: GraphData, **cfg) -> SelfCF:
    torch.manual_seed(0)
    setup = make_setup("selfcf", {"embedding_dim": 3} | cfg)
    return SelfCF.build(data, setup.model_cfg)


def online_by_hand(model: SelfCF, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items): the mean of layers 0..L of adj^l·[E_u; E_i], adj dense."""
    x = torch.cat([model.user.weight, model.item.weight])
    layers, h = [x], x
    for _ in range(model.layers):
        h = adj @ h
        layers.append(h)
    mean = torch.stack(layers).mean(0)
    return mean[:N_USERS], mean[N_USERS:]


def predict(model: SelfCF, x: torch.Tensor) -> torch.Tensor:
    return x @ model.predictor.weight.T + model.predictor.bias


def neg_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """−mean_b a_b·b_b / (‖a_b‖‖b_b‖), written out (a row dropped out whole has cosine 0)."""
    return -((a * b).sum(1) / (a.pow(2).sum(1).sqrt() * b.pow(2).sum(1).sqrt()).clamp_min(1e-8)).mean()


# ------------------------------------------------------------------ registry and config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("selfcf") is SelfCF and not SelfCF.uses_features and SelfCF.preferred_loss == "none"
    assert SelfCFConfig.from_dict(params["selfcf"], "selfcf") == SelfCFConfig()  # params.yaml holds the defaults
    cfg = SelfCFConfig()
    # MMRec's single point of its first SELFCFED_LGN.yaml, its encoder's drop_ratio 1.0
    assert (cfg.embedding_dim, cfg.layers, cfg.dropout, cfg.edge_dropout, cfg.reg_weight) == (64, 2, 0.5, 1.0, 0.0)
    space = {"layers": [1, 2], "dropout": [0.1, 0.2, 0.5], "reg_weight": [0.0, 1e-3]}
    assert params["tune"]["spaces"]["selfcf"] == space == SelfCF.search_space
    assert make_setup("selfcf").ranking_loss == "none"  # loss.kind auto: no ranking term


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("layers", -1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("edge_dropout", 1.5),
        ("edge_dropout", -0.1),
        ("reg_weight", -1.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"\[selfcf\]: {field}"):
        SelfCFConfig.from_dict({field: value}, "selfcf")


# ------------------------------------------------------------------ forward and scores


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_eval_vectors_and_scores_match_the_definition(layers):
    data = tiny_data()
    model = build(data, layers=layers).eval()
    with torch.no_grad():
        emb = model(data)
        scores = model.score(emb, torch.arange(N_USERS))
        hu, hi = online_by_hand(model, dense_adjacency(N_USERS, N_ITEMS))
        again = model(data)
    assert torch.allclose(emb.user, torch.cat([predict(model, hu), hu], 1), atol=1e-6)
    assert torch.allclose(emb.item, torch.cat([hi, predict(model, hi)], 1), atol=1e-6)
    # MMRec's full_sort_predict: P(h_u)·h_i + h_u·P(h_i), over the whole graph, no dropout
    want = predict(model, hu) @ hi.T + hu @ predict(model, hi).T
    assert torch.allclose(scores, want, atol=1e-6)
    assert torch.equal(again.user, emb.user) and torch.equal(again.item, emb.item)


def test_training_vectors_without_edge_dropout_are_the_online_ones():
    data = tiny_data()
    model = build(data, edge_dropout=0.0).train()
    emb = model(data)
    hu, hi = online_by_hand(model, dense_adjacency(N_USERS, N_ITEMS))
    assert torch.allclose(emb.user, hu, atol=1e-6) and torch.allclose(emb.item, hi, atol=1e-6)


# ------------------------------------------------------------------ edge dropout


def test_mirror_entries_map_each_entry_to_its_transpose_and_refuse_an_asymmetric_pattern():
    adj = tiny_data().adj
    rows, mirror = mirror_entries(adj)
    cols = adj.col_indices()
    assert torch.equal(rows[mirror], cols) and torch.equal(cols[mirror], rows)
    one_way = torch.sparse_coo_tensor(torch.tensor([[0], [1]]), torch.ones(1), (2, 2)).to_sparse_csr()
    with pytest.raises(ValueError, match="not symmetric"):
        mirror_entries(one_way)


def test_the_dropped_adjacency_and_its_transpose_match_a_dense_mask():
    data = tiny_data()
    model = build(data)
    dense = dense_adjacency(N_USERS, N_ITEMS)
    nz = dense.nonzero()  # row-major: the CSR order of the entries
    keep = torch.tensor([k % 3 != 1 for k in range(len(nz))])  # drops u->i and i->u of different edges
    adj, transpose = model.dropped_adjacency(keep, torch.tensor(2.5))
    want = torch.zeros_like(dense)
    want[nz[keep, 0], nz[keep, 1]] = dense[nz[keep, 0], nz[keep, 1]] * 2.5
    assert not torch.equal(want, want.T)  # the two directions were dropped independently
    assert torch.allclose(adj.to_dense(), want) and torch.allclose(transpose.to_dense(), want.T)


def test_training_forward_over_the_dropped_graph_and_its_gradients_match_dense():
    data = tiny_data()
    model = build(data, layers=2).train()
    drawn, original = [], model.draw_adjacency

    def draw():
        out = original()
        drawn.append(out[0].to_dense())
        return out

    model.draw_adjacency = draw
    torch.manual_seed(5)
    emb = model(data)
    (adj,) = drawn
    # edges were dropped (the rate drawn with seed 5 is > 0)
    assert not torch.equal(adj, dense_adjacency(N_USERS, N_ITEMS))
    hu, hi = online_by_hand(model, adj)
    assert torch.allclose(emb.user, hu, atol=1e-6) and torch.allclose(emb.item, hi, atol=1e-6)
    # the backward multiplies by the dropped graph's transpose (it is not symmetric)
    w = torch.randn(N_USERS + N_ITEMS, 3, generator=torch.Generator().manual_seed(1))
    params = [model.user.weight, model.item.weight]
    got = torch.autograd.grad((torch.cat([emb.user, emb.item]) * w).sum(), params)
    want = torch.autograd.grad((torch.cat([hu, hi]) * w).sum(), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


def test_the_edge_dropout_is_seeded_scaled_and_has_its_rate():
    model = build(tiny_data(), edge_dropout=0.6)
    dense = dense_adjacency(N_USERS, N_ITEMS)
    torch.manual_seed(3)
    a = model.draw_adjacency()[0].to_dense()
    torch.manual_seed(3)
    b = model.draw_adjacency()[0].to_dense()
    assert torch.equal(a, b)
    rates, one_way = [], 0
    for _ in range(300):
        adj, transpose = model.draw_adjacency()
        adj = adj.to_dense()
        assert torch.equal(transpose.to_dense(), adj.T)
        kept = adj != 0
        assert not (kept & (dense == 0)).any()
        scale = adj[kept] / dense[kept]
        rates.append(1 - kept.sum().item() / (dense != 0).sum().item())
        if len(scale):  # every kept entry scaled by the same 1 / (1 − r), r < edge_dropout
            assert torch.allclose(scale, scale[0]) and 1 <= scale[0].item() < 1 / (1 - 0.6) + 1e-4
        one_way += int(not torch.equal(kept, kept.T))
    assert abs(np.mean(rates) - 0.3) < 0.03  # r ~ U[0, 0.6): a share 0.3 of the entries dropped on average
    assert one_way > 100  # u->i and i->u are dropped independently


# ------------------------------------------------------------------ the loss terms


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_every_term_and_its_gradients_match_the_definition(dropout):
    data = tiny_data()
    model = build(data, layers=2, dropout=dropout, reg_weight=0.3, edge_dropout=0.0)
    seen = record_targets(model)
    torch.manual_seed(11)
    terms = model.train().extra_losses(model(data), BATCH)
    assert set(terms) == {"ui", "iu", "reg"}
    assert [t.weight for t in terms.values()] == [0.5, 0.5, 0.3]
    hu, hi = online_by_hand(model, dense_adjacency(N_USERS, N_ITEMS))
    u, i = hu[BATCH.users], hi[BATCH.pos]
    # the targets: dropped-out copies of the batch's rows (one mask per pair, as MMRec's)
    assert len(seen) == 2
    for (x, y), want in zip(seen, [u, i]):
        assert torch.allclose(x, want, atol=1e-6) and not y.requires_grad
        if dropout == 0:
            assert torch.equal(x, y)
        else:  # each coordinate zeroed or scaled by 1 / (1 − p)
            assert torch.all((y == 0) | torch.isclose(y, x / (1 - dropout)))
    ut, it = seen[0][1], seen[1][1]
    want = {
        "ui": neg_cos(predict(model, u), it),
        "iu": neg_cos(predict(model, i), ut),
        "reg": 0.5 * (u.pow(2).sum() + i.pow(2).sum()),  # MMRec's L2Loss, not divided by the batch size
    }
    assert_terms_match(model, terms, want)


def test_the_targets_dropout_is_seeded_and_has_its_rate():
    model = build(tiny_data(), dropout=0.3)
    assert_seeded_dropout(model.targets, 0.3)


def test_the_negatives_are_not_read_and_a_zero_weight_drops_its_term():
    data = tiny_data()
    model = build(data, reg_weight=0.1)
    other = Batch(BATCH.users, BATCH.pos, torch.zeros_like(BATCH.neg))
    values = []
    for batch in (BATCH, other):
        torch.manual_seed(4)
        values.append({k: t.value.item() for k, t in model.train().extra_losses(model(data), batch).items()})
    assert values[0] == values[1] and set(values[0]) == {"ui", "iu", "reg"}
    plain = build(data)
    assert set(plain.extra_losses(plain.train()(data), BATCH)) == {"ui", "iu"}


# ------------------------------------------------------------------ through the trainer


def test_the_trainer_step_has_no_ranking_term_and_trains_every_parameter():
    model, data = make("selfcf", {"reg_weight": 1e-3})
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data), "auto")
    assert set(parts) == {"loss", "ui", "iu", "reg"}
    assert not grads_missing(model)


def test_training_is_reproducible_lowers_the_loss_and_learns():
    results = []
    for _ in range(2):
        model, data = make("selfcf")
        setup = make_setup("selfcf", train={"max_epochs": 8, "patience": 8})
        history = fit(model, data, setup, 5, log=lambda s: None).history
        results.append((copy.deepcopy(model.state_dict()), history, recall_at_10(model, data)))
    (a, history, recall), (b, history_b, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a) and history == history_b
    assert history[-1]["loss"] < history[0]["loss"] - 0.2  # the negative cosine, in [-1, 1]
    assert recall > 0.3  # random top-10 recalls about 1/6
