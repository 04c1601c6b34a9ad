"""The train and evaluate stages on the bundled sample (BPR-MF, two seeds, two epochs):
the layouts other code reads (checkpoint, recommendations, per-user metrics, metrics
files), and recommend() rebuilding the model from the checkpoint alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sea import artifacts
from sea.checkpoint import load_checkpoint
from sea.errors import DataError
from sea.recommend import recommend

ROOT = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (10, 20)]


def stage(name: str, cwd: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / f"{name}.py")], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """download, graph, train and evaluate on the sample in a fresh folder."""
    cwd = tmp_path_factory.mktemp("run")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"]["mirror"] = (ROOT / "data" / "sample").as_uri()  # the catalog's sample files, from here
    params["model"]["name"] = "bprmf"
    params["train"] |= {"seeds": [1, 2], "max_epochs": 2, "device": "cpu"}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("download", "graph", "train", "evaluate"):
        stage(name, cwd)
    return cwd


def test_users_table_maps_every_user_to_its_reviewer_id(run):
    users = pd.read_parquet(run / artifacts.USERS)
    inter = pd.read_parquet(run / artifacts.INTERACTIONS)
    assert list(users.columns) == ["user", "reviewer_id"] and users["user"].dtype == "int32"
    assert users["user"].tolist() == list(range(int(inter["user"].max()) + 1))
    assert users["reviewer_id"].is_unique and users["reviewer_id"].str.startswith("A").all()


def test_per_user_metrics_layout_and_means(run):
    per_user = pd.read_parquet(run / artifacts.PER_USER)
    assert list(per_user.columns) == ["model", "seed", "split", "user", *METRIC_COLUMNS]
    assert per_user["seed"].dtype == "int64" and per_user["user"].dtype == "int32"
    assert all(per_user[c].dtype == "float64" for c in METRIC_COLUMNS)
    groups = per_user.groupby(["model", "seed", "split"]).size()
    assert sorted(groups.index) == sorted(
        (m, s, sp) for m, s in [("bprmf", 1), ("bprmf", 2), ("most_popular", -1)] for sp in ("valid", "test")
    )
    metrics = json.loads((run / artifacts.METRICS).read_text())
    assert list(metrics) == ["valid", "test"]
    assert all(list(metrics[s]) == ["recall@10", "recall@20", "ndcg@10", "ndcg@20"] for s in metrics)
    model = per_user[per_user["model"] == "bprmf"]
    for split in ("valid", "test"):
        rows = model[model["split"] == split]
        by_seed = rows.groupby("seed")["recall@20"].mean()
        assert metrics[split]["recall@20"] == pytest.approx(by_seed.mean())
    detail = json.loads((run / artifacts.METRICS_DETAIL).read_text())
    assert detail["model"] == "bprmf" and set(detail["seeds"]) == {"1", "2"}
    assert detail["std"]["test"]["recall@20"] == pytest.approx(
        np.std([detail["seeds"][s]["test"]["recall@20"] for s in ("1", "2")], ddof=1)
    )
    popular = per_user[(per_user["model"] == "most_popular") & (per_user["split"] == "test")]
    assert detail["most_popular"]["test"]["ndcg@10"] == pytest.approx(popular["ndcg@10"].mean())


def test_no_timings_in_hashed_or_committed_outputs(run):
    history = pd.read_csv(run / artifacts.HISTORY)
    assert list(history.columns[:3]) == ["seed", "epoch", "best_epoch"]
    assert history.groupby("seed").size().to_dict() == {1: 2, 2: 2}
    for path in (
        artifacts.HISTORY,
        artifacts.TRAIN_SUMMARY,
        artifacts.METRICS,
        artifacts.METRICS_DETAIL,
        artifacts.REPORT_MD,
    ):
        text = (run / path).read_text().lower()
        assert "second" not in text and " s/" not in text, path
    timings = json.loads((run / artifacts.TRAIN_TIMINGS).read_text())
    assert set(timings["seeds"]) == {"1", "2"} and timings["seeds"]["1"]["seconds"] > 0
    report = (run / artifacts.REPORT_MD).read_text()
    assert "# bprmf on `sample`" in report and "most popular" in report and "reg_weight" in report


def test_recommendations_of_every_run(run):
    recs = pd.read_parquet(run / artifacts.RECOMMENDATIONS)
    assert list(recs.columns) == ["seed", "user", "reviewer_id", "rank", "item", "asin", "score"]
    n_users = len(pd.read_parquet(run / artifacts.USERS))
    assert len(recs) == 2 * n_users * 20  # seeds x users x max(eval.topk)
    inter = pd.read_parquet(run / artifacts.INTERACTIONS)
    train = inter[inter["split"] == "train"]
    assert recs.merge(train, on=["user", "item"]).empty  # never an item the user trained on
    items = pd.read_parquet(run / artifacts.ITEMS)
    assert (items.set_index("item").loc[recs["item"], "asin"].to_numpy() == recs["asin"].to_numpy()).all()
    first = recs[(recs["seed"] == 1) & (recs["user"] == 0)]
    assert first["rank"].tolist() == list(range(1, 21)) and first["score"].is_monotonic_decreasing


def test_recommend_rebuilds_the_model_from_the_checkpoint(run):
    users = pd.read_parquet(run / artifacts.USERS)
    ids = users["reviewer_id"].iloc[[5, 0]].tolist()
    out = recommend(run / artifacts.MODEL, ids, k=5, seed=2, root=run)
    assert list(out.columns) == ["reviewer_id", "user", "rank", "item", "asin", "score"]
    assert out["reviewer_id"].tolist() == [ids[0]] * 5 + [ids[1]] * 5
    stored = pd.read_parquet(run / artifacts.RECOMMENDATIONS)
    stored = stored[(stored["seed"] == 2) & (stored["rank"] <= 5)].set_index(["user", "rank"])
    mine = out.set_index(["user", "rank"])
    assert (stored.loc[mine.index, "item"] == mine["item"]).all()
    np.testing.assert_allclose(stored.loc[mine.index, "score"], mine["score"], rtol=1e-6)
    # default seed: the first trained
    assert recommend(run / artifacts.MODEL, ids[:1], k=3, root=run)["item"].tolist() == stored_items(
        run, seed=1, user=int(users["user"].iloc[5]), k=3
    )


def stored_items(run: Path, seed: int, user: int, k: int) -> list[int]:
    recs = pd.read_parquet(run / artifacts.RECOMMENDATIONS)
    return recs[(recs["seed"] == seed) & (recs["user"] == user) & (recs["rank"] <= k)]["item"].tolist()


def test_recommend_refuses_unknown_users_and_other_data(run, tmp_path):
    with pytest.raises(DataError, match="unknown reviewer id.*'nobody'"):
        recommend(run / artifacts.MODEL, ["nobody"], root=run)
    with pytest.raises(DataError, match="no seed 7"):
        recommend(run / artifacts.MODEL, None, seed=7, root=run)
    # the same checkpoint against a graph with one user fewer
    other = tmp_path / "other"
    (other / artifacts.PROCESSED).mkdir(parents=True)
    inter = pd.read_parquet(run / artifacts.INTERACTIONS)
    inter[inter["user"] < inter["user"].max()].to_parquet(other / artifacts.INTERACTIONS)
    for path in (artifacts.ITEMS, artifacts.USERS):
        (other / path).write_bytes((run / path).read_bytes())
    with pytest.raises(DataError, match="trained on"):
        recommend(run / artifacts.MODEL, None, root=other)


def test_checkpoint_names_the_model_and_its_params(run):
    ckpt = load_checkpoint(run / artifacts.MODEL)
    assert ckpt.model_name == "bprmf" and ckpt.params["bprmf"]["embedding_dim"] == 64
    assert [r.seed for r in ckpt.runs] == [1, 2] and ckpt.feature_dims == {}
    assert set(ckpt.run(1).state_dict) == {"user_emb.weight", "item_emb.weight"}
    assert not torch.equal(ckpt.run(1).state_dict["user_emb.weight"], ckpt.run(2).state_dict["user_emb.weight"])
