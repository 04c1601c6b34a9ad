"""Parity check: sea/models/layergcn.py against MMRec's src/models/layergcn.py, run as is.

MMRec's file imports ``models.common.*`` (a path MMRec itself lacks): the stand-ins and
its own common/loss.py are aliased there (common.py). Its random draws (torch.multinomial
for the degree-sensitive epochs, random.sample for the uniform ones) are replaced, for its
pre_epoch_processing, by OUR drawn edges, mapped into MMRec's edge order. Settings: layers
1-4 x dropout 0/0.1/0.2, and (4, 0.1, reg 1e-4); epochs 1-4 each. Compared: the whole
and the pruned adjacency, the pruning weights, vectors and scores (eval and training),
the loss and gradients (x B: MMRec sums over the batch). Relative differences per entry.

    python scripts/parity/layergcn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import random

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("layergcn")

from sea.models.base import GraphData  # noqa: E402
from sea.models.layergcn import LayerGCN, LayerGCNConfig  # noqa: E402

D, B = 8, 16
rng = np.random.default_rng(0)
train, rows = parity.hand_graph(rng, denser=True)  # item 9: isolated
E = len(train)
FEATS = parity.features(rng)
data = GraphData.build(parity.frame(rows), N_ITEMS, FEATS)
feats = {m: torch.as_tensor(x) for m, x in FEATS.items()}
DATASET = parity.Dataset(N_USERS, N_ITEMS, *parity.shuffled(rng, train), feats["image"], feats["text"])
batch = parity.drawn_batch(data.train_users, data.train_items, B, seed=7)
MAPPING = {"user.weight": "user_embeddings", "item.weight": "item_embeddings"}


def their_prune(theirs, ours, epoch, seed):
    """Our draw for this epoch, handed to MMRec's pre_epoch_processing."""
    if ours.dropout == 0:  # both: the whole graph, no draw
        theirs.pre_epoch_processing()
        ours.on_epoch_start(epoch, torch.Generator().manual_seed(seed))
        report.check("no pruning at dropout 0", ours.pruned is None and theirs.masked_adj is theirs.norm_adj_matrix)
        return
    degree = ours.degree_sensitive(epoch)
    kept = (ours.kept_edges if degree else ours.uniform_edges)(torch.Generator().manual_seed(seed))
    idx = parity.their_edge_positions(theirs.edge_indices, ours.edge_users, ours.edge_items, kept)
    keep_len = int(theirs.edge_values.size(0) * (1.0 - theirs.dropout))
    assert keep_len == len(idx), f"kept-edge count: MMRec {keep_len}, ours {len(idx)}"
    assert theirs.pruning_random != degree  # MMRec's alternation is in the same phase as ours
    calls = []

    def fake_multinomial(weights, n):
        calls.append("degree")
        return idx.clone()

    def fake_sample(population, n):
        calls.append("uniform")
        return idx.tolist()

    with parity.patched(torch, "multinomial", fake_multinomial), parity.patched(random, "sample", fake_sample):
        theirs.pre_epoch_processing()
    assert calls == ["degree" if degree else "uniform"], calls
    ours.on_epoch_start(epoch, torch.Generator().manual_seed(seed))


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {E} training edges "
    f"(item 9 isolated), d={D}, batch B={B}; layers 1-4 x dropout 0/0.1/0.2 (reg 1e-2) + (4, 0.1, 1e-4); "
    "epochs 1-4 each",
    elementwise=True,
    quiet=True,
)
for layers, dropout, reg in [(n, p, 1e-2) for n in (1, 2, 3, 4) for p in (0.0, 0.1, 0.2)] + [(4, 0.1, 1e-4)]:
    torch.manual_seed(0)
    cfg = {"embedding_dim": D, "layers": layers, "dropout": dropout, "reg_weight": reg}
    ours = LayerGCN.build(data, LayerGCNConfig.from_dict(cfg, "layergcn"))
    config = {
        "embedding_size": D,
        "n_layers": layers,
        "reg_weight": reg,
        "dropout": dropout,
        "device": torch.device("cpu"),
    }
    torch.manual_seed(1)
    theirs = s.ref.LayerGCN(config, DATASET)
    assert not parity.copy_weights(ours, theirs, MAPPING)
    report.compare("graph: whole adjacency", data.adj.to_dense(), theirs.norm_adj_matrix.to_dense())
    w = torch.empty(E)
    w[parity.their_edge_positions(theirs.edge_indices, ours.edge_users, ours.edge_items, range(E))] = ours.edge_weight
    report.compare("graph: pruning weights", w, theirs.edge_values)
    theirs.forward_adj = theirs.norm_adj_matrix
    parity.compare_forward(report, ours, data, theirs)
    for epoch in (1, 2, 3, 4):  # degree-sensitive, uniform, ...: the same kept edges in both
        their_prune(theirs, ours, epoch, seed=100 * layers + epoch)
        if dropout > 0:
            report.compare("graph: pruned adjacency", ours.pruned.matrix.to_dense(), theirs.masked_adj.to_dense())
        theirs.forward_adj = theirs.masked_adj
        ours.train(), theirs.train()
        with torch.no_grad():
            emb = ours(data)
            tu, ti = theirs.forward()
        report.compare("train: user vectors", emb.user, tu)
        report.compare("train: item vectors", emb.item, ti)
        parity.compare_step(report, ours, theirs, data, batch, MAPPING, label="train x B: ", scale=B)
report.finish()
