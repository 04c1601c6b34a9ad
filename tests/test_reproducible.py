"""The same params give the same bytes whatever the number of threads, with the portable
kernels (tests/conftest.py, as in every stage): every model, trained through the real
trainer at 1 and at 3 torch threads, ends with the same weights and the same history
(losses and validation metrics, bit for bit).

The graph is large enough that torch's own thread-dependent paths would show (reductions
of more than 32,768 values to one, batch norm over a thousand rows; see sea/ops.py):
tests/test_ops.py shows torch's versions differ at these sizes. That the bytes are also
the same on another CPU (an AMD EPYC without AVX-512, emulated) is
tests/test_cross_cpu.py; a fresh clone's whole pipeline, tests/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sea.models.base import GraphData
from sea.runtime import set_threads
from sea.setup import TrainingSetup
from sea.train import build_model, fit, seed_everything

N_USERS, N_ITEMS = 2500, 700


@pytest.fixture(scope="module")
def data() -> GraphData:
    """Users in 5 taste groups with 8 interactions each (6 train, 1 valid, 1 test), and
    image/text features that carry the groups."""
    rng = np.random.default_rng(0)
    group = np.arange(N_ITEMS) % 5
    rows = []
    for u in range(N_USERS):
        liked = np.flatnonzero(group == u % 5)
        items = rng.choice(liked, size=8, replace=False)
        rows += [(u, int(i), s) for i, s in zip(items, ["train"] * 6 + ["valid", "test"], strict=True)]
    interactions = pd.DataFrame(rows, columns=["user", "item", "split"])
    centers = rng.normal(size=(5, 96)).astype(np.float32)
    image = centers[group] + rng.normal(scale=0.5, size=(N_ITEMS, 96)).astype(np.float32)
    text = rng.normal(size=(N_ITEMS, 64)).astype(np.float32) + group[:, None].astype(np.float32)
    return GraphData.build(interactions, N_ITEMS, {"image": image, "text": text})


VARIANTS = {
    "sea": {"model": {"name": "sea"}, "sea": {"embedding_dim": 32, "mlp_hidden_dim": 64}},
    "sea_l2": {
        "model": {"name": "sea"},
        "sea": {"embedding_dim": 32, "mlp_hidden_dim": 64},
        "loss": {"distance": "l2"},
    },
    "bprmf": {"model": {"name": "bprmf"}, "train": {"negatives": 20}},
    "lightgcn": {"model": {"name": "lightgcn"}},
    "lightgcn_cbns": {
        "model": {"name": "lightgcn"},
        "loss": {"kind": "softmax"},
        "train": {"sampler": "cross_batch", "cbns_warmup_steps": 1},
    },
    "vbpr_sea": {"model": {"name": "vbpr"}, "vbpr": {"separation": "sea"}},
    "freedom_sea": {"model": {"name": "freedom"}, "freedom": {"separation": "sea"}},
    "layergcn": {"model": {"name": "layergcn"}},
    "lattice": {"model": {"name": "lattice"}},
    "lattice_sea": {"model": {"name": "lattice"}, "lattice": {"separation": "sea"}},
    "mgcn": {"model": {"name": "mgcn"}},
    "mgcn_sea": {"model": {"name": "mgcn"}, "mgcn": {"separation": "sea"}},
    "gume": {"model": {"name": "gume"}},
    "dragon": {"model": {"name": "dragon"}},
    "cohesion": {"model": {"name": "cohesion"}},
    "grcn": {"model": {"name": "grcn"}},
    "dualgnn": {"model": {"name": "dualgnn"}},
    "mentor": {"model": {"name": "mentor"}},
    "bm3": {"model": {"name": "bm3"}},
    "selfcf": {"model": {"name": "selfcf"}},
    "mmgcn": {"model": {"name": "mmgcn"}},
    "mvgae": {"model": {"name": "mvgae"}},
    "mmgcf": {"model": {"name": "mmgcf"}},
    "mmgcf_concat_alpha": {"model": {"name": "mmgcf"}, "mmgcf": {"fusion_mode": "concat", "weighting": "alpha"}},
    "mmgcf_sum_equal": {"model": {"name": "mmgcf"}, "mmgcf": {"fusion_mode": "sum", "weighting": "equal"}},
    "itemknncbf": {"model": {"name": "itemknncbf"}},  # no training: its one evaluation, from the built lists
    "lirdrec": {"model": {"name": "lirdrec"}},
    "lgmrec": {"model": {"name": "lgmrec"}},
    "pgl": {"model": {"name": "pgl"}},
    "pgl_global": {"model": {"name": "pgl"}, "pgl": {"mode": "global"}},
    "simplex": {"model": {"name": "simplex"}, "simplex": {"aggregator": "self_attention"}, "train": {"negatives": 50}},
    "slmrec": {"model": {"name": "slmrec"}},
    "slmrec_fdfm": {"model": {"name": "slmrec"}, "slmrec": {"ssl_task": "fd+fm"}},
    "damrs": {"model": {"name": "damrs"}},
    "smore": {"model": {"name": "smore"}},
    "smore_sea": {"model": {"name": "smore"}, "smore": {"separation": "sea"}, "train": {"negatives": 3}},
}


def train_bytes(data: GraphData, params: dict, threads: int) -> tuple[str, str]:
    """(sha256 of the best weights, the history as JSON) after two epochs at ``threads``."""
    old = torch.get_num_threads()
    set_threads(threads)
    try:
        params = params | {
            "club": {"steps": 5},
            "train": {"batch_size": 1024, "max_epochs": 2, "lr": 0.01} | params.get("train", {}),
            "eval": {"topk": [10, 20], "select": "recall@20"},
        }
        setup = TrainingSetup.from_params(params)
        seed_everything(7)
        model = build_model(data, setup)
        result = fit(model, data, setup, seed=7, log=lambda *_: None)
    finally:
        set_threads(old)
    weights = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in result.best_state.values()))
    history = json.dumps([{k: float(v) for k, v in row.items()} for row in result.history], sort_keys=True)
    return weights.hexdigest(), history


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_gives_the_same_bytes_at_one_and_three_threads(data, variant):
    one = train_bytes(data, VARIANTS[variant], 1)
    three = train_bytes(data, VARIANTS[variant], 3)
    assert one[1] == three[1], "the losses or validation metrics differ between 1 and 3 threads"
    assert one[0] == three[0], "the weights differ between 1 and 3 threads"
    assert "valid_recall@20" in one[1]
