"""Parity check: sea/models/lightgcn.py against MMRec's src/models/lightgcn.py, run as is.

MMRec's common/loss.py and common/init.py are its own; the base class, config and
dataset are stand-ins (common.py). Settings: d, layers (0 to 4), reg_weight; two batches
(9 and 20 triples). Compared: the normalised adjacency, user / item vectors and scores
(eval), the loss and the gradients of both tables.

    python scripts/parity/lightgcn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("lightgcn")

from sea.models.base import GraphData  # noqa: E402
from sea.models.lightgcn import LightGCN, LightGCNConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
DATASET = parity.Dataset(N_USERS, N_ITEMS, *parity.shuffled(rng, pairs))
BATCHES = {"9 triples": parity.sampled_batch(rng, pairs, 9), "20 triples": parity.sampled_batch(rng, pairs, 20)}
MAPPING = {"user_emb.weight": "embedding_dict.user_emb", "item_emb.weight": "embedding_dict.item_emb"}

report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs")
for d, layers, reg in ((8, 1, 1e-2), (8, 3, 0.5), (64, 4, 1e-4), (8, 0, 0.1)):
    report.section(f"d={d} layers={layers} reg_weight={reg}")
    data = GraphData.build(parity.frame(rows), N_ITEMS)
    torch.manual_seed(0)
    ours = LightGCN.build(data, LightGCNConfig(embedding_dim=d, layers=layers, reg_weight=reg))
    config = {"device": torch.device("cpu"), "embedding_size": d, "n_layers": layers, "reg_weight": reg}
    theirs = s.ref.LightGCN(config, DATASET)
    report.note(f"theirs without counterpart: {parity.copy_weights(ours, theirs, MAPPING) or 'none'}")
    report.compare("graph: normalised adjacency", data.adj.to_dense(), theirs.norm_adj_matrix.to_dense())
    parity.compare_forward(report, ours, data, theirs)
    for name, batch in BATCHES.items():
        parity.compare_step(report, ours, theirs, data, batch, MAPPING, label=f"[{name}] ")
report.finish()
