"""Checks that several model test files share, written once.

Each one takes the model under test and the test file's own hand-sized data; what the model
should compute is still written out in each test file (``want``, the plain backbone), so
these helpers only compare.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_sea import make_setup, recall_at_10

from sea.batch import Batch
from sea.losses import bpr_loss
from sea.models.base import GraphData, Recommender
from sea.models.separation import Features
from sea.train import fit


def edge_batch(data: GraphData, negatives: int) -> Batch:
    """Every training edge once, with ``negatives`` seeded random items each."""
    g = torch.Generator().manual_seed(1)
    neg = torch.randint(data.n_items, (len(data.train_users), negatives), generator=g)
    return Batch(data.train_users, data.train_items, neg)


def with_features(data: GraphData, features: dict[str, torch.Tensor]) -> GraphData:
    """``data``'s graph with other item features."""
    return dataclasses.replace(data, features=features)


def assert_one_modality_is_its_own_vectors(model: Recommender, data: GraphData) -> None:
    """A multimodal model built on one modality has no fusion and returns that modality's
    vectors (``model.modality_vectors``) as its user and item vectors."""
    (m,) = data.features
    assert model.fusion is None and model.modalities == [m]
    with torch.no_grad():
        emb = model(data)
        h = model.modality_vectors(data, Features(data.features), m)
    torch.testing.assert_close(emb.user, h[: data.n_users])
    torch.testing.assert_close(emb.item, h[data.n_users :])


def assert_terms_match(model: Recommender, terms: dict, want: dict[str, torch.Tensor], *, rtol: float = 1e-5) -> None:
    """The model's loss terms equal ``want`` (computed by the test) by name, in value and in
    their weighted sum's gradient with respect to every parameter (each must get one)."""
    for k in want:
        assert terms[k].value.item() == pytest.approx(want[k].item(), rel=1e-5, abs=1e-6), k
    params = list(model.parameters())
    got = torch.autograd.grad(
        sum(t.weight * t.value for t in terms.values()), params, allow_unused=True, retain_graph=True
    )
    expected = torch.autograd.grad(sum(terms[k].weight * want[k] for k in want), params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), got, expected, strict=True):
        assert a is not None and b is not None and torch.allclose(a, b, rtol=rtol, atol=1e-6), name


def record_targets(model: Recommender) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap ``model.targets`` (a teacher's dropped-out targets) to keep its (input, output)
    pairs; the list fills as the model computes."""
    seen, original = [], model.targets

    def targets(x):
        y = original(x)
        seen.append((x.detach().clone(), y))
        return y

    model.targets = targets
    return seen


def assert_seeded_dropout(targets, rate: float) -> None:
    """``targets(x)`` drops coordinates at ``rate``, the same under the same torch seed and
    differently on the next call."""
    x = torch.randn(400, 50) + 5.0
    torch.manual_seed(1)
    a = targets(x)
    torch.manual_seed(1)
    b = targets(x)
    c = targets(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a == 0).float().mean().item() - rate) < 0.02


def assert_training_lowers_loss(model: Recommender, data: GraphData, batch: Batch) -> None:
    """Ten epochs of three full-batch Adam steps on BPR plus the model's own terms take the
    loss (in eval mode) below 0.8 of where it started."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def loss() -> torch.Tensor:
        emb = model(data)
        terms = model.extra_losses(emb, batch)
        return bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]) + sum(
            t.weight * t.value for t in terms.values()
        )

    model.eval()
    with torch.no_grad():
        before = loss().item()
    model.train()
    g = torch.Generator().manual_seed(0)
    for epoch in range(1, 11):
        model.on_epoch_start(epoch, g)
        for _ in range(3):
            opt.zero_grad()
            loss().backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        assert loss().item() < 0.8 * before


def assert_sea_reads_its_splits(plain: Recommender, sea: Recommender, data: GraphData) -> None:
    """A backbone with SEA's separation (``separation="sea"``) starts from the plain
    backbone's weights and equals the plain backbone reading each modality's split (its
    linear layer applied to the features) as that modality's features."""
    for key, p in plain.named_parameters():
        assert torch.equal(p, sea.get_parameter(key)), key
    with torch.no_grad():
        emb = sea(data)
        split = {
            m: x @ sea.separation.split[m].weight.T + sea.separation.split[m].bias for m, x in data.features.items()
        }
        expected = plain(with_features(data, split))
    torch.testing.assert_close(emb.user, expected.user)
    torch.testing.assert_close(emb.item, expected.item)
    assert "split" in emb.extras and plain(data).extras == {}


def assert_fit_learns(
    name: str, model: Recommender, data: GraphData, *, epochs: int = 6, loss_ratio: float = 0.7, **train
) -> None:
    """The trainer (``fit``, seed 5) on the toy data for ``epochs`` epochs takes the epoch
    loss below ``loss_ratio`` of the first epoch's, and recall@10 above 0.4 (random top-10
    recalls about 1/6). ``train``: more ``[train]`` params."""
    setup = make_setup(name, modalities=list(data.features), train={"max_epochs": epochs, "patience": epochs, **train})
    result = fit(model, data, setup, 5, log=lambda s: None, progress=False)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < loss_ratio * losses[0]
    assert recall_at_10(model, data) > 0.4
