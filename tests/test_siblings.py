"""The sibling methods of SEA (issue 8): LIRDRec, SimpleX, the cosine contrastive loss and
cross-batch negative sampling, each checked against its definition."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from sea.batch import Batch, Embeddings
from sea.config import load_params
from sea.data.split import split
from sea.errors import ConfigError
from sea.evaluation import embed, evaluate
from sea.losses import LossConfig, RankingLoss, bpr_loss, candidate_cosines, ccl_loss, sampled_softmax_loss
from sea.models.base import GraphData, model_class
from sea.models.lirdrec import LIRDRec, LIRDRecConfig, dct, mixing_weight, transform_features
from sea.models.simplex import SimpleX, SimpleXConfig
from sea.samplers import CrossBatchMemory
from sea.setup import TrainingSetup
from sea.train import build_model, fit, seed_everything, train_step


def toy_graph(
    n_users: int = 40, n_items: int = 30, feature_dims=None, seed: int = 0, duplicate_item: bool = False
) -> GraphData:
    """Users who each like one of 3 clusters; the features reveal an item's cluster.
    With ``duplicate_item``, item 1 gets exactly item 0's features."""
    feature_dims = feature_dims or {"image": 12, "text": 10}
    rng = np.random.default_rng(seed)
    user_c, item_c = rng.integers(0, 3, n_users), np.arange(n_items) % 3
    rows = [
        (u, i, 5.0, int(rng.integers(1e9)))
        for u in range(n_users)
        for i in rng.choice(np.flatnonzero(item_c == user_c[u]), 5, replace=False)
    ]
    inter = split(pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]), "mmrec", 1)
    onehot = np.eye(3)[item_c]
    feats = {
        m: (onehot @ rng.normal(size=(3, d)) + 0.3 * rng.normal(size=(n_items, d))).astype(np.float32)
        for m, d in feature_dims.items()
    }
    if duplicate_item:
        for x in feats.values():
            x[1] = x[0]
    return GraphData.build(inter, n_items, feats)


def random_batch(data: GraphData, n: int = 32, negatives: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_users), generator=g)[:n]
    return Batch(data.train_users[idx], data.train_items[idx], torch.randint(data.n_items, (n, negatives), generator=g))


def lirdrec(data: GraphData, **overrides) -> LIRDRec:
    torch.manual_seed(0)
    return LIRDRec.build(
        data,
        LIRDRecConfig.from_dict(
            {"embedding_dim": 8, "mlp_hidden_dim": 16, "attention_hidden_dim": 4, "knn_k": 3} | overrides, "lirdrec"
        ),
    )


def simplex(data: GraphData, **overrides) -> SimpleX:
    torch.manual_seed(0)
    return SimpleX.build(data, SimpleXConfig.from_dict({"embedding_dim": 8, "dropout": 0.0} | overrides, "simplex"))


def bpr_step(model, data: GraphData, batch: Batch) -> torch.Tensor:
    """The ranking loss plus the model's own terms on one batch (BPR, first negative)."""
    emb = model(data)
    loss = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]])
    for term in model.extra_losses(emb, batch).values():
        loss = loss + term.weight * term.value
    return loss


def held_loss(model, data: GraphData) -> float:
    """BPR (+ extra terms) in eval mode on a fixed batch of 100 training pairs."""
    model.eval()
    with torch.no_grad():
        return bpr_step(model, data, random_batch(data, n=100, seed=12345)).item()


def train_briefly(model, data: GraphData, epochs: int, steps_per_epoch: int = 8, lr: float = 1e-2) -> list[float]:
    """A plain loop (on_epoch_start, then per step: forward, BPR + extra terms, Adam);
    returns :func:`held_loss` before training and after each epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = [held_loss(model, data)]
    for epoch in range(1, epochs + 1):
        model.train()
        model.on_epoch_start(epoch, gen)
        for step in range(steps_per_epoch):
            loss = bpr_step(model, data, random_batch(data, n=64, seed=epoch * steps_per_epoch + step))
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(held_loss(model, data))
    return losses


def assert_every_parameter_gets_gradient(model, data: GraphData) -> None:
    model.train()
    model.zero_grad()
    bpr_step(model, data, random_batch(data)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


# ------------------------------------------------------------------ registry


def test_both_models_are_registered():
    assert model_class("lirdrec") is LIRDRec
    assert model_class("simplex") is SimpleX
    assert LIRDRec.uses_features and not SimpleX.uses_features


# ------------------------------------------------------------------ LIRDRec


@pytest.mark.parametrize("d", [1, 2, 7, 16])
def test_dct_is_the_orthonormal_dct_ii(d):
    x = torch.randn(5, d, dtype=torch.float64)
    expected = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    torch.testing.assert_close(dct(x), torch.as_tensor(expected), atol=1e-10, rtol=0)
    # orthonormal: lengths are kept
    torch.testing.assert_close(dct(x).norm(dim=1), x.norm(dim=1), atol=1e-10, rtol=0)
    assert dct(x.float()).dtype == torch.float32


def test_shared_input_is_the_per_item_dct_of_each_modality_concatenated():
    data = toy_graph()
    shared = transform_features(data.features)
    expected = np.concatenate(
        [scipy.fft.dct(data.features[m].numpy(), norm="ortho", axis=-1) for m in ("image", "text")], axis=1
    )
    np.testing.assert_allclose(shared.numpy(), expected, atol=1e-5)


def test_lirdrec_item_vectors_depend_only_on_the_features():
    data = toy_graph(duplicate_item=True)
    model = lirdrec(data)
    # No parameter is sized by the number of items: there is no item id embedding.
    assert all(data.n_items not in p.shape for p in model.parameters())
    shared = transform_features(data.features)
    branches = model.encode_items(data.features, shared)
    assert len(branches) == 3  # image, text, shared
    for b in branches:  # equal up to the rounding of batched matrix products
        torch.testing.assert_close(b[0], b[1], rtol=1e-5, atol=1e-6)
        assert not torch.equal(b[0], b[2])
    # Changing another item's features leaves this item's vectors unchanged.
    changed = {m: x.clone() for m, x in data.features.items()}
    changed["image"][5] += 1.0
    changed["text"][7] -= 1.0
    again = model.encode_items(changed, transform_features(changed))
    keep = torch.ones(data.n_items, dtype=torch.bool)
    keep[[5, 7]] = False
    for b, c in zip(branches, again, strict=True):
        torch.testing.assert_close(b[keep], c[keep], rtol=1e-5, atol=1e-6)
        assert not torch.equal(b[5], c[5]) or not torch.equal(b[7], c[7])


def test_lirdrec_with_one_modality_has_two_branches():
    data = toy_graph(feature_dims={"text": 10})
    model = lirdrec(data)
    emb = model(data)
    assert emb.user.shape == (data.n_users, 16) and emb.item.shape == (data.n_items, 16)


@pytest.mark.parametrize("w0,base", [(0.9, 0.9), (0.99, 0.5), (0.6, 1.0)])
def test_mixing_weight_follows_the_reference_recursion(w0, base):
    """The reference updates (w1, w2) ← normalise(w1 · base^epoch, w2) at each epoch start."""
    w1, w2 = w0, 1.0 - w0
    assert mixing_weight(0, w0, base) == pytest.approx(w0)
    for epoch in range(1, 12):
        w1, w2 = w1 * base**epoch, w2
        w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
        assert mixing_weight(epoch, w0, base) == pytest.approx(w1, rel=1e-9, abs=1e-300)


def test_mixing_weight_far_out_is_zero_without_overflow():
    assert mixing_weight(10_000, 0.9, 0.9) == 0.0
    assert mixing_weight(10_000, 0.9, 1.0) == pytest.approx(0.9)  # base 1: no decay


def test_lirdrec_fusion_uses_the_epoch_weight_and_copies_the_last_weights():
    data = toy_graph()
    model = lirdrec(data, initial_weight=0.8, decay_base=0.7)
    fusion = model.fusion
    gen = torch.Generator().manual_seed(0)
    assert float(fusion.weight) == pytest.approx(0.8)
    theta0 = fusion.theta.detach().clone()
    model.train()
    model.on_epoch_start(1, gen)
    assert float(fusion.weight) == pytest.approx(mixing_weight(1, 0.8, 0.7))
    torch.testing.assert_close(fusion.theta.detach(), theta0)  # nothing learned yet to copy

    # The fusion weights are softmax(w · scores + (1 − w) · θ), recomputed here by hand.
    parts = [torch.randn(data.n_users, 8) for _ in range(3)]
    scores = torch.cat([f(p) for f, p in zip(fusion.scorers, parts, strict=True)], dim=1)
    w = mixing_weight(1, 0.8, 0.7)
    expected = torch.softmax(w * scores + (1 - w) * theta0, dim=1)
    out = fusion(parts)
    torch.testing.assert_close(out, torch.cat([expected[:, k : k + 1] * p for k, p in enumerate(parts)], dim=1))

    # A training forward remembers its weights; an eval forward does not.
    emb = model(data)
    seen = fusion.last_weights.clone()
    torch.testing.assert_close(seen.sum(1), torch.ones(data.n_users))
    model.eval()
    with torch.no_grad():
        model(data)
    torch.testing.assert_close(fusion.last_weights, seen, rtol=0, atol=0)
    model.train()
    model.on_epoch_start(2, gen)
    assert float(fusion.weight) == pytest.approx(mixing_weight(2, 0.8, 0.7))
    torch.testing.assert_close(fusion.theta.detach(), seen, rtol=0, atol=0)
    assert emb.user.shape == (data.n_users, 24)


def test_lirdrec_state_dict_carries_the_schedule_but_not_the_fixed_inputs():
    data = toy_graph()
    model = lirdrec(data)
    model.on_epoch_start(4, torch.Generator())
    state = model.state_dict()
    assert "fusion.weight" in state and "fusion.last_weights" in state
    assert not any(k.startswith(("shared_input", "item_graph")) for k in state)
    other = lirdrec(data)
    other.load_state_dict(state)
    model.eval(), other.eval()
    with torch.no_grad():
        a, b = model(data), other(data)
    torch.testing.assert_close(a.user, b.user, rtol=0, atol=0)
    torch.testing.assert_close(a.item, b.item, rtol=0, atol=0)


def test_lirdrec_gradients_reach_every_parameter():
    data = toy_graph()
    model = lirdrec(data)
    model.on_epoch_start(1, torch.Generator())
    assert_every_parameter_gets_gradient(model, data)


def test_lirdrec_item_vector_adds_one_hop_over_the_item_graph():
    data = toy_graph()
    with_hop, without = lirdrec(data, item_layers=1), lirdrec(data, item_layers=0)
    without.load_state_dict(with_hop.state_dict())
    with torch.no_grad():
        a, b = with_hop.eval()(data), without.eval()(data)
    torch.testing.assert_close(a.user, b.user)
    torch.testing.assert_close(a.item, b.item + torch.sparse.mm(with_hop.item_graph.matrix, b.item))


def test_lirdrec_trains():
    data = toy_graph()
    losses = train_briefly(lirdrec(data), data, epochs=5)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize(
    "params,name",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"initial_weight": 1.0}, "initial_weight"),
        ({"decay_base": 0.0}, "decay_base"),
        ({"ui_layers": -1}, "ui_layers"),
        ({"image_knn_weight": 2.0}, "image_knn_weight"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"decay": 0.9}, "decay"),
    ],
)
def test_lirdrec_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=name):
        LIRDRecConfig.from_dict(params, "lirdrec")


# ------------------------------------------------------------------ SimpleX


def explicit_simplex_users(model: SimpleX, data: GraphData) -> torch.Tensor:
    """SimpleX's user vectors computed user by user from the definition (a Python loop)."""
    indptr, indices = data.csr["train"]
    e_user, e_item = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    rows = []
    for u in range(data.n_users):
        hist = torch.as_tensor(np.unique(indices[indptr[u] : indptr[u + 1]]))
        if len(hist) == 0:
            pooled = torch.zeros(e_user.shape[1])
        else:
            items = e_item[hist]
            if model.aggregator == "mean":
                alpha = torch.full((len(hist),), 1.0 / len(hist))
            else:
                keys = torch.tanh(items @ model.key[0].weight.detach().T + model.key[0].bias.detach())
                query = model.query.detach() if model.aggregator == "self_attention" else e_user[u]
                alpha = torch.softmax(keys @ query, dim=0)
            pooled = alpha @ items
        rows.append(model.gamma * e_user[u] + (1 - model.gamma) * model.value.weight.detach() @ pooled)
    return F.normalize(torch.stack(rows), dim=1)


@pytest.mark.parametrize("aggregator", ["mean", "self_attention", "user_attention"])
def test_simplex_user_vector_matches_its_definition(aggregator):
    data = toy_graph()
    model = simplex(data, aggregator=aggregator, gamma=0.3)
    with torch.no_grad():
        for p in model.parameters():  # move away from the tiny initialisation
            p.normal_()
        emb = model.eval()(data)
    torch.testing.assert_close(emb.user, explicit_simplex_users(model, data), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.item, F.normalize(model.item_emb.weight.detach(), dim=1))
    # The score is the cosine similarity.
    users = torch.tensor([0, 3, 7])
    expected = F.cosine_similarity(emb.user[users, None, :], model.item_emb.weight.detach()[None], dim=-1)
    torch.testing.assert_close(model.score(emb, users), expected, atol=1e-5, rtol=1e-5)


def test_simplex_counts_a_repeated_interaction_once_and_handles_users_without_history():
    rows = pd.DataFrame(
        {
            "user": [0, 0, 0, 1, 2, 2],
            "item": [0, 0, 1, 2, 1, 2],
            "split": ["train", "train", "train", "train", "valid", "test"],
        }
    )
    data = GraphData.build(rows, n_items=3)
    model = simplex(data, gamma=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        emb = model.eval()(data)
    torch.testing.assert_close(emb.user, explicit_simplex_users(model, data), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(emb.user).all()  # user 2 has no training item: zero aggregate


@pytest.mark.parametrize("aggregator", ["mean", "self_attention", "user_attention"])
def test_simplex_gradients_reach_every_parameter(aggregator):
    data = toy_graph()
    model = simplex(data, aggregator=aggregator)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    assert_every_parameter_gets_gradient(model, data)


def test_simplex_dropout_only_in_training():
    data = toy_graph()
    model = simplex(data, dropout=0.5)
    with torch.no_grad():
        a, b = model.eval()(data), model(data)
    torch.testing.assert_close(a.user, b.user, rtol=0, atol=0)
    with torch.no_grad():
        c = model.train()(data)
    assert not torch.equal(a.user, c.user)


def test_simplex_trains():
    data = toy_graph()
    losses = train_briefly(simplex(data, aggregator="user_attention"), data, epochs=5)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize(
    "params,name",
    [
        ({"aggregator": "max"}, "aggregator"),
        ({"gamma": 1.5}, "gamma"),
        ({"dropout": 1.0}, "dropout"),
        ({"embedding_dim": -3}, "embedding_dim"),
    ],
)
def test_simplex_config_errors_name_the_param(params, name):
    with pytest.raises(ConfigError, match=name):
        SimpleXConfig.from_dict(params, "simplex")


# ------------------------------------------------------------------ params


def test_params_yaml_holds_the_defaults_of_both_sections():
    params = load_params()
    assert LIRDRecConfig.from_dict(params["lirdrec"], "lirdrec") == LIRDRecConfig()
    assert SimpleXConfig.from_dict(params["simplex"], "simplex") == SimpleXConfig()
    assert LossConfig.from_dict(params["loss"], "loss") == LossConfig()
    assert params["train"]["sampler"] == "uniform" and params["loss"]["kind"] == "auto"


def setup_for(
    name: str, loss: dict | None = None, train: dict | None = None, modalities=("image", "text")
) -> TrainingSetup:
    return TrainingSetup.from_params(
        {
            "model": {"name": name, "modalities": list(modalities)},
            name: {},
            "loss": loss or {},
            "club": {"steps": 2},
            "train": {"lr": 1e-2, "batch_size": 32, "max_epochs": 2, "patience": 2} | (train or {}),
        }
    )


@pytest.mark.parametrize("name,kind", [("simplex", "ccl"), ("lightgcn", "bpr"), ("sea", "bpr"), ("lirdrec", "bpr")])
def test_loss_kind_auto_is_the_models_preferred_loss(name, kind):
    setup = setup_for(name)
    assert setup.loss.kind == "auto" and setup.ranking_loss == kind
    assert setup.ranks_by_cosine == (kind == "ccl")
    assert setup_for(name, loss={"kind": "bpr"}).ranking_loss == "bpr"
    assert setup_for(name, loss={"kind": "softmax"}).ranking_loss == "softmax"


@pytest.mark.parametrize(
    "section,params,match",
    [
        ("loss", {"kind": "hinge"}, "kind"),
        ("loss", {"ccl_margin": 1.0}, "ccl_margin"),
        ("loss", {"ccl_negative_weight": -1}, "ccl_negative_weight"),
        ("loss", {"softmax_temperature": 0}, "softmax_temperature"),
        ("train", {"sampler": "popular"}, "sampler"),
        ("train", {"cbns_memory_batches": -1}, "cbns_memory_batches"),
        ("train", {"cbns_warmup_steps": -2}, "cbns_warmup_steps"),
        ("train", {"sampler": "cross_batch"}, "sampler: cross_batch"),  # the loss is not softmax
    ],
)
def test_loss_and_sampler_config_errors_name_the_param(section, params, match):
    with pytest.raises(ConfigError, match=match):
        setup_for("lightgcn", **{section: params})


# ------------------------------------------------------------------ CCL


def ccl_by_hand(user, pos, negs, margin, weight) -> float:
    """The CCL formula, row by row and negative by negative."""
    total = 0.0
    for b in range(len(user)):
        cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))  # noqa: E731
        hinge = [max(0.0, cos(user[b], negs[b, n]) - margin) for n in range(negs.shape[1])]
        total += (1.0 - cos(user[b], pos[b])) + weight / len(hinge) * sum(hinge)
    return total / len(user)


@pytest.mark.parametrize("margin,weight", [(0.9, 150.0), (0.0, 1.0), (-0.2, 3.0)])
def test_ccl_matches_its_formula(margin, weight):
    g = torch.Generator().manual_seed(3)
    user, pos = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    negs = torch.randn(6, 7, 5, generator=g, dtype=torch.float64)
    negs[:, 0] = user + 0.01 * negs[:, 0]  # some negatives above any margin: the hinge is active
    pos_cos = F.cosine_similarity(user, pos, dim=-1)
    neg_cos = F.cosine_similarity(user[:, None], negs, dim=-1)
    assert ccl_loss(pos_cos, neg_cos, margin, weight).item() == pytest.approx(
        ccl_by_hand(user, pos, negs, margin, weight), rel=1e-9
    )


def test_ccl_hinge_ignores_negatives_below_the_margin():
    user = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 1.0]])
    neg = torch.tensor([[[0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]], requires_grad=True)  # cos 0, ~0.995, -1
    pos_cos = F.cosine_similarity(user, pos, dim=-1)
    neg_cos = F.cosine_similarity(user[:, None], neg, dim=-1)
    loss = ccl_loss(pos_cos, neg_cos, margin=0.9, negative_weight=3.0)
    expected = (1 - 1 / math.sqrt(2)) + 3.0 / 3 * (1 / math.sqrt(1.01) - 0.9)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert neg.grad[0, 0].abs().sum() == 0 and neg.grad[0, 2].abs().sum() == 0
    assert neg.grad[0, 1].abs().sum() > 0


def test_candidate_cosines_two_ways_agree_with_the_definition():
    g = torch.Generator().manual_seed(4)
    user, items = torch.randn(5, 3, generator=g), torch.randn(40, 3, generator=g)
    few = torch.randint(40, (5, 2), generator=g)  # 2 · 3 < 40: gathers the vectors
    many = torch.randint(40, (5, 20), generator=g)  # 20 · 3 ≥ 40: picks from the full matrix
    for ids in (few, many):
        expected = torch.stack(
            [
                torch.stack([F.cosine_similarity(user[b], items[ids[b, n]], dim=0) for n in range(ids.shape[1])])
                for b in range(5)
            ]
        )
        torch.testing.assert_close(candidate_cosines(user, items, ids), expected)


def test_ccl_ranking_loss_on_embeddings_matches_the_formula():
    g = torch.Generator().manual_seed(5)
    emb = Embeddings(
        torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    )
    batch = Batch(torch.tensor([0, 3, 3, 9]), torch.tensor([1, 2, 5, 29]), torch.randint(30, (4, 50), generator=g))
    loss = RankingLoss("ccl", LossConfig(ccl_margin=0.2, ccl_negative_weight=7.0))
    expected = ccl_by_hand(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg], 0.2, 7.0)
    assert loss(emb, batch).item() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ softmax and CBNS


def softmax_by_hand(user, pos, pos_ids, tau, log_q=None, extra=None, extra_ids=None) -> float:
    """Cross-entropy of each row over [in-batch positives; extra], one row at a time."""
    cands = list(zip(pos_ids.tolist(), pos, strict=True))
    if extra is not None:
        cands += list(zip(extra_ids.tolist(), extra, strict=True))
    total = 0.0
    for b in range(len(user)):
        logits = []
        for c, (item, v) in enumerate(cands):
            if item == int(pos_ids[b]) and c != b:
                continue  # the row's own item elsewhere in the candidates: not a negative
            logit = float(F.cosine_similarity(user[b], v, dim=0)) / tau
            logits.append(logit - (float(log_q[item]) if log_q is not None else 0.0))
        own = float(F.cosine_similarity(user[b], pos[b], dim=0)) / tau
        own -= float(log_q[pos_ids[b]]) if log_q is not None else 0.0
        total += -(own - math.log(sum(math.exp(x) for x in logits)))
    return total / len(user)


def test_sampled_softmax_matches_its_formula_with_duplicates_logq_and_extra_candidates():
    g = torch.Generator().manual_seed(6)
    user, pos = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    pos_ids = torch.tensor([3, 1, 3, 0, 2])  # item 3 twice
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.35, 0.05], dtype=torch.float64))
    extra, extra_ids = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.tensor([4, 1, 0])
    for kwargs in ({}, {"log_q": log_q}, {"log_q": log_q, "extra": extra, "extra_ids": extra_ids}):
        got = sampled_softmax_loss(user, pos, pos_ids, 0.3, **kwargs).item()
        assert got == pytest.approx(softmax_by_hand(user, pos, pos_ids, 0.3, **kwargs), rel=1e-9)


def test_cross_batch_memory_keeps_the_last_m_batches_in_order():
    memory = CrossBatchMemory(n_batches=2, warmup_steps=3)
    assert memory.entries() is None and memory.negatives() is None
    pushed = []
    for step in range(4):
        ids = torch.arange(3) + 10 * step
        vectors = torch.full((3, 2), float(step))
        memory.push(ids, vectors)
        pushed.append((ids, vectors))
        ids_in, vectors_in = memory.entries()
        last = pushed[-2:]
        torch.testing.assert_close(ids_in, torch.cat([i for i, _ in last]))  # oldest first
        torch.testing.assert_close(vectors_in, torch.cat([v for _, v in last]))
        assert (memory.negatives() is None) == (step + 1 < 3)  # served from the 3rd push on
    assert memory.entries()[0].tolist() == [20, 21, 22, 30, 31, 32]


def test_cross_batch_memory_entries_carry_no_gradient_and_do_not_follow_the_model():
    table = torch.nn.Parameter(torch.randn(6, 3))
    memory = CrossBatchMemory(n_batches=3, warmup_steps=0)
    memory.push(torch.tensor([0, 1]), table[[0, 1]])
    memory.push(torch.arange(6), table)  # even a parameter itself is stored as a copy
    ids, stored = memory.entries()
    assert not stored.requires_grad and stored.grad_fn is None
    before = stored.clone()
    with torch.no_grad():
        table.add_(1.0)
    torch.testing.assert_close(memory.entries()[1], before, rtol=0, atol=0)

    # In a loss, only the in-batch candidates carry gradient back to the model.
    user = torch.randn(2, 3, requires_grad=True)
    pos_ids = torch.tensor([2, 3])
    loss = sampled_softmax_loss(user, table[pos_ids], pos_ids, 0.5, extra=stored, extra_ids=ids)
    loss.backward()
    assert table.grad[[2, 3]].abs().sum() > 0
    assert table.grad[[0, 1, 4, 5]].abs().sum() == 0  # rows only in the memory get none


def test_cbns_with_an_empty_memory_is_the_plain_in_batch_softmax():
    g = torch.Generator().manual_seed(7)
    emb = Embeddings(
        torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    )
    cfg = LossConfig(kind="softmax", softmax_temperature=0.2)
    log_q = torch.log(torch.full((9,), 1 / 9, dtype=torch.float64) + torch.arange(9) / 100)
    cbns = RankingLoss("softmax", cfg, log_q, CrossBatchMemory(n_batches=0, warmup_steps=0))
    for _step in range(3):
        batch = Batch(
            torch.randint(12, (6,), generator=g),
            torch.randint(9, (6,), generator=g),
            torch.zeros(6, 1, dtype=torch.long),
        )
        expected = softmax_by_hand(emb.user[batch.users], emb.item[batch.pos], batch.pos, 0.2, log_q)
        assert cbns(emb, batch).item() == pytest.approx(expected, rel=1e-9)
    assert cbns.memory.entries() is None


def test_cbns_uses_the_memory_after_the_warm_up():
    g = torch.Generator().manual_seed(8)
    emb = Embeddings(
        torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64)
    )
    cfg = LossConfig(kind="softmax", softmax_temperature=0.5)
    cbns = RankingLoss("softmax", cfg, None, CrossBatchMemory(n_batches=2, warmup_steps=2))
    batches = [
        Batch(
            torch.randint(12, (5,), generator=g),
            torch.randperm(20, generator=g)[:5],
            torch.zeros(5, 1, dtype=torch.long),
        )
        for _ in range(4)
    ]
    for step, batch in enumerate(batches):
        user, pos = emb.user[batch.users], emb.item[batch.pos]
        if step < 2:  # warming up: in-batch only
            expected = softmax_by_hand(user, pos, batch.pos, 0.5)
        else:  # + the item vectors of the two previous batches
            ids = torch.cat([batches[step - 2].pos, batches[step - 1].pos])
            expected = softmax_by_hand(user, pos, batch.pos, 0.5, extra=emb.item[ids], extra_ids=ids)
        assert cbns(emb, batch).item() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ through the real trainer


@pytest.mark.parametrize("name", ["lightgcn", "sea", "simplex", "lirdrec"])
@pytest.mark.parametrize(
    "loss,train",
    [
        ({"kind": "ccl"}, {"negatives": 50}),
        ({"kind": "softmax"}, {"sampler": "cross_batch", "cbns_memory_batches": 2, "cbns_warmup_steps": 3}),
    ],
)
def test_ccl_and_cbns_train_each_model_through_the_trainer(name, loss, train):
    data = toy_graph(n_users=60, n_items=36)
    setup = setup_for(name, loss=loss, train=train)
    seed_everything(0)
    model = build_model(data, setup)
    assert model.rank_by_cosine
    result = fit(model, data, setup, seed=1, log=lambda s: None)
    kind = loss["kind"]
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(math.isfinite(row[kind]) and row[kind] > 0 for row in result.history)
    emb = embed(model, data)  # ranks by cosine: unit vectors
    torch.testing.assert_close(emb.user.norm(dim=1), torch.ones(data.n_users))
    torch.testing.assert_close(emb.item.norm(dim=1), torch.ones(data.n_items))
    assert 0.0 <= evaluate(model, data, "valid", [10])["recall@10"] <= 1.0


def test_cbns_memory_fills_during_a_real_step_and_runs_are_reproducible():
    data = toy_graph(n_users=60, n_items=36)
    setup = setup_for(
        "lightgcn",
        loss={"kind": "softmax"},
        train={"sampler": "cross_batch", "cbns_memory_batches": 2, "cbns_warmup_steps": 1},
    )
    seed_everything(0)
    model = build_model(data, setup)
    ranking = setup.make_ranking_loss(data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [random_batch(data, n=16, negatives=1, seed=s) for s in range(3)]
    for batch in batches:
        train_step(model, opt, data, batch, ranking)
    ids, vectors = ranking.memory.entries()
    assert ids.tolist() == torch.cat([batches[1].pos, batches[2].pos]).tolist()
    assert vectors.shape == (32, 64) and not vectors.requires_grad
    counts = torch.bincount(data.train_items, minlength=data.n_items).float()
    torch.testing.assert_close(ranking.log_q, (counts / counts.sum()).log())

    runs = []
    for _ in range(2):
        seed_everything(0)
        model = build_model(data, setup)
        runs.append(fit(model, data, setup, seed=3, log=lambda s: None).history)
    assert [r["softmax"] for r in runs[0]] == [r["softmax"] for r in runs[1]]


def test_a_model_trained_with_bpr_ranks_by_its_own_score():
    data = toy_graph()
    model = build_model(data, setup_for("lightgcn"))
    assert not model.rank_by_cosine
    emb = embed(model, data)
    assert not torch.allclose(emb.item.norm(dim=1), torch.ones(data.n_items))
