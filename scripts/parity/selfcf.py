"""Parity check: sea/models/selfcf.py against MMRec's src/models/selfcfed_lgn.py, run as
is, with its common/encoders.py (LightGCN_Encoder) and common/loss.py.

Stand-ins: the base class, config and dataset (common.py). During MMRec's loss the two
draws of its edge dropout (np.random.random for the rate, torch.rand for the mask) are
patched to return OUR draws, and torch's generator is put in the state ours had before
drawing the target dropout masks, so both sides use identical random numbers. Compared:
the adjacency, vectors and scores (eval), the edge-dropped adjacency (the same kept
entries), the dropped targets (the same masks), the loss and the gradients.

    python scripts/parity/selfcf.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("selfcf", preload={"common.encoders": "src/common/encoders.py"})

from sea.batch import Batch  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.selfcf import SelfCF  # noqa: E402

rng = np.random.default_rng(0)
pairs = {(u, u % N_ITEMS) for u in range(N_USERS)} | {(i % N_USERS, i) for i in range(N_ITEMS)}
while len(pairs) < 40:
    pairs.add((int(rng.integers(N_USERS)), int(rng.integers(N_ITEMS))))
TRAIN = sorted(pairs)
DATA = GraphData.build(parity.frame([(u, i, "train") for u, i in TRAIN] + [(0, 9, "test")]), N_ITEMS)
BATCH = Batch(
    torch.tensor([0, 3, 5, 5, 11, 7, 2, 9, 0]),
    torch.tensor([0, 3, 5, 1, 1, 7, 2, 9, 4]),
    torch.zeros(9, 1, dtype=torch.long),
)  # negatives: read by neither side
MAPPING = {
    "user.weight": "online_encoder.embedding_dict.user_emb",
    "item.weight": "online_encoder.embedding_dict.item_emb",
    "predictor.weight": "predictor.weight",
    "predictor.bias": "predictor.bias",
}


def run(d, layers, dropout, reg_weight, seed):
    report.section(f"d={d} layers={layers} dropout={dropout} reg_weight={reg_weight} seed={seed}")
    torch.manual_seed(seed)
    ours = SelfCF.build(
        DATA, SelfCF.Config(embedding_dim=d, layers=layers, dropout=dropout, edge_dropout=1.0, reg_weight=reg_weight)
    )
    config = {
        "train_batch_size": 2048,
        "device": torch.device("cpu"),
        "embedding_size": d,
        "n_layers": layers,
        "dropout": dropout,
        "reg_weight": reg_weight,
    }
    u, i = np.array(TRAIN).T
    theirs = s.ref.SELFCFED_LGN(config, parity.Dataset(N_USERS, N_ITEMS, u, i))
    report.check("every parameter of both sides mapped", not parity.copy_weights(ours, theirs, MAPPING))
    report.compare("graph: adjacency", DATA.adj.to_dense(), theirs.online_encoder.sparse_norm_adj.to_dense())

    ours.eval(), theirs.eval()
    with torch.no_grad():
        emb = ours(DATA)
        pu, tu, pi, ti = theirs.get_embedding()
        report.compare("eval: users [P(h_u); h_u]", emb.user, torch.cat([pu, tu], 1))
        report.compare("eval: items [h_i; P(h_i)]", emb.item, torch.cat([ti, pi], 1))
        report.compare(
            "eval: score matrix",
            ours.score(emb, torch.arange(N_USERS)),
            theirs.full_sort_predict([torch.arange(N_USERS)]),
        )

    # training: our draws recorded, then handed to MMRec
    rec = {"targets": []}
    draw, targets = ours.draw_adjacency, ours.targets

    def recording_draw():
        state = torch.get_rng_state()
        rec["rate"] = torch.rand(()) * ours.edge_dropout
        rec["u"] = torch.rand(ours.adj_values.shape)
        torch.set_rng_state(state)
        out = draw()
        rec["adj"] = out[0].to_dense()
        rec["rng_after_draw"] = torch.get_rng_state()
        return out

    def recording_targets(x):
        y = targets(x)
        rec["targets"].append(y)
        return y

    ours.train(), theirs.train()
    with parity.patched(ours, "draw_adjacency", recording_draw), parity.patched(ours, "targets", recording_targets):
        torch.manual_seed(100 + seed)
        loss = sum(t.weight * t.value for t in ours.extra_losses(ours(DATA), BATCH).values())
    ours.zero_grad()
    loss.backward()
    assert rec["rate"] > 0.05

    # our uniforms, in CSR order, to MMRec's COO order (of its scipy matrix)
    rows = torch.repeat_interleave(torch.arange(N_USERS + N_ITEMS), ours.adj_crow.diff())
    pos = {(int(r), int(c)): k for k, (r, c) in enumerate(zip(rows, ours.adj_col))}
    order = torch.tensor([pos[(int(r), int(c))] for r, c in theirs.online_encoder.sparse_norm_adj._indices().T])
    seen = {}
    encoder, sparse_dropout, forward = theirs.online_encoder, theirs.online_encoder.sparse_dropout, theirs.forward

    def capture_dropout(x, rate, noise_shape):
        seen["adj"] = sparse_dropout(x, rate, noise_shape)
        return seen["adj"]

    def capture_forward(inputs):
        r = forward(inputs)
        seen["targets"] = (r[1], r[3])
        return r

    with (
        parity.patched(encoder, "sparse_dropout", capture_dropout),
        parity.patched(theirs, "forward", capture_forward),
        parity.patched(np.random, "random", lambda: float(rec["rate"])),
        parity.patched(torch, "rand", lambda shape, *a, **k: rec["u"][order].clone()),
    ):
        torch.set_rng_state(rec["rng_after_draw"])
        their_loss = theirs.calculate_loss([BATCH.users, BATCH.pos])
    theirs.zero_grad()
    their_loss.backward()
    their_adj = seen["adj"].to_dense()
    report.check(
        "edge dropout: the same kept entries",
        torch.equal(rec["adj"] != 0, their_adj != 0),
        f"rate {rec['rate']:.3f}, kept {int((rec['adj'] != 0).sum())} of {DATA.adj.values().numel()}",
    )
    report.compare("train: edge-dropped adjacency", rec["adj"], their_adj)
    for name, mine, theirs_t in zip(("users", "items"), rec["targets"], seen["targets"]):
        report.check(f"train: target {name}, the same dropout mask", torch.equal(mine == 0, theirs_t == 0))
        report.compare(f"train: target {name} (dropped)", mine, theirs_t)
    report.compare("train: loss", loss, their_loss)
    parity.compare_grads(report, ours, theirs, MAPPING, label="train: grad ")


report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(TRAIN)} training pairs")
for args in [(8, 2, 0.5, 0.1, 0), (8, 1, 0.2, 0.0, 1), (64, 2, 0.5, 1e-3, 3)]:
    run(*args)
report.finish()
