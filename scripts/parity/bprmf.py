"""Parity check: sea/models/bprmf.py against MMRec's src/models/bpr.py, run as is.

MMRec's common/loss.py and common/init.py are its own (its initialisation runs, then our
weights overwrite it); the base class, config and dataset are stand-ins (common.py). BPR
reads no graph. Settings: d and reg_weight; two batches (9 and 20 triples; with 20, more
ids than table rows). Compared: user / item vectors and scores (eval), the loss and the
gradients of both tables.

    python scripts/parity/bprmf.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("bprmf")

from sea.models.base import GraphData  # noqa: E402
from sea.models.bprmf import BPRMF, BPRMFConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
DATASET = parity.Dataset(N_USERS, N_ITEMS, *parity.shuffled(rng, pairs))
BATCHES = {"9 triples": parity.sampled_batch(rng, pairs, 9), "20 triples": parity.sampled_batch(rng, pairs, 20)}
MAPPING = {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_embedding.weight"}

report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs")
for d, reg in ((8, 2.0), (8, 1e-2), (64, 1e-3), (8, 0.0)):
    report.section(f"d={d} reg_weight={reg}")
    data = GraphData.build(parity.frame(rows), N_ITEMS)
    torch.manual_seed(0)
    ours = BPRMF.build(data, BPRMFConfig(embedding_dim=d, reg_weight=reg))
    theirs = s.ref.BPR({"device": torch.device("cpu"), "embedding_size": d, "reg_weight": reg}, DATASET)
    report.note(f"theirs without counterpart: {parity.copy_weights(ours, theirs, MAPPING) or 'none'}")
    parity.compare_forward(report, ours, data, theirs)
    for name, batch in BATCHES.items():
        parity.compare_step(report, ours, theirs, data, batch, MAPPING, label=f"[{name}] ")
report.finish()
