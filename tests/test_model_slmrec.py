"""SLMRec checked against its definition (Tao et al., IEEE TMM 2022; MMRec's slmrec.py) on a
hand-sized graph, computed here with dense tensors, one view at a time: the views, the fused
vectors and scores, the main InfoNCE, each self-supervised task (FAC; feature dropout and
masking with the draws replayed) and the weight decay, their gradients, the draws, the config,
and a short run through the trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from model_checks import assert_terms_match
from test_model_bm3 import BATCH, dense_adjacency, tiny_data
from test_sea import grads_missing, make, make_batch, make_setup, recall_at_10

from sea.batch import Batch
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import GraphData, model_class
from sea.models.slmrec import SLMRec, SLMRecConfig
from sea.train import fit, train_step

# ------------------------------------------------------------------ a hand-sized graph (BM3's: 4 users, 5 items)


def build(data: GraphData, **cfg) -> SLMRec:
    torch.manual_seed(0)
    setup = make_setup("slmrec", {"embedding_dim": 4} | cfg, modalities=list(data.features))
    return SLMRec.build(data, setup.model_cfg, setup.model.modalities, setup.loss, setup.club)


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def item_inputs(model: SLMRec, data: GraphData) -> list[torch.Tensor]:
    """Layer 0 of every view's item side: the id embeddings, then each modality's
    row-normalised feature through its projection."""
    out = [model.item.weight]
    for m in model.modalities:
        f = data.features[m]
        out.append(linear(model.projections[m], f / f.pow(2).sum(1, keepdim=True).sqrt()))
    return out


def lightgcn(adj, user, item, layers, after_layer=lambda x, layer: x) -> torch.Tensor:
    """The mean of layers 0..L of Â^l·[user; item], ``after_layer`` applied to each layer ≥ 1."""
    x = torch.cat([user, item])
    out = [x]
    for layer in range(layers):
        x = after_layer(adj @ x, layer)
        out.append(x)
    return torch.stack(out).mean(0)


def views_by_hand(model: SLMRec, data: GraphData, after_layer=None, items=None) -> list[torch.Tensor]:
    """Each view propagated on its own (the same user embeddings on every view's user side);
    ``after_layer(x, view, layer)``: an augmentation after each layer."""
    adj = dense_adjacency(data.n_users, data.n_items)
    items = items or item_inputs(model, data)
    return [
        lightgcn(adj, model.user.weight, x, model.layers, (lambda y, layer, s=s: after_layer(y, s, layer)))
        if after_layer
        else lightgcn(adj, model.user.weight, x, model.layers)
        for s, x in enumerate(items)
    ]


def fused(model: SLMRec, views: list[torch.Tensor], n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.cat(views, dim=1)
    return linear(model.user_fusion, h[:n_users]), linear(model.item_fusion, h[n_users:])


def nce(a: torch.Tensor, b: torch.Tensor, tau: float, cosine: bool = True) -> torch.Tensor:
    """mean_i −log( exp(s(a_i, b_i)/τ) / Σ_j exp(s(a_i, b_j)/τ) ), s cosine or dot product."""
    if cosine:
        a = a / a.pow(2).sum(1, keepdim=True).sqrt()
        b = b / b.pow(2).sum(1, keepdim=True).sqrt()
    logits = torch.stack([torch.stack([(a[i] * b[j]).sum() / tau for j in range(len(b))]) for i in range(len(a))])
    return (torch.logsumexp(logits, 1) - logits.diagonal()).mean()


def fac_by_hand(model: SLMRec, views: list[torch.Tensor], n_users: int, items: torch.Tensor) -> torch.Tensor:
    """id ↔ first modality in the fine space; the id chain on to the coarse space ↔ second."""
    rows = [v[n_users + items] for v in views]
    x = linear(model.fac_id, rows[0])
    first, *rest = model.modalities
    loss = nce(x, linear(model.fac_modality[first], rows[1]), model.ssl_temp, cosine=False)
    if rest:
        coarse = linear(model.fac_chain[1], linear(model.fac_chain[0], x))
        loss = loss + nce(coarse, linear(model.fac_modality[rest[0]], rows[2]), model.ssl_temp, cosine=False)
    return loss


# ------------------------------------------------------------------ registry and config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("slmrec") is SLMRec and SLMRec.uses_features and SLMRec.preferred_loss == "none"
    assert SLMRecConfig.from_dict(params["slmrec"], "slmrec") == SLMRecConfig()  # params.yaml holds the defaults
    cfg = SLMRecConfig()
    assert (cfg.embedding_dim, cfg.layers, cfg.temperature, cfg.ssl_task) == (64, 3, 0.2, "fac")  # MMRec's yaml
    assert (cfg.ssl_alpha, cfg.ssl_temp, cfg.dropout_rate, cfg.weight_decay) == (0.1, 0.2, 0.3, 1e-4)
    assert params["tune"]["spaces"]["slmrec"] == SLMRec.search_space
    assert SLMRec.search_space == {"ssl_alpha": [0.01, 0.1, 0.5, 1.0], "ssl_temp": [0.1, 0.2, 0.5]}
    assert make_setup("slmrec").ranking_loss == "none"  # loss.kind auto: no ranking term


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 1),
        ("layers", -1),
        ("temperature", 0.0),
        ("ssl_task", "FAC"),
        ("ssl_alpha", -0.1),
        ("ssl_temp", 0.0),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.1),
        ("weight_decay", -1e-4),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"\[slmrec\]: {field}"):
        SLMRecConfig.from_dict({field: value}, "slmrec")


# ------------------------------------------------------------------ forward and scores


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_forward_and_scores_match_the_definition(layers):
    data = tiny_data()
    model = build(data, layers=layers).eval()
    with torch.no_grad():
        emb = model(data)
        scores = model.score(emb, torch.arange(data.n_users))
        user, item = fused(model, views_by_hand(model, data), data.n_users)
        again = model(data)
    assert torch.allclose(emb.user, user, atol=1e-6) and torch.allclose(emb.item, item, atol=1e-6)
    assert torch.allclose(scores, user @ item.T, atol=1e-6)  # MMRec ranks by the dot product
    assert emb.extras == {}  # eval mode: nothing for the losses, nothing drawn
    assert torch.equal(again.user, emb.user) and torch.equal(again.item, emb.item)


# ------------------------------------------------------------------ the loss terms


@pytest.mark.parametrize("dims", [{"image": 6, "text": 4}, {"text": 4}])
def test_fac_infonce_and_weight_decay_match_the_definition(dims):
    data = tiny_data(dims)
    model = build(data, layers=2, ssl_alpha=0.7, ssl_temp=0.5, temperature=0.3, weight_decay=0.01)
    assert (model.fac_chain is not None) == (len(dims) == 2)
    terms = model.train().extra_losses(model(data), BATCH)
    assert {k: t.weight for k, t in terms.items()} == {"infonce": 1.0, "ssl": 0.7, "weight_decay": 0.01}
    views = views_by_hand(model, data)
    user, item = fused(model, views, data.n_users)
    want = {
        "infonce": nce(user[BATCH.users], item[BATCH.pos], 0.3),  # the batch's users vs its positives
        "ssl": fac_by_hand(model, views, data.n_users, BATCH.pos),
        "weight_decay": 0.5 * sum(p.pow(2).sum() for p in model.parameters()),
    }
    assert_terms_match(model, terms, want, rtol=1e-4)
    # the weight decay's gradient is Adam's coupled weight_decay: λ·θ
    params = list(model.parameters())
    grads = torch.autograd.grad(terms["weight_decay"].weight * terms["weight_decay"].value, params)
    assert all(torch.allclose(g, 0.01 * p) for g, p in zip(grads, params, strict=True))


def record(model: SLMRec, name: str) -> list:
    """Wrap ``model.<name>`` to keep its (inputs, output) pairs."""
    seen, original = [], getattr(model, name)

    def wrapped(*args):
        out = original(*args)
        seen.append((tuple(a.detach().clone() for a in args), out.detach().clone()))
        return out

    setattr(model, name, wrapped)
    return seen


@pytest.mark.parametrize("task", ["fd", "fm", "fd+fm"])
def test_augmented_tasks_match_the_definition_with_the_draws_replayed(task):
    data = tiny_data()
    model = build(data, layers=2, ssl_task=task, ssl_alpha=0.4, ssl_temp=0.5, dropout_rate=0.3)
    assert model.fac_id is None  # only FAC has maps of its own
    drops, masks = record(model, "drop"), record(model, "view_masks")
    torch.manual_seed(11)
    terms = model.train().extra_losses(model(data), BATCH)
    assert len(drops) == (2 if "fd" in task else 0) and len(masks) == (1 if "fm" in task else 0)
    d, n_views = model.dim, model.n_views
    # the dropout masks, per layer, as [copy, view] blocks of d columns (each coordinate 0 or 1 / (1 − p))
    keep = []
    for (x,), y in drops:
        assert torch.all((y == 0) | torch.isclose(y, x / 0.7))
        keep.append((y != 0).float() / 0.7)
    views = []
    for copy_ in range(2):
        items = item_inputs(model, data)
        if masks:  # this copy's drawn view has its item side zeroed
            items = [x * masks[0][1][copy_, s] for s, x in enumerate(items)]
        col = lambda s, c=copy_: slice((c * n_views + s) * d, (c * n_views + s + 1) * d)  # noqa: E731
        after = (lambda y, s, layer, col=col: y * keep[layer][:, col(s)]) if keep else None
        views.append(fused(model, views_by_hand(model, data, after, items), data.n_users))
    (u1, i1), (u2, i2) = views
    want = {
        "ssl": nce(u1[BATCH.users], u2[BATCH.users], 0.5) + nce(i1[BATCH.pos], i2[BATCH.pos], 0.5),
    }
    user, item = fused(model, views_by_hand(model, data), data.n_users)
    want["infonce"] = nce(user[BATCH.users], item[BATCH.pos], model.temperature)
    want["weight_decay"] = 0.5 * sum(p.pow(2).sum() for p in model.parameters())
    assert_terms_match(model, terms, want, rtol=1e-4)


def test_the_draws_are_seeded_uniform_and_only_in_training():
    model = build(tiny_data(), ssl_task="fd+fm", dropout_rate=0.3)
    torch.manual_seed(1)
    a = [model.view_masks() for _ in range(600)]
    torch.manual_seed(1)
    b = [model.view_masks() for _ in range(600)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    pairs = [tuple(int(i) for i in (m == 0).nonzero()[:, 1]) for m in a]  # the zeroed view of each copy
    assert all(len(p) == 2 and p[0] != p[1] for p in pairs)  # one per copy, two distinct views
    counts = {p: pairs.count(p) for p in set(pairs)}
    assert len(counts) == 6 and all(abs(c / 600 - 1 / 6) < 0.06 for c in counts.values())  # 3 views: 6 pairs
    x = torch.randn(400, 50) + 5.0
    assert abs((model.drop(x) == 0).float().mean().item() - 0.3) < 0.02


def test_zero_weights_drop_their_terms_and_the_negatives_are_not_read():
    data = tiny_data()
    model = build(data)
    other = Batch(BATCH.users, BATCH.pos, torch.zeros_like(BATCH.neg))
    model.train()
    values = [{k: t.value.item() for k, t in model.extra_losses(model(data), b).items()} for b in (BATCH, other)]
    assert values[0] == values[1] and set(values[0]) == {"infonce", "ssl", "weight_decay"}
    plain = build(data, ssl_alpha=0.0, weight_decay=0.0)
    assert plain.fac_id is None and plain.fac_chain is None and plain.fac_modality is None
    assert set(plain.extra_losses(plain.train()(data), BATCH)) == {"infonce"}


# ------------------------------------------------------------------ through the trainer


@pytest.mark.parametrize("task", ["fac", "fd", "fm", "fd+fm"])
def test_the_trainer_step_has_no_ranking_term_and_trains_every_parameter(task):
    model, data = make("slmrec", {"ssl_task": task})
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = train_step(model, opt, data, make_batch(data), "auto")
    assert set(parts) == {"loss", "infonce", "ssl", "weight_decay"}
    assert not grads_missing(model)


def test_training_is_reproducible_lowers_the_loss_and_learns():
    results = []
    for _ in range(2):
        model, data = make("slmrec", {"layers": 2})
        setup = make_setup("slmrec", {"layers": 2}, train={"max_epochs": 8, "patience": 8})
        history = fit(model, data, setup, 5, log=lambda s: None).history
        results.append((copy.deepcopy(model.state_dict()), history, recall_at_10(model, data)))
    (a, history, recall), (b, history_b, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a) and history == history_b
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    assert recall > 0.3  # random top-10 recalls about 1/6
