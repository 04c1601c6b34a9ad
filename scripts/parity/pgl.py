"""Parity check: sea/models/pgl.py against the authors' src/models/pgl.py
(github.com/demonph10/PGL, MMRec-based; MMRec's src/models/pgl.py at e775373 is the same
file but for its docstring, so --ref may name an MMRec checkout too), run as is.

Stand-ins: the base class, config and dataset (common.py; their kNN graph is cached in a
temporary folder) and ``sparsesvd`` (SVDLIBC's exact truncated SVD: numpy's exact SVD,
truncated). Deliberate differences accounted for: their kNN lists count each item as its
own nearest neighbour (checked against ours at k - 1 plus the item; their item graph is
then copied into ours); their local draw (torch.multinomial) is handed OUR draw; global
mode: their SVD of the whole graph at rank d (the top quarter weighted by the bottom
quarter) is ours of its user-item block at rank d/2 with d/8 components. Compared: the
adjacency, item graph, principal subgraph (local: our draw; global: their SVD against
ours), the draw weights, vectors and scores (eval), the loss (dropout off, and on with
the same masks: both draw them from torch's generator in the same order) and every
gradient, their trainable feature tables included.

    python scripts/parity/pgl.py --ref PATH/TO/PGL
"""

from __future__ import annotations

import tempfile

import common as parity
import numpy as np
import torch

parity.stub(  # SVDLIBC's sparsesvd(csc, k) -> (U^T, s, V^T), exact: numpy's SVD, truncated
    "sparsesvd",
    sparsesvd=lambda m, k: (lambda u, s, vt: (u[:, :k].T, s[:k], vt[:k]))(*np.linalg.svd(m.toarray())),
)
s = parity.setup("pgl")

from sea.models.base import GraphData  # noqa: E402
from sea.models.graphs import FrozenGraph, knn_graph  # noqa: E402
from sea.models.pgl import PGL, PGLConfig  # noqa: E402

N_USERS, N_ITEMS, B = 40, 30, 16
rng = np.random.default_rng(0)
USERS, ITEMS = parity.connected_pairs(rng, N_USERS, N_ITEMS)
FEATS = parity.features(rng, N_ITEMS, (("image", 9), ("text", 7)))
PAIRS = list(zip(USERS.tolist(), ITEMS.tolist()))
THEIR_PAIRS = parity.shuffled(rng, PAIRS)  # their interactions in another order
BATCH = parity.sampled_batch(rng, PAIRS, B, N_ITEMS)
MAPPING = {}
for m in ("image", "text"):
    MAPPING |= {f"user.{m}.weight": f"user_{m}.weight", f"tables.{m}": f"{m}_embedding.weight"}
    MAPPING |= {f"projections.{m}.{p}": f"{m}_trs.{p}" for p in ("weight", "bias")}


def run(mode, d, ui_layers, item_layers, knn_k, reg_weight, dropout):
    report.section(
        f"{mode}, d={d}, ui_layers={ui_layers}, item_layers={item_layers}, knn_k={knn_k}, "
        f"reg_weight={reg_weight}, dropout={dropout}"
    )
    data = GraphData.build(parity.frame([(u, i, "train") for u, i in PAIRS]), N_ITEMS, FEATS)
    svd = {"svd_rank": d // 2, "svd_components": d // 8, "svd_threshold": 1e-3}
    cfg = PGLConfig(
        embedding_dim=d,
        ui_layers=ui_layers,
        item_layers=item_layers,
        knn_k=knn_k,
        mode=mode,
        reg_weight=reg_weight,
        dropout=dropout,
        **svd,
    )
    torch.manual_seed(0)
    ours = PGL.build(data, cfg)
    with tempfile.TemporaryDirectory() as tmp:  # their cached kNN graph
        config = {
            "mode": mode,
            "embedding_size": d,
            "feat_embed_dim": d,
            "knn_k": knn_k,
            "lambda_coeff": 0.9,
            "n_mm_layers": item_layers,
            "n_ui_layers": ui_layers,
            "reg_weight": reg_weight,
            "mm_image_weight": cfg.image_knn_weight,
            "dropout": dropout,
            "data_path": tmp,
            "dataset": "",
            "train_batch_size": B,
            "device": torch.device("cpu"),
        }
        feat = {m: torch.from_numpy(FEATS[m].copy()) for m in FEATS}
        theirs = s.ref.PGL(config, parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"]))
    report.check("every parameter of theirs mapped", parity.copy_weights(ours, theirs, MAPPING) == [])

    report.compare("graph: user-item adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    for m in ("image", "text"):
        _, their_m = theirs.get_knn_adj_mat(getattr(theirs, f"{m}_embedding").weight.detach())
        ours_km1 = knn_graph(data.features[m], knn_k - 1).to_dense() * (knn_k - 1)  # binary, self excluded
        report.compare(
            f"graph: {m} kNN, theirs vs (ours at k-1 + I)/k",
            (ours_km1 + torch.eye(N_ITEMS)) / knn_k,
            their_m.to_dense(),
        )
    report.compare(
        "graph: item-item, ours (deliberate)", ours.item_graph.matrix.to_dense(), theirs.mm_adj.to_dense(), info=True
    )
    ours.item_graph = FrozenGraph(theirs.mm_adj.coalesce())  # theirs, for what follows

    if mode == "local":
        to_ours = parity.their_edge_positions(
            torch.stack([ours.edge_users, ours.edge_items]), *theirs.edge_indices, range(len(PAIRS))
        )
        report.compare("draw weights 1/sqrt(d_u d_i)", ours.edge_weight[to_ours], theirs.edge_values)
        parity.hand_our_draw(report, ours, theirs, 5, label="they keep as many edges as ours, int(0.3 E)")
        report.compare("principal subgraph (our draw)", ours.principal.matrix.to_dense(), theirs.sub_graph.to_dense())
    else:
        a, b = ours.principal.matrix.to_dense(), theirs.sub_graph.to_dense()
        report.check("principal subgraph: the same kept entries", torch.equal(a != 0, b != 0))
        report.compare(f"principal subgraph (SVD: theirs rank {d} of A, ours {d // 2} of B)", a, b)

    parity.compare_forward(report, ours, data, theirs, theirs.norm_adj)
    ours.train(), theirs.train()
    ours.zero_grad(), theirs.zero_grad()
    torch.manual_seed(7)  # the same dropout masks on both sides: drawn in the same order
    loss, _ = parity.our_loss(ours, data, BATCH)
    torch.manual_seed(7)
    their_loss = theirs.calculate_loss([BATCH.users, BATCH.pos, BATCH.neg[:, 0]])
    report.compare("train: loss", loss, their_loss)
    loss.backward()
    their_loss.backward()
    parity.compare_grads(report, ours, theirs, MAPPING, label="train: grad ")


report = parity.Report(
    s, f"{N_USERS} users x {N_ITEMS} items, {len(PAIRS)} training pairs (connected), image 9 / text 7 wide; batch {B}"
)
for setting in (
    ("local", 8, 2, 1, 10, 0.05, 0.0),
    ("local", 8, 2, 1, 10, 0.5, 0.2),
    ("local", 64, 3, 2, 5, 0.1, 0.2),
    ("global", 16, 2, 1, 10, 0.05, 0.0),
    ("global", 16, 1, 2, 5, 0.5, 0.2),
):
    run(*setting)
report.finish()
