"""Parity check: sea/models/freedom.py (separation: none) against MMRec's
src/models/freedom.py, run as is.

Stand-ins: the base class, config and train loader (common.py); MMRec caches its
item-item graph under data_path + dataset: a fresh temporary folder. Deliberate
difference accounted for: MMRec's per-modality kNN lists are ours at k - 1 plus the item
itself (checked as such); their item-item graph is copied into ours for what follows.
MMRec's torch.multinomial draw of the epoch's kept edges is handed OUR draw. Compared:
the graphs, vectors and scores (eval), the pruned adjacency, the loss and gradients; the
pruning weights and the distribution of our draw against torch.multinomial's; and the
edges kept per epoch, ours round((1-p)E) vs MMRec's int(E(1-p)) (shown).

    python scripts/parity/freedom.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("freedom")

from sea.models.base import GraphData  # noqa: E402
from sea.models.freedom import FREEDOM, FREEDOMConfig  # noqa: E402
from sea.models.graphs import FrozenGraph, knn_graph  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATURES = parity.features(rng)
THEIR_PAIRS = parity.shuffled(rng, pairs)
BATCH = parity.repeat_batch(rng, pairs)
MAPPING = parity.mmrec_mapping(bias=False)


def build(d, layers, knn_k, dropout, reg, tmp):
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATURES)
    cfg = FREEDOMConfig(embedding_dim=d, layers=layers, knn_k=knn_k, dropout=dropout, reg_weight=reg)
    torch.manual_seed(0)
    ours = FREEDOM.build(data, cfg)
    config = {
        "train_batch_size": 2048,
        "device": torch.device("cpu"),
        "embedding_size": d,
        "feat_embed_dim": d,
        "knn_k": knn_k,
        "lambda_coeff": 0.9,
        "cf_model": "lightgcn",
        "n_mm_layers": 1,
        "n_ui_layers": layers,
        "reg_weight": reg,
        "mm_image_weight": cfg.image_knn_weight,
        "dropout": dropout,
        "degree_ratio": None,
        "data_path": str(tmp) + "/",
        "dataset": f"toy_{d}_{layers}_{knn_k}",
    }
    Path(config["data_path"] + config["dataset"]).mkdir()
    feat = {m: torch.from_numpy(FEATURES[m]) for m in FEATURES}
    theirs = s.ref.FREEDOM(
        config,
        parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"]),
    )
    return data, ours, theirs, parity.copy_weights(ours, theirs, MAPPING)


def hand_draw(ours, theirs, seed=5):
    """Our epoch's pruning, handed to MMRec's pre_epoch_processing in place of its
    torch.multinomial draw (the same edges, by their positions in MMRec's edge list)."""
    parity.hand_our_draw(report, ours, theirs, seed)
    report.compare(
        "pruned adjacency (our draw handed over)", ours.pruned.matrix.to_dense(), theirs.masked_adj.to_dense()
    )


def draw_distribution(ours, theirs, n=3000):
    """Each edge's share of draws kept: our Efraimidis-Spirakis draw vs MMRec's
    torch.multinomial over the same weights (MMRec's edge order mapped to ours)."""
    keep = max(1, round((1.0 - ours.dropout) * len(ours.edge_weight)))
    g = torch.Generator().manual_seed(1)
    ours_f = torch.bincount(torch.cat([ours.kept_edges(g) for _ in range(n)]), minlength=len(ours.edge_weight)) / n
    to_ours = parity.their_edge_positions(
        torch.stack([ours.edge_users, ours.edge_items]), *theirs.edge_indices, range(theirs.edge_indices.shape[1])
    )
    report.compare("pruning weights 1/sqrt(d_u d_i)", ours.edge_weight[to_ours], theirs.edge_values)
    torch.manual_seed(2)
    t = torch.cat([to_ours[torch.multinomial(theirs.edge_values, keep)] for _ in range(n)])
    their_f = torch.bincount(t, minlength=len(ours.edge_weight)) / n
    sd = (2 * 0.25 / n) ** 0.5  # the noise of a difference of two shares, at most
    report.record(
        f"draw distribution, keep {keep} of {len(ours.edge_weight)}: max |share ours - theirs|",
        (ours_f - their_f).abs().max().item(),
        atol=5 * sd,
    )


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs "
    f"(item 9 isolated), image 7 / text 5 wide; batch {len(BATCH.users)} triples",
)
with tempfile.TemporaryDirectory() as tmp:
    for d, layers, knn_k, dropout, reg in ((8, 2, 4, 0.5, 1e-3), (8, 1, 3, 0.5, 0.5), (64, 3, 5, 0.5, 0.1)):
        report.section(f"d={d} layers={layers} knn_k={knn_k} dropout={dropout} reg_weight={reg}")
        data, ours, theirs, unmapped = build(d, layers, knn_k, dropout, reg, tmp)
        report.note(f"no counterpart in ours: {unmapped}")
        report.compare("graph: user-item adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
        for m, x in (("image", theirs.v_feat), ("text", theirs.t_feat)):
            _, their_m = theirs.get_knn_adj_mat(x)
            ours_km1 = knn_graph(data.features[m], knn_k - 1).to_dense() * (knn_k - 1)  # binary, self excluded
            report.compare(
                f"graph: {m} kNN, theirs vs (ours at k-1 + I)/k",
                (ours_km1 + torch.eye(N_ITEMS)) / knn_k,
                their_m.to_dense(),
            )
        report.compare(
            "graph: item-item, ours as is (deliberate)",
            ours.item_graph.matrix.to_dense(),
            theirs.mm_adj.to_dense(),
            info=True,
        )
        ours.item_graph = FrozenGraph(theirs.mm_adj.coalesce())  # theirs copied into ours for what follows
        parity.compare_forward(report, ours, data, theirs, theirs.norm_adj)
        hand_draw(ours, theirs)
        parity.compare_step(report, ours, theirs, data, BATCH, MAPPING)
        report.note(
            "their unmapped parameters, max |grad|: "
            + str({k: p.grad.abs().max().item() for k, p in theirs.named_parameters() if k in unmapped})
        )
        if d == 8 and layers == 2:
            draw_distribution(ours, theirs)
print("\nEdges kept per epoch, ours round((1-p)E) vs MMRec int(E(1-p)) (shown, not checked):")
for n in (len(pairs), 10, 100, 118551):
    print(f"  E={n}: " + ", ".join(f"p={p}: {round((1 - p) * n)} vs {int(n * (1.0 - p))}" for p in (0.8, 0.9)))
report.finish()
