"""k-core and split invariants, on the real dumps and on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sea.data.amazon import read_reviews
from sea.data.graph import EmptyGraphError, dedupe, k_core, reindex
from sea.data.split import split

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "reviews_Sample_5.json.gz"


@pytest.fixture(scope="module")
def sample_core() -> pd.DataFrame:
    core, _, _ = reindex(k_core(dedupe(read_reviews(SAMPLE)), 5))
    return core


@pytest.fixture(
    params=[
        "2014/digital_music/reviews_Digital_Music_5.head.json.gz",
        "2018/gift_cards/Gift_Cards_5.json.gz",
        "2018/magazine_subscriptions/Magazine_Subscriptions.csv",
    ]
)
def real_reviews(request, amazon_real) -> pd.DataFrame:
    return read_reviews(amazon_real / request.param)


def test_dedupe_keeps_the_earliest_review():
    df = pd.DataFrame(
        {"user": ["a", "a", "b"], "item": ["x", "x", "x"], "rating": [1.0, 5.0, 3.0], "timestamp": [20, 10, 5]}
    )
    out = dedupe(df)
    assert len(out) == 2
    assert out.loc[out["user"] == "a", "rating"].item() == 5.0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_k_core_invariants_on_real_dumps(real_reviews, k):
    unique = dedupe(real_reviews)
    core = k_core(unique, k)
    assert core["user"].value_counts().min() >= k
    assert core["item"].value_counts().min() >= k
    again = k_core(core, k)
    assert len(again) == len(core)  # a fixed point
    # maximal: every dropped pair touches a user or item that could not reach degree k
    assert len(core) <= len(unique)


def test_k_core_that_empties_raises():
    df = pd.DataFrame({"user": ["a", "b", "c"], "item": ["x", "y", "z"], "rating": 1.0, "timestamp": 0})
    with pytest.raises(EmptyGraphError, match="5-core"):
        k_core(df, 5)


def test_reindex_is_dense_and_sorted(sample_core):
    assert sample_core["user"].dtype == "int32" and sample_core["item"].dtype == "int32"
    assert sample_core["user"].nunique() == sample_core["user"].max() + 1
    assert sample_core["item"].nunique() == sample_core["item"].max() + 1


@pytest.mark.parametrize("method", ["mmrec", "temporal", "leave_one_out"])
def test_split_invariants(sample_core, method):
    out = split(sample_core, method, seed=7)
    assert len(out) == len(sample_core)
    train_users = set(out.loc[out["split"] == "train", "user"])
    held = out[out["split"] != "train"]
    assert set(held["user"]) <= train_users  # every valid/test user is in train
    assert not out.duplicated(["user", "item"]).any()


@pytest.mark.parametrize("method", ["mmrec", "temporal", "leave_one_out"])
def test_same_seed_same_split_regardless_of_row_order(sample_core, method):
    a = split(sample_core, method, seed=3)
    shuffled = sample_core.sample(frac=1.0, random_state=1)
    b = split(shuffled, method, seed=3)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_mmrec_seed_changes_the_split(sample_core):
    a = split(sample_core, "mmrec", seed=1)
    b = split(sample_core, "mmrec", seed=2)
    sa = a.set_index(["user", "item"])["split"].astype(str)
    sb = b.set_index(["user", "item"])["split"].astype(str).reindex(sa.index)
    assert (sa != sb).any()


def test_mmrec_counts_follow_the_rule(sample_core):
    out = split(sample_core, "mmrec", seed=999)
    counts = out.groupby("user")["split"].value_counts().unstack(fill_value=0)
    n = counts.sum(axis=1)
    rest = np.where(n < 10, 2, np.floor(0.2 * n))
    assert (counts["train"] == n - rest).all()
    assert (counts["valid"] == rest // 2).all()
    assert (counts["test"] == rest - rest // 2).all()
    assert (n >= 10).any() and (n < 10).any()  # both branches exercised


def test_temporal_and_leave_one_out_hold_out_the_latest(sample_core):
    for method in ("temporal", "leave_one_out"):
        out = split(sample_core, method, seed=0)
        last_train = out[out["split"] == "train"].groupby("user")["timestamp"].max()
        first_held = out[out["split"] != "train"].groupby("user")["timestamp"].min()
        assert (first_held >= last_train.reindex(first_held.index)).all()
    loo = split(sample_core, "leave_one_out", seed=0)
    assert (loo[loo["split"] == "test"].groupby("user").size() == 1).all()
