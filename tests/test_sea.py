"""SEA's losses, its separation component and the SEA model, checked against their
definitions through the Recommender interface (sea/models/base.py).

The helpers at the top (toy data, params, a model built and trained by the real trainer,
sea/train.py) are shared with tests/test_models_mm.py.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sea.batch import Batch
from sea.data.split import split
from sea.errors import ConfigError
from sea.losses import CLUBEstimator, bpr_loss, l2_distance_loss, solosim_loss
from sea.metrics import evaluate_ranking
from sea.models.base import GraphData, Recommender, model_class
from sea.models.graphs import item_item_graph
from sea.models.sea import SEAConfig
from sea.setup import TrainingSetup
from sea.train import build_model, fit, seed_everything, train_step

# ------------------------------------------------------------------ helpers (shared)


def toy_data(feature_dims=None, seed: int = 0, n_users: int = 120, n_items: int = 60):
    """Users who each like one of 4 clusters; the features reveal the cluster."""
    feature_dims = feature_dims or {"image": 24, "text": 20}
    rng = np.random.default_rng(seed)
    user_c, item_c = rng.integers(0, 4, n_users), rng.integers(0, 4, n_items)
    rows = [
        (u, i, 5.0, int(rng.integers(1e9)))
        for u in range(n_users)
        for i in rng.choice(np.flatnonzero(item_c == user_c[u]), 6, replace=False)
    ]
    inter = split(pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]), "mmrec", 1)
    onehot = np.eye(4)[item_c]
    feats = {
        m: (onehot @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(n_items, d))).astype(np.float32)
        for m, d in feature_dims.items()
    }
    return inter, feats


def make_setup(
    name: str = "sea",
    cfg: dict | None = None,
    *,
    loss: dict | None = None,
    club: dict | None = None,
    modalities=("image", "text"),
    train: dict | None = None,
) -> TrainingSetup:
    """The params a run of model ``name`` reads (3 estimator steps instead of 50)."""
    return TrainingSetup.from_params(
        {
            "model": {"name": name, "modalities": list(modalities)},
            name: cfg or {},
            "loss": loss or {},
            "club": {"steps": 3} | (club or {}),
            "train": {"lr": 1e-2, "batch_size": 128, "max_epochs": 8, "patience": 8} | (train or {}),
        }
    )


def make(
    name: str = "sea",
    cfg: dict | None = None,
    *,
    loss=None,
    club=None,
    modalities=("image", "text"),
    feature_dims=None,
    init_seed: int = 0,
    **sizes,
) -> tuple[Recommender, GraphData]:
    """Model ``name`` built on the toy data by the trainer's build_model."""
    setup = make_setup(name, cfg, loss=loss, club=club, modalities=modalities)
    inter, feats = toy_data(feature_dims, **sizes)
    data = GraphData.build(inter, len(next(iter(feats.values()))), {m: feats[m] for m in modalities})
    seed_everything(init_seed)  # as the train stage does: deterministic CPU kernels too
    return build_model(data, setup), data


def make_batch(data: GraphData, n: int = 64, negatives: int = 1, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_users), generator=g)[:n]
    return Batch(
        data.train_users[idx], data.train_items[idx], torch.randint(data.n_items, (len(idx), negatives), generator=g)
    )


def step(model: Recommender, data: GraphData, batch: Batch, opt: torch.optim.Optimizer) -> dict[str, float]:
    """The trainer's step; returns the unweighted terms and the auxiliary logs."""
    return {k: float(v) for k, v in train_step(model, opt, data, batch, "bpr").items()}


def train(model: Recommender, data: GraphData, epochs: int, seed: int = 5) -> None:
    """The trainer's fit (lr 1e-2, batches of 128) for ``epochs`` epochs, best state kept."""
    setup = make_setup(model.name, modalities=list(data.features), train={"max_epochs": epochs, "patience": epochs})
    fit(model, data, setup, seed, log=lambda s: None)


def recall_at_10(model: Recommender, data: GraphData) -> float:
    model.eval()
    with torch.no_grad():
        emb = model(data)
    return evaluate_ranking(lambda u: model.score(emb, u), data.csr["train"], data.csr["test"], data.n_items, [10])[
        "recall@10"
    ]


def grads_missing(model: Recommender) -> list[str]:
    """Main parameters without a non-zero gradient."""
    main = {id(p) for p in model.main_parameters()}
    return [n for n, p in model.named_parameters() if id(p) in main and (p.grad is None or not p.grad.abs().sum() > 0)]


# ------------------------------------------------------------------ losses


def test_bpr_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    u, p, n = (torch.randn(8, 5, generator=g) for _ in range(3))
    expected = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    assert bpr_loss(u, p, n).item() == pytest.approx(expected.item(), rel=1e-5)


def test_solosim_is_cross_entropy_of_scaled_cosine_matrix():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    tau = 0.2
    sim = torch.tensor([[F.cosine_similarity(a[i], b[j], dim=0).item() / tau for j in range(10)] for i in range(10)])
    expected = np.mean([-(sim[i, i] - torch.logsumexp(sim[i], 0)).item() for i in range(10)])
    assert solosim_loss(a, b, tau).item() == pytest.approx(expected, rel=1e-5)


def test_l2_distance_loss_is_minus_squared_distance_of_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert l2_distance_loss(a, b).item() == pytest.approx(-2.0)


def _club_estimate(draw, steps=600):
    """Fit the estimator on one draw of (x, y) and report the bound on a fresh draw."""
    torch.manual_seed(0)
    x, y = draw(0)
    est = CLUBEstimator(x.shape[1], y.shape[1], hidden_dim=16)
    est.fit(x, y, torch.optim.Adam(est.parameters(), lr=1e-2), steps)
    x, y = draw(1)
    with torch.no_grad():
        return float(np.mean([est.bound(x, y).item() for _ in range(20)]))


def test_club_bounds_mutual_information_of_correlated_gaussians():
    d, rho, n = 4, 0.8, 2000

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)

    true_mi = -0.5 * d * math.log(1 - rho**2)  # 2.04 nats
    exact_club = d * rho**2 / (1 - rho**2)  # 7.1 nats with the true conditional
    estimate = _club_estimate(draw)
    assert true_mi - 0.15 <= estimate <= exact_club * 1.2, (estimate, true_mi, exact_club)


def test_club_is_near_zero_for_independent_samples():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)

    assert abs(_club_estimate(draw)) < 0.1


def test_batched_estimators_fit_as_separate_ones():
    g = torch.Generator().manual_seed(5)
    data = {
        m: (torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64))
        for m in ("a", "b")
    }
    torch.manual_seed(0)
    joint = CLUBEstimator(4, 4, 8, count=2).double()
    separate = []
    for j in range(2):  # estimator j alone, starting from the batched module's slice j
        est = CLUBEstimator(4, 4, 8).double()
        est.load_state_dict({k: v[j : j + 1].clone() for k, v in joint.state_dict().items()})
        separate.append(est)
    x, y = (torch.stack([data[m][i] for m in data]) for i in (0, 1))
    lls = joint.fit(x, y, torch.optim.Adam(joint.parameters(), lr=1e-2), 10)
    assert lls.shape == (2,)
    perm = torch.stack([torch.randperm(50) for _ in range(2)])
    bounds = joint.bound(x, y, perm)
    for j, (m, est) in enumerate(zip(data, separate)):
        ll = est.fit(*data[m], torch.optim.Adam(est.parameters(), lr=1e-2), 10)
        torch.testing.assert_close(ll, lls[j])
        for k, v in est.state_dict().items():
            torch.testing.assert_close(v[0], joint.state_dict()[k][j])
        torch.testing.assert_close(est.bound(*data[m], perm[j]), bounds[j])


def test_estimator_gradients_are_autograds():
    """The closed-form gradients ``fit`` uses are those of autograd on ``log_likelihood``,
    and ``fit`` takes the steps an autograd loop takes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 6, generator=g, dtype=torch.float64)
    y = 2 * torch.randn(2, 40, 5, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    est = CLUBEstimator(6, 5, 7, count=2).double()
    ll, grads = est.gradients(x, y)
    expected = est.log_likelihood(x, y)
    (-expected.sum()).backward()
    torch.testing.assert_close(ll, expected.detach(), rtol=1e-12, atol=1e-12)
    assert len(grads) == len(list(est.parameters()))
    for (name, p), grad in zip(est.named_parameters(), grads):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)

    by_autograd = CLUBEstimator(6, 5, 7, count=2).double()
    by_autograd.load_state_dict(est.state_dict())
    optimizer = torch.optim.Adam(by_autograd.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        last = by_autograd.log_likelihood(x, y)
        (-last.sum()).backward()
        optimizer.step()
    torch.testing.assert_close(est.fit(x, y, torch.optim.Adam(est.parameters(), lr=1e-2), 5), last.detach())
    for k, v in est.state_dict().items():
        torch.testing.assert_close(v, by_autograd.state_dict()[k], rtol=1e-9, atol=1e-11, msg=k)


# ------------------------------------------------------------------ the separation and SEA


@pytest.mark.parametrize("dims", [{"image": 24, "text": 20}, {"image": 48, "text": 7}, {"image": 4096, "text": 384}])
def test_any_feature_width_works(dims):
    model, data = make(feature_dims=dims)
    emb = model(data)
    assert emb.user.shape == (data.n_users, 2 * 64)
    assert emb.item.shape == (data.n_items, 2 * 64)
    for m, d in dims.items():
        g, s = emb.extras["split"].parts(m)
        assert g.shape[1] + s.shape[1] == d and g.shape[1] == round(0.5 * d)


def test_sea_is_registered_and_validates_its_section():
    assert model_class("sea").Config is SEAConfig and model_class("sea").uses_features
    assert SEAConfig.from_dict({}, "sea") == SEAConfig()  # the defaults of the brief
    for bad in (
        {"generic_fraction": 1.0},
        {"knn_k": 0},
        {"image_knn_weight": 1.5},
        {"head_dim": 0},
        {"modalities": ["image"]},
    ):
        with pytest.raises(ConfigError, match=r"\[sea\]"):
            SEAConfig.from_dict(bad, "sea")


def test_item_graph_is_built_from_the_features_and_not_saved():
    model, data = make("sea", {"knn_k": 4, "image_knn_weight": 0.3})
    expected = item_item_graph(data.features, 4, 0.3)
    assert torch.equal(model.item_graph.matrix.to_dense(), expected.to_dense())
    assert not any("graph" in k for k in model.state_dict())
    twin = copy.deepcopy(model)  # a frozen sparse graph must not stop a deep copy
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        model.eval(), twin.eval()
        assert torch.equal(model(data).item, twin(data).item)


def test_every_parameter_gets_a_gradient():
    model, data = make()
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    parts = step(model, data, make_batch(data), opt)
    assert {"bpr", "club", "solosim", "club_ll_image", "club_ll_text"} <= set(parts)
    assert not grads_missing(model)


def test_terms_are_taken_on_the_batch_distinct_positive_items():
    model, data = make()
    batch = make_batch(data)
    emb = model(data)
    sep = model.separation
    items = torch.unique(batch.pos)
    text, image = sep.solosim_pair(emb.extras["split"], items)
    assert model.extra_losses(emb, batch)["solosim"].value.item() == pytest.approx(
        solosim_loss(text, image, 0.2).item(), rel=1e-6
    )
    g, s = emb.extras["split"].parts("text")
    assert text.shape[0] == len(items) < len(batch.pos)
    assert torch.allclose(
        sep.club_pairs(emb.extras["split"], items)["text"][1], sep.club_unique["text"](s[items]), atol=1e-5
    )


def test_zero_weights_mean_plain_bpr():
    model, data = make(loss={"club_weight": 0.0, "solosim_weight": 0.0})
    sep = model.separation
    assert sep.estimators is None and sep.club_generic is None and sep.solosim_heads is None
    reference = copy.deepcopy(model)
    batch = make_batch(data)
    emb = model(data)
    assert model.extra_losses(emb, batch) == {} and model.auxiliary_step(emb, batch) == {}
    step(model, data, batch, torch.optim.Adam(model.main_parameters(), lr=1e-2))
    # the same step by hand: the ranking loss alone
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    reference.train()
    emb = reference(data)
    bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]).backward()
    opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7), name


def test_the_terms_switch_on_separately():
    model, data = make(loss={"club_weight": 0.0})
    emb, batch = model(data), make_batch(data)
    assert model.auxiliary_step(emb, batch) == {}  # no estimator step without CLUB
    assert set(model.extra_losses(emb, batch)) == {"solosim"}
    model, data = make(loss={"solosim_weight": 0.0})
    emb = model(data)
    assert set(model.auxiliary_step(emb, batch)) == {"club_ll_image", "club_ll_text"}
    terms = model.extra_losses(emb, batch)
    assert set(terms) == {"club"} and terms["club"].weight == 0.006


def test_switching_a_term_leaves_the_initialisation_alone():
    full, _ = make()
    bare, _ = make(loss={"club_weight": 0.0, "solosim_weight": 0.0})
    names = [n for n, _ in bare.named_parameters()]
    assert names and all(torch.equal(bare.get_parameter(n), full.get_parameter(n)) for n in names)


def test_zero_estimator_steps_leave_the_estimators_alone():
    model, data = make(club={"steps": 0})
    before = copy.deepcopy(model.separation.estimators.state_dict())
    emb = model(data)
    assert model.auxiliary_step(emb, make_batch(data)) == {}
    assert all(torch.equal(before[k], v) for k, v in model.separation.estimators.state_dict().items())


def test_estimator_and_model_optimisers_do_not_cross():
    model, data = make()
    estimator_ids = {id(p) for p in model.separation.estimator_parameters()}
    main_ids = {id(p) for p in model.main_parameters()}
    assert estimator_ids and not estimator_ids & main_ids
    assert estimator_ids | main_ids == {id(p) for p in model.parameters()}
    # the estimator step changes the estimators and nothing else
    batch = make_batch(data)
    before = copy.deepcopy(model.state_dict())
    emb = model(data)
    model.auxiliary_step(emb, batch)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("separation.estimators.") for k in changed)
    assert {id(p) for g in model.separation._estimator_optimizer.param_groups for p in g["params"]} == estimator_ids
    # a model step leaves the estimators as their own step left them
    fitted = copy.deepcopy(model.separation.estimators.state_dict())
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    sum(t.value for t in model.extra_losses(emb, batch).values()).backward()
    opt.step()
    assert all(torch.equal(fitted[k], v) for k, v in model.separation.estimators.state_dict().items())
    assert any(
        not torch.equal(before[k], v)
        for k, v in model.state_dict().items()
        if not k.startswith("separation.estimators.")
    )


def test_text_only_has_no_solosim_and_no_modality_weights():
    model, data = make(modalities=("text",))
    assert model.user_modality_logits is None and model.separation.solosim_heads is None
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert "solosim" not in parts and np.isfinite(parts["club"])


def test_l2_distance_needs_no_estimator():
    model, data = make(loss={"distance": "l2"})
    assert model.separation.estimators is None
    emb, batch = model(data), make_batch(data)
    assert model.auxiliary_step(emb, batch) == {}
    pairs = model.separation.club_pairs(emb.extras["split"], torch.unique(batch.pos))
    expected = np.mean([l2_distance_loss(g, s).item() for g, s in pairs.values()])
    assert model.extra_losses(emb, batch)["club"].value.item() == pytest.approx(expected, rel=1e-6)


def test_reference_pairing_shares_one_clamped_estimator():
    model, data = make(club={"pairing": "reference", "steps": 2})
    assert model.separation.estimator_names == ["shared"] and model.separation.estimators.count == 1
    parts = step(model, data, make_batch(data), torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert set(parts) >= {"club_ll_shared", "club"} and parts["club"] >= 0.0
    with pytest.raises(ConfigError, match="pairing: reference"):
        make(club={"pairing": "reference"}, modalities=("text",))


def test_a_batch_with_one_positive_item():
    model, data = make()
    batch = Batch(data.train_users[:3], data.train_items[:1].repeat(3), torch.zeros(3, 1, dtype=torch.long))
    parts = step(model, data, batch, torch.optim.Adam(model.main_parameters(), lr=1e-2))
    assert parts["solosim"] == 0.0 and parts["club"] == 0.0  # both vanish on one item


def test_training_learns():
    model, data = make()
    train(model, data, epochs=8)
    # clustered toy data: 15 of 60 items are relevant; random top-10 would recall ~1/6
    assert recall_at_10(model, data) > 0.4
