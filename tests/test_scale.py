"""Training and evaluation at scale (docs/scale.md): the linear regime
(``train.steps_per_epoch``: S steps an epoch, each over 1/S of the training pairs) against
the exact one it leaves untouched when off, and the chunked full ranking (``eval.memory_mib``)
against the ranking of the whole score matrix at once."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_distributed import METRIC_TOLERANCE, params_for, trained, valid_metrics
from test_distributed import dataset as dataset  # noqa: F401,PLC0414  (the fixture, for the torchrun test)
from test_siblings import toy_graph

import sea.train
from sea import artifacts
from sea.errors import ConfigError
from sea.metrics import EvalConfig, evaluate_ranking, per_user_metrics, to_csr, top_k
from sea.setup import TrainConfig, TrainingSetup
from sea.train import build_model, fit, seed_everything

MODELS = {
    "lightgcn": {"embedding_dim": 8, "layers": 2},
    "freedom": {"embedding_dim": 8, "knn_k": 3},
    "sea": {"embedding_dim": 8, "mlp_hidden_dim": 16, "knn_k": 3, "head_dim": 4},
}


def setup_for(name: str = "lightgcn", **train) -> TrainingSetup:
    return TrainingSetup.from_params(
        {
            "model": {"name": name},
            name: MODELS[name],
            "loss": {"kind": "bpr"},
            "club": {"steps": 2, "hidden_dim": 4},
            "train": {"lr": 0.01, "batch_size": 32, "max_epochs": 3, "patience": 5} | train,
            "eval": {"topk": [5], "select": "recall@5"},
        }
    )


def trained_model(data, setup, seed=3):
    seed_everything(0)
    model = build_model(data, setup)
    result = fit(model, data, setup, seed=seed, log=lambda _: None, progress=False)
    return result, model


# ------------------------------------------------------------------ the epoch's batches


@pytest.mark.parametrize("n, batch_size", [(300, 64), (256, 64), (5, 64), (1, 1)])
def test_the_exact_regime_cuts_batches_of_batch_size(n, batch_size):
    bounds = TrainConfig(batch_size=batch_size).batch_bounds(n)
    tail = [n % batch_size] if n % batch_size else []
    assert [hi - lo for lo, hi in bounds] == [batch_size] * (n // batch_size) + tail
    assert [lo for lo, _ in bounds] == list(range(0, n, batch_size))


@pytest.mark.parametrize("n, steps", [(300, 3), (300, 7), (10, 6), (10, 10), (1_000_003, 59)])
def test_the_linear_regime_takes_steps_per_epoch_batches_of_a_share_each(n, steps):
    bounds = TrainConfig(steps_per_epoch=steps, batch_size=7).batch_bounds(n)
    sizes = [hi - lo for lo, hi in bounds]
    assert len(bounds) == steps and sum(sizes) == n
    assert bounds[0][0] == 0 and all(bounds[i][1] == bounds[i + 1][0] for i in range(steps - 1))
    assert set(sizes) <= {n // steps, math.ceil(n / steps)} and sorted(sizes, reverse=True) == sizes


def test_fit_trains_on_those_batches_in_the_seeded_order(monkeypatch):
    """The users of each step of epoch 1 are the slices of the first permutation of the
    seeded generator (LightGCN draws nothing else before it)."""
    data = toy_graph()
    n = len(data.train_users)
    seen = []
    original = sea.train.train_step

    def recording(model, opt, data, batch, *args):
        seen.append(batch.users.clone())
        return original(model, opt, data, batch, *args)

    monkeypatch.setattr(sea.train, "train_step", recording)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for steps, expected in ((None, range(0, n, 32)), (3, None)):
        seen.clear()
        trained_model(data, setup_for(steps_per_epoch=steps, max_epochs=1))
        if expected is not None:
            slices = [order[b : b + 32] for b in expected]
        else:
            slices = torch.tensor_split(order, 3)  # sizes differing by one at most, the longer first
        assert len(seen) == len(slices)
        for got, idx in zip(seen, slices, strict=True):
            assert torch.equal(got, data.train_users[idx])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_linear_regime_is_the_exact_one_where_their_batches_coincide(name):
    data = toy_graph()
    n = len(data.train_users)
    steps = next(s for s in range(2, n) if n % s == 0)
    exact, linear = setup_for(name, batch_size=n // steps), setup_for(name, steps_per_epoch=steps)
    assert exact.train.batch_bounds(n) == linear.train.batch_bounds(n)
    (a, model_a), (b, model_b) = trained_model(data, exact), trained_model(data, linear)
    assert a.history == b.history
    assert all(torch.equal(v, model_b.state_dict()[k]) for k, v in model_a.state_dict().items())


def test_the_linear_regime_follows_the_seed():
    data = toy_graph()
    runs = [trained_model(data, setup_for("sea", steps_per_epoch=2), seed=s)[0].history for s in (4, 4, 5)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_mirror_gradient_pairs_every_interval_th_step_of_the_linear_regime(monkeypatch):
    steps, original = [], torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    setup = setup_for(steps_per_epoch=5, max_epochs=1, mirror_gradient=True, mirror_interval=3)
    trained_model(toy_graph(), setup)
    assert len(steps) == 5 + 2  # steps 0 and 3 take the pair


@pytest.mark.parametrize("value", [0, -2, 1.5, "many", True])
def test_a_bad_steps_per_epoch_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^(params.yaml \[train\]: |train\.)steps_per_epoch") as e:
        TrainingSetup.from_params({"model": {"name": "lightgcn"}, "train": {"steps_per_epoch": value}})
    assert "\n" not in str(e.value)


def test_more_steps_than_training_pairs_is_one_line():
    data = toy_graph()
    n = len(data.train_users)
    with pytest.raises(ConfigError, match=rf"^params.yaml \[train\]: steps_per_epoch {n + 1} is more than the {n} "):
        trained_model(data, setup_for(steps_per_epoch=n + 1))


def test_both_params_stay_out_of_the_checkpoint_when_off():
    params = TrainingSetup.from_params({"model": {"name": "lightgcn"}}).to_dict()
    assert "steps_per_epoch" not in params["train"] and "memory_mib" not in params["eval"]
    on = TrainingSetup.from_params(
        {"model": {"name": "lightgcn"}, "train": {"steps_per_epoch": 4}, "eval": {"memory_mib": 8}}
    ).to_dict()
    assert on["train"]["steps_per_epoch"] == 4 and on["eval"]["memory_mib"] == 8
    assert TrainingSetup.from_params(on).to_dict() == on


# ------------------------------------------------------------------ chunked ranking


def random_ranking(n_users=37, n_items=53, dim=6, seed=0):
    """Random embeddings, each user with a few training and held-out items."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
    pairs = pd.DataFrame({"user": rng.integers(0, n_users, 400), "item": rng.integers(0, n_items, 400)})
    pairs = pairs.drop_duplicates()
    train, held = pairs.iloc[: len(pairs) // 2], pairs.iloc[len(pairs) // 2 :]
    exclude = to_csr(train["user"].to_numpy(), train["item"].to_numpy(), n_users)
    truth = to_csr(held["user"].to_numpy(), held["item"].to_numpy(), n_users)
    u, v = torch.tensor(users, dtype=torch.float32), torch.tensor(items, dtype=torch.float32)
    return (lambda batch: u[batch] @ v.T), exclude, truth, train, held, (u @ v.T)


def test_chunked_top_k_is_the_whole_matrixs_ranking():
    score, exclude, _, train, _, full = random_ranking()
    n_users, n_items = full.shape
    masked = full.clone()
    masked[torch.tensor(train["user"].to_numpy()), torch.tensor(train["item"].to_numpy())] = -torch.inf
    expected = masked.argsort(dim=1, descending=True)[:, :10]
    for chunk in (1, 3, n_users, 4096):
        items, scores = top_k(score, exclude, np.arange(n_users), n_items, 10, chunk)
        assert torch.equal(items, expected), chunk
        # the product's kernel adds in an order that depends on the rows it is given (last bits only)
        torch.testing.assert_close(scores, masked.gather(1, expected), rtol=1e-5, atol=1e-5)


def test_chunked_metrics_equal_the_unchunked_ones_and_a_direct_count():
    score, exclude, truth, _, held, full = random_ranking(seed=1)
    n_users, n_items = full.shape
    whole = evaluate_ranking(score, exclude, truth, n_items, [5, 10], batch_size=n_users)
    for chunk in (1, 2, 5, EvalConfig(memory_mib=1).chunk(n_items)):
        assert evaluate_ranking(score, exclude, truth, n_items, [5, 10], batch_size=chunk) == whole
        users, values = per_user_metrics(score, exclude, truth, n_items, [5], batch_size=chunk)
        assert list(users) == sorted(held["user"].unique())
    top, _ = top_k(score, exclude, users, n_items, 10)
    liked = held.groupby("user")["item"].apply(set)
    recall = [len(set(top[r].tolist()) & liked[u]) / len(liked[u]) for r, u in enumerate(users)]
    assert whole["recall@10"] == pytest.approx(np.mean(recall), abs=1e-6)


def test_a_score_view_is_masked_in_a_copy():
    """The most-popular baseline scores with a view of one row: masking must not reach it."""
    _, exclude, _, _, _, full = random_ranking()
    pop = torch.arange(full.shape[1], dtype=torch.float32)
    before = pop.clone()
    top_k(lambda u: pop.expand(len(u), -1), exclude, np.arange(full.shape[0]), full.shape[1], 5, 4)
    assert torch.equal(pop, before)


@pytest.mark.parametrize(
    "memory_mib, batch_size, n_items, users",
    [(None, 4096, 10**6, 4096), (1024, 4096, 10**6, 268), (1, 4096, 1000, 262), (1, 100, 1000, 100), (1, 9, 10**9, 1)],
)
def test_memory_mib_bounds_the_users_scored_at_once(memory_mib, batch_size, n_items, users):
    cfg = EvalConfig(batch_size=batch_size, memory_mib=memory_mib)
    assert cfg.chunk(n_items) == users
    if memory_mib is not None and users > 1:
        assert users * n_items * 4 <= memory_mib * 2**20 < (users + 1) * n_items * 4 or users == batch_size


@pytest.mark.parametrize("value", [0, -1, 2.5, "lots"])
def test_a_bad_memory_mib_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^(params.yaml \[eval\]: |eval\.)memory_mib"):
        TrainingSetup.from_params({"model": {"name": "lightgcn"}, "eval": {"memory_mib": value}})


# ------------------------------------------------------------------ under torchrun


@pytest.mark.slow
def test_two_processes_match_one_in_the_linear_regime(dataset, tmp_path):  # noqa: F811
    """630 training pairs in 5 steps of 126: each rank takes 63 rows of every step."""
    runs = []
    for processes in (1, 2):
        params = params_for("lightgcn", processes)
        params["train"]["steps_per_epoch"] = 5
        runs.append(trained(dataset, tmp_path / str(processes), params))
    one, two = (valid_metrics(r) for r in runs)
    np.testing.assert_allclose(two.to_numpy(), one.to_numpy(), atol=METRIC_TOLERANCE)
    h1, h2 = (pd.read_csv(r / artifacts.HISTORY) for r in runs)
    np.testing.assert_allclose(h2["bpr"], h1["bpr"], rtol=1e-4)
