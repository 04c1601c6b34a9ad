"""Ranking metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sea.metrics import evaluate_ranking, metrics_from_hits, per_user_metrics, to_csr, top_k


def test_metrics_from_hits_hand_computed():
    # user 0: relevant {a, b, c}; ranked list hits at ranks 1 and 3 (of K = 4)
    # user 1: relevant {d}; hit at rank 2
    hits = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    n_rel = torch.tensor([3, 1])
    m = metrics_from_hits(hits, n_rel, [2, 4])
    assert m["recall@2"].tolist() == pytest.approx([1 / 3, 1.0])
    assert m["recall@4"].tolist() == pytest.approx([2 / 3, 1.0])
    assert m["precision@4"].tolist() == pytest.approx([2 / 4, 1 / 4])
    assert m["hit@2"].tolist() == [1.0, 1.0]
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"][0].item() == pytest.approx(dcg0 / idcg0)
    assert m["ndcg@4"][1].item() == pytest.approx((1 / math.log2(3)) / 1.0)
    # AP@4 user 0: (1/1 + 2/3) / min(3, 4); user 1: (1/2) / 1
    assert m["map@4"].tolist() == pytest.approx([(1 + 2 / 3) / 3, 0.5])
    # AP@2 user 0: (1/1) / min(3, 2)
    assert m["map@2"][0].item() == pytest.approx(0.5)


def test_evaluate_ranking_masks_training_items_and_averages_users():
    n_items = 5
    scores = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # user 0: train {0}; test {2} -> ranked 1,2,3.. -> hit at rank 2
            [1.0, 2.0, 3.0, 4.0, 5.0],  # user 1: train {4}; test {0} -> ranked 3,2,1,0 -> rank 4
            [0.0, 0.0, 0.0, 0.0, 0.0],  # user 2: no test item -> not averaged
        ]
    )
    train = to_csr(np.array([0, 1, 2]), np.array([0, 4, 1]), 3)
    test = to_csr(np.array([0, 1]), np.array([2, 0]), 3)
    out = evaluate_ranking(lambda u: scores[u], train, test, n_items, [1, 2, 4], batch_size=2)
    assert out["users"] == 2
    assert out["recall@1"] == pytest.approx(0.0)
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)


def test_to_csr_groups_items_per_user():
    indptr, indices = to_csr(np.array([2, 0, 2, 0]), np.array([5, 1, 3, 0]), 4)
    assert indptr.tolist() == [0, 2, 2, 4, 4]
    assert indices.tolist() == [0, 1, 3, 5]


def test_per_user_metrics_are_what_evaluate_ranking_averages():
    scores = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # user 0: train {0}; test {2, 4} -> ranked 1, 2, 3, 4: hits at ranks 2 and 4
            [0.0, 0.0, 0.0, 0.0, 0.0],  # user 1: no test item -> no row
            [1.0, 2.0, 3.0, 4.0, 5.0],  # user 2: train {4}; test {0} -> ranked 3, 2, 1, 0: hit at rank 4
        ]
    )
    train = to_csr(np.array([0, 1, 2]), np.array([0, 1, 4]), 3)
    test = to_csr(np.array([0, 0, 2]), np.array([2, 4, 0]), 3)
    users, values = per_user_metrics(lambda u: scores[u], train, test, 5, [2, 4], batch_size=1)
    assert users.tolist() == [0, 2]
    assert list(values) == [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (2, 4)]
    assert values["recall@2"].tolist() == pytest.approx([0.5, 0.0])
    assert values["recall@4"].tolist() == pytest.approx([1.0, 1.0])
    assert values["ndcg@4"].tolist() == pytest.approx(
        [(1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)), 1 / math.log2(5)]
    )
    means = evaluate_ranking(lambda u: scores[u], train, test, 5, [2, 4], batch_size=2)
    assert means["users"] == 2
    assert all(means[k] == pytest.approx(v.mean()) for k, v in values.items())


def test_top_k_masks_excluded_items_and_puts_them_last():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    exclude = to_csr(np.array([0, 1, 1, 1]), np.array([1, 0, 1, 2]), 2)
    items, values = top_k(lambda u: scores[u], exclude, np.array([1, 0]), 4, k=3, batch_size=1)
    assert items[1].tolist() == [3, 2, 0]  # user 0 without its item 1
    assert items[0, 0].item() == 3 and values[0, 1:].tolist() == [-math.inf, -math.inf]  # user 1 has one item left
