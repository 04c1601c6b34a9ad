"""Mirror Gradient (Zhong et al., WWW 2024) as a training option of any model: every
``mirror_interval``-th batch takes a step on alpha1 * L(theta), then one on -alpha2 * L at
the weights the first step reached; checked against that definition written out here with
the models' own forward, terms and Adam, for LightGCN, FREEDOM and SEA."""

from __future__ import annotations

import copy

import pytest
import torch
from test_siblings import random_batch, toy_graph

from sea.batch import Batch
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, adam
from sea.setup import TrainingSetup
from sea.train import build_model, fit, mirror_step, seed_everything

MODELS = {
    "lightgcn": {"embedding_dim": 8, "layers": 2},
    "freedom": {"embedding_dim": 8, "knn_k": 3},
    "sea": {"embedding_dim": 8, "mlp_hidden_dim": 16, "knn_k": 3, "head_dim": 4},
}


def setup_for(name: str, **train) -> TrainingSetup:
    return TrainingSetup.from_params(
        {
            "model": {"name": name},
            name: MODELS[name],
            "loss": {"kind": "bpr"},
            "club": {"steps": 2, "hidden_dim": 4},
            "train": {"lr": 0.01, "batch_size": 32, "max_epochs": 1, "patience": 5, "mirror_gradient": True} | train,
            "eval": {"topk": [5], "select": "recall@5"},
        }
    )


def objective(model, data: GraphData, batch: Batch) -> torch.Tensor:
    """BPR over the batch's negatives plus the model's weighted terms, after its separately
    fitted parts took their step (the trainer's order), written out here."""
    model.train()
    emb = model(data)
    model.auxiliary_step(emb, batch)
    total = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg])
    for term in model.extra_losses(emb, batch).values():
        total = total + term.weight * term.value
    return total


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("alphas", [(1.0, 0.1), (0.5, 0.3)])
def test_mirror_step_is_a_scaled_step_then_a_negated_one(name, alphas):
    data = toy_graph()
    setup = setup_for(name)
    seed_everything(0)
    model = build_model(data, setup)
    model.on_epoch_start(1, torch.Generator().manual_seed(0))
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    batch = random_batch(data)
    opt, twin_opt = adam(model.main_parameters(), 0.01), adam(twin.main_parameters(), 0.01)

    torch.manual_seed(5)
    mirror_step(model, opt, data, batch, setup.make_ranking_loss(data), alphas)

    torch.manual_seed(5)  # the same draws (SEA's estimator batches) in the same order
    for weight in (alphas[0], -alphas[1]):
        twin_opt.zero_grad()
        (weight * objective(twin, data, batch)).backward()
        twin_opt.step()
    for (key, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, msg=key)
    unmoved = [k for (k, p), p0 in zip(model.named_parameters(), start.parameters()) if torch.equal(p, p0)]
    assert unmoved == []


def test_the_second_step_climbs_the_batch_loss():
    """With a large alpha2 the pair ends above the loss after its first step: the second
    step's sign is really reversed."""
    data = toy_graph()
    setup = setup_for("lightgcn")
    seed_everything(0)
    model = build_model(data, setup)
    batch = random_batch(data)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = copy.deepcopy(model)
    first_opt = torch.optim.SGD(first.parameters(), lr=0.5)
    ranking = setup.make_ranking_loss(data)
    mirror_step(model, opt, data, batch, ranking, (1.0, 1.0))
    first_opt.zero_grad()
    objective(first, data, batch).backward()
    first_opt.step()
    with torch.no_grad():
        assert objective(model, data, batch) > objective(first, data, batch)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("interval", [1, 3])
def test_fit_takes_the_pair_every_interval_th_batch(name, interval, monkeypatch):
    """An epoch of n batches takes n + ceil(n / interval) optimiser steps with Mirror
    Gradient, n without; Adam counts them."""
    data = toy_graph()
    n_batches = -(-len(data.train_users) // 32)
    steps = []
    original = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    # SEA's estimator steps (its own Adam, club.steps = 2) are counted too
    per_model_step = 3 if name == "sea" else 1
    for on in (True, False):
        steps.clear()
        setup = setup_for(name, mirror_gradient=on, mirror_interval=interval)
        seed_everything(0)
        fit(build_model(data, setup), data, setup, seed=1, log=lambda s: None, progress=False)
        expected = n_batches + (-(-n_batches // interval) if on else 0)
        assert len(steps) == expected * per_model_step, on


def test_mirror_params_are_checked_and_kept_out_of_an_ordinary_checkpoint():
    for values in ({"mirror_alpha1": 0.0}, {"mirror_alpha2": -0.1}, {"mirror_interval": 0}):
        with pytest.raises(ConfigError, match=r"params.yaml \[train\]: mirror_alpha1 must be > 0"):
            TrainingSetup.from_params({"model": {"name": "lightgcn"}, "train": values})
    plain = TrainingSetup.from_params({"model": {"name": "lightgcn"}}).to_dict()["train"]
    assert not any(k.startswith("mirror") for k in plain)
    on = setup_for("lightgcn", mirror_alpha2=0.2).to_dict()["train"]
    assert (on["mirror_gradient"], on["mirror_alpha2"], on["mirror_interval"]) == (True, 0.2, 3)
