"""The per-modality towers DRAGON and DualGNN share (sea/models/towers.py): their penalty
and their loss against MMRec's, on each model built from the hand graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import test_model_dragon
import test_model_dualgnn
import torch
from test_model_dragon import hand_data

from sea.batch import Batch
from sea.losses import bpr_loss

BUILDERS = {"dragon": test_model_dragon.build, "dualgnn": test_model_dualgnn.build}
BUILDS = list(BUILDERS.values())


@pytest.mark.parametrize("build", BUILDS, ids=list(BUILDERS))
def test_reg_is_the_mean_square_of_the_batch_preferences_and_of_the_fusion_weights(build):
    data = hand_data()
    model = build(data, reg_weight=0.3)
    batch = Batch(torch.tensor([0, 0, 3]), torch.tensor([1, 2, 5]), torch.tensor([[4], [5], [0]]))
    emb = model(data)
    terms = model.extra_losses(emb, batch)
    p = {m: model.preference[m].detach().numpy()[[0, 0, 3]] for m in ("image", "text")}
    expected = np.mean(p["image"] ** 2) + np.mean(p["text"] ** 2) + np.mean(model.fusion.detach().numpy() ** 2)
    assert set(terms) == {"reg"}
    assert terms["reg"].value.item() == pytest.approx(expected, rel=1e-6)
    assert terms["reg"].weight == pytest.approx(0.3 * math.log(2))
    assert build(data, reg_weight=0.0).extra_losses(emb, batch) == {}


@pytest.mark.parametrize("build", BUILDS, ids=list(BUILDERS))
def test_total_loss_is_mmrecs_times_ln2(build):
    """MMRec: −mean log₂σ(s⁺ − s⁻) + λ·reg. Here: BPR in nats + λ·ln2·reg = ln 2 × MMRec's."""
    data = hand_data()
    model = build(data, reg_weight=0.05)
    batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 3, 4, 5]), torch.tensor([[5], [4], [0], [1]]))
    emb = model(data)
    u, pos, neg = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]]
    term = model.extra_losses(emb, batch)["reg"]
    ours = bpr_loss(u, pos, emb.item[batch.neg]) + term.weight * term.value
    mmrec = -torch.log2(torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean() + 0.05 * term.value
    assert ours.item() == pytest.approx(math.log(2) * mmrec.item(), rel=1e-6)
