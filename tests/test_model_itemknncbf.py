"""ItemKNNCBF against its definition on a hand-sized graph (plain numpy), through the real
trainer (evaluated once), a checkpoint with an empty state, the evaluate stage's report for
a model without training, its config errors and its params.yaml sections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sea.checkpoint import Checkpoint, Run, load_checkpoint, save_checkpoint
from sea.config import load_params
from sea.errors import ConfigError
from sea.evaluation import embed, evaluate
from sea.models.base import GraphData, model_class
from sea.models.itemknncbf import ItemKNNCBF, ItemKNNCBFConfig, shrunk_cosine_knn
from sea.recommend import load_model
from sea.report import markdown_report
from sea.runtime import set_threads
from sea.setup import TrainingSetup
from sea.train import build_model, fit

# 4 users, 6 items; (0, 1) twice: the history is binary. User 3 has no training item.
TRAIN = [(0, 0), (0, 1), (0, 1), (1, 2), (1, 3), (1, 5), (2, 0), (2, 4)]
HELD_OUT = [(0, 2, "valid"), (1, 0, "valid"), (2, 1, "valid"), (3, 3, "valid"), (0, 3, "test"), (2, 5, "test")]


def features() -> dict[str, np.ndarray]:
    """Two modalities of different scales, negative values, and a zero image row (item 4)."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(6, 4)) * 20.0
    image[4] = 0.0
    return {"image": image.astype(np.float32), "text": rng.normal(size=(6, 3)).astype(np.float32)}


@pytest.fixture
def data() -> GraphData:
    rows = [(u, i, "train") for u, i in TRAIN] + HELD_OUT
    return GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), 6, features())


def expected_neighbours(feats: dict[str, np.ndarray], k: int, shrink: float, combine: str) -> np.ndarray:
    """Dense N: N[j, i] = s(j, i) for the k largest s(j, ·), s(j, j) = 0 first, zeros dropped."""
    scaled = [x.astype(np.float64) / np.linalg.norm(x, axis=1).mean() for x in feats.values()]
    blocks = [np.concatenate(scaled, axis=1)] if combine == "concat" else scaled
    sim = 0.0
    for x in blocks:
        norm = np.linalg.norm(x, axis=1)
        sim = sim + (x @ x.T) / (np.outer(norm, norm) + shrink + 1e-6)
    np.fill_diagonal(sim, 0.0)
    out = np.zeros_like(sim)
    for j in range(len(sim)):
        top = np.argsort(-sim[j], kind="stable")[:k]
        out[j, top] = sim[j, top]
    return out


@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("k, shrink", [(2, 0.5), (3, 0.0), (10, 4.0)])
def test_neighbours_are_the_shrunk_cosine_top_k(data, combine, k, shrink):
    model = ItemKNNCBF.build(data, ItemKNNCBFConfig(knn_k=k, shrink=shrink, combine=combine), ["image", "text"])
    got = model.neighbours.matrix.to_dense().numpy()
    want = expected_neighbours(features(), k, shrink, combine)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert (got != 0).sum(1).max() <= min(k, 5) and np.all(np.diag(got) == 0)
    if combine == "sum":  # item 4 has no image: its row and column hold the text term alone
        assert np.count_nonzero(got[4]) > 0


def test_one_modality_reads_only_that_modality(data):
    model = ItemKNNCBF.build(data, ItemKNNCBFConfig(knn_k=3, shrink=1.0), ["text"])
    want = expected_neighbours({"text": features()["text"]}, 3, 1.0, "concat")
    np.testing.assert_allclose(model.neighbours.matrix.to_dense().numpy(), want, rtol=1e-5, atol=1e-7)


def test_chunks_give_the_same_lists():
    """The same neighbours whatever the chunk; the values to float rounding (a product of a
    few rows takes another BLAS kernel than one of many). A zero row (item 3) has only zero
    similarities: none is kept."""
    x = torch.randn(37, 8, generator=torch.Generator().manual_seed(0))
    x[3] = 0.0
    whole = shrunk_cosine_knn([x], 5, 2.0)
    assert whole.crow_indices()[4] == whole.crow_indices()[3]
    assert whole.values().count_nonzero() == whole.values().numel()
    for rows in (1, 4, 36):
        part = shrunk_cosine_knn([x], 5, 2.0, rows_per_chunk=rows)
        assert torch.equal(part.crow_indices(), whole.crow_indices())
        assert torch.equal(part.col_indices(), whole.col_indices())
        torch.testing.assert_close(part.values(), whole.values(), rtol=1e-6, atol=0.0)


def test_scores_sum_the_similarities_of_the_users_training_items(data):
    model = ItemKNNCBF.build(data, ItemKNNCBFConfig(knn_k=3, shrink=0.5), ["image", "text"])
    emb = embed(model, data)
    users = torch.tensor([3, 0, 2, 1])
    got = model.score(emb, users).numpy()
    n = expected_neighbours(features(), 3, 0.5, "concat")
    history = np.zeros((4, 6))
    for u, i in TRAIN:
        history[u, i] = 1.0  # (0, 1) twice counts once
    np.testing.assert_allclose(got, (history @ n.T)[users.numpy()], rtol=1e-5, atol=1e-7)
    assert got.shape == (4, 6) and np.all(got[0] == 0)  # user 3 has nothing to sum
    assert torch.equal(model.score(embed(model, data), users), model.score(emb, users))


def setup_for(**section) -> TrainingSetup:
    return TrainingSetup.from_params(
        {
            "model": {"name": "itemknncbf"},
            "itemknncbf": {"knn_k": 3} | section,
            "eval": {"topk": [2, 5], "select": "recall@5"},
            "train": {"max_epochs": 5},
        }
    )


def test_the_trainer_evaluates_it_once_and_its_state_is_empty(data):
    setup = setup_for()
    model = build_model(data, setup)
    assert list(model.parameters()) == [] and model.state_dict() == {}
    result = fit(model, data, setup, seed=1, log=lambda s: None, progress=False)
    assert len(result.history) == 1 and result.best_epoch == 0 and result.best_state == {}
    valid = evaluate(model, data, "valid", [2, 5])
    assert result.best_valid["recall@5"] == valid["recall@5"] == result.history[0]["valid_recall@5"]


def test_a_checkpoint_with_an_empty_state_rebuilds_the_same_scores(data, tmp_path):
    setup = setup_for(shrink=2.0, combine="sum")
    model = build_model(data, setup)
    users = torch.arange(4)
    path = tmp_path / "model.safetensors"
    save_checkpoint(
        path,
        Checkpoint(
            setup.to_dict(), data.n_users, data.n_items, {"image": 4, "text": 3}, [Run(5, 0, model.state_dict())]
        ),
    )
    loaded = load_model(load_checkpoint(path), data)
    assert torch.equal(loaded.score(embed(loaded, data), users), model.score(embed(model, data), users))


def test_the_report_of_a_model_without_training_names_no_optimiser_or_epochs():
    stats = {
        "dataset": "toy",
        "k_core": 5,
        "raw": {"reviews": 9, "users": 4, "items": 6},
        "deduplicated": {"duplicates_dropped": 1},
        "after_k_core": {"users": 4, "items": 6, "interactions": 8, "density": 0.3},
        "split": {"method": "mmrec", "seed": 1, "train": 8, "valid": 4, "test": 2},
        "items": {"with_metadata": 6, "with_text": 6, "with_image_url": 6},
    }
    metrics = {
        s: {"recall@5": 0.5, "ndcg@5": 0.4, "precision@5": 0.1, "map@5": 0.2, "hit@5": 0.5} for s in ("valid", "test")
    }
    detail = {"model": "itemknncbf", "seeds": {"1": {}}, "mean": metrics, "std": metrics, "most_popular": metrics}
    setup = setup_for().to_dict()
    train = {"parameters": 0, "seeds": {"1": {"best_epoch": 0, "epochs_run": 1}}}
    kw = dict(stats=stats, feature_info={}, train=train, detail=detail, setup=setup, ks=[5], ranking_loss="bpr")
    untrained, trained = markdown_report(**kw, trainable=False), markdown_report(**kw)
    assert "no training" in untrained and "Adam" not in untrained and "best epoch" not in untrained
    assert "Adam" in trained and "best epoch 0 of 1" in trained and "no training" not in trained


def test_scores_have_the_same_bytes_at_one_and_three_threads():
    rng = np.random.default_rng(1)
    rows = [(u, int(i), "train") for u in range(300) for i in rng.choice(700, 6, replace=False)]
    graph = GraphData.build(
        pd.DataFrame(rows + [(0, 0, "valid")], columns=["user", "item", "split"]),
        700,
        {"image": rng.normal(size=(700, 96)).astype(np.float32), "text": rng.normal(size=(700, 64)).astype(np.float32)},
    )
    old, out = torch.get_num_threads(), []
    try:
        for threads in (1, 3):
            set_threads(threads)
            model = ItemKNNCBF.build(graph, ItemKNNCBFConfig(knn_k=40, shrink=1.0))
            out.append(model.score(embed(model, graph), torch.arange(300)))
    finally:
        set_threads(old)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize(
    "values, field", [({"knn_k": 0}, "knn_k"), ({"shrink": -1.0}, "shrink"), ({"combine": "mean"}, "combine")]
)
def test_bad_params_are_one_line_errors_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=rf"^params\.yaml \[itemknncbf\]: {field} "):
        TrainingSetup.from_params({"model": {"name": "itemknncbf"}, "itemknncbf": values})


def test_registered_and_params_yaml_holds_the_defaults_and_a_small_grid():
    assert model_class("itemknncbf") is ItemKNNCBF and not ItemKNNCBF.trainable and ItemKNNCBF.uses_features
    params = load_params()
    assert ItemKNNCBFConfig.from_dict(params["itemknncbf"], "itemknncbf") == ItemKNNCBFConfig()
    assert (ItemKNNCBFConfig().knn_k, ItemKNNCBFConfig().shrink) == (50, 100.0)  # the reference's fit defaults
    space = params["tune"]["spaces"]["itemknncbf"]
    assert set(space) == {"knn_k", "shrink"} and len(space["knn_k"]) * len(space["shrink"]) <= 12
