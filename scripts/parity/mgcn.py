"""Parity check: sea/models/mgcn.py (separation: none) against MMRec's src/models/mgcn.py,
run as is (with MMRec's own src/utils/utils.py).

Stand-ins: the base class, config and dataset (common.py; MMRec saves its kNN graphs in
a temporary folder), torch_scatter.scatter_add. Deliberate differences accounted for:
MMRec's kNN graphs are cosine-weighted with each item its own nearest neighbour, ours
unweighted with self excluded: each is checked against its recipe (dense, float64), and
MMRec's two graphs are copied into our model for the rest. MMRec's feature tables are
trainable, ours fixed (the same values). MMRec divides the penalty by train_batch_size:
set to the batch's rows. Compared: the adjacency and R, the graphs, the ID and modality
views, vectors and scores (eval), the loss (BPR, reg, total) and the gradients.

    python scripts/parity/mgcn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import os
import tempfile

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("mgcn")

from sea.losses import RankingLoss  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.graphs import FrozenGraph  # noqa: E402
from sea.models.mgcn import MGCN, MGCNConfig  # noqa: E402

B = 16
g = np.random.default_rng(3)
USERS, ITEMS = parity.matrix_pairs(
    g, 0.3, drawn_users=N_USERS - 1, last_user_items=[]
)  # the last user: a valid pair only
V, T = g.normal(size=(N_ITEMS, 7)).astype(np.float32), g.normal(size=(N_ITEMS, 5)).astype(np.float32)
MAPPING = parity.mmrec_mapping() | {
    "attention.0.weight": "query_common.0.weight",
    "attention.0.bias": "query_common.0.bias",
    "attention.2.weight": "query_common.2.weight",
}
for m, v in (("image", "v"), ("text", "t")):
    for p in ("weight", "bias"):
        MAPPING |= {f"purifiers.{m}.{p}": f"gate_{v}.0.{p}", f"preferences.{m}.{p}": f"gate_{m}_prefer.0.{p}"}


def knn_recipe(x, k, *, self_out_unweighted=False):
    """Top-k of the cosine per row (self included, cosine weights: MMRec's; or self out,
    weights 1: ours), D^-1/2 S D^-1/2, dense in float64."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    sim = x @ x.T
    if self_out_unweighted:
        sim.fill_diagonal_(-float("inf"))
        w = torch.zeros_like(sim).scatter_(1, sim.topk(k, dim=1).indices, 1.0)
    else:
        val, ind = sim.topk(k, dim=1)
        w = torch.zeros_like(sim).scatter_(1, ind, val)
    dinv = w.sum(1).pow(-0.5)
    return dinv[:, None] * w * dinv[None, :]


def run(d=8, ui_layers=2, item_layers=1, knn_k=3, reg_weight=0.1, cl_weight=0.3, seed=0):
    report.section(
        f"d {d}, ui_layers {ui_layers}, item_layers {item_layers}, knn_k {knn_k}, "
        f"reg_weight {reg_weight}, cl_weight {cl_weight}"
    )
    rows = [(u, i, "train") for u, i in zip(USERS, ITEMS)] + [(N_USERS - 1, 4, "valid")]
    data = GraphData.build(parity.frame(rows), N_ITEMS, {"image": V, "text": T})
    cfg = MGCNConfig(
        embedding_dim=d,
        ui_layers=ui_layers,
        item_layers=item_layers,
        knn_k=knn_k,
        reg_weight=reg_weight,
        cl_weight=cl_weight,
        cl_temperature=0.2,
    )
    torch.manual_seed(seed)
    ours = MGCN.build(data, cfg, ["image", "text"])
    with tempfile.TemporaryDirectory() as tmp:  # MMRec's cached kNN graphs
        config = {
            "cl_loss": cl_weight,
            "n_ui_layers": ui_layers,
            "embedding_size": d,
            "knn_k": knn_k,
            "n_layers": item_layers,
            "reg_weight": reg_weight,
            "data_path": tmp + "/",
            "dataset": "hand",
            "train_batch_size": B,
            "device": torch.device("cpu"),
        }
        os.makedirs(os.path.join(tmp, "hand"))
        theirs = s.ref.MGCN(config, parity.Dataset(N_USERS, N_ITEMS, USERS, ITEMS, torch.tensor(V), torch.tensor(T)))
    unmapped = parity.copy_weights(ours, theirs, MAPPING)
    report.check(
        "theirs unmapped: their trainable feature tables",
        unmapped == ["image_embedding.weight", "text_embedding.weight"],
        str(unmapped),
    )
    report.check(
        "their feature tables: our features' values",
        all(torch.equal(getattr(theirs, f"{m}_embedding").weight, data.features[m]) for m in ("image", "text")),
    )

    report.compare("graph: normalised adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    report.compare("graph: R, user-item block", ours.user_item.matrix.to_dense(), theirs.R.to_dense())
    for m in ("image", "text"):
        a, b = ours.item_graphs[m].matrix.to_dense(), getattr(theirs, f"{m}_original_adj").to_dense()
        report.compare(f"graph: kNN {m}, ours vs theirs (deliberate)", a, b, info=True)
        report.compare(f"graph: kNN {m}, theirs vs MMRec's recipe", b, knn_recipe(data.features[m], knn_k))
        report.compare(
            f"graph: kNN {m}, ours vs self out, weights 1",
            a,
            knn_recipe(data.features[m], knn_k, self_out_unweighted=True),
        )
        ours.item_graphs[m] = FrozenGraph(getattr(theirs, f"{m}_original_adj").coalesce())  # theirs, for the rest
    report.note("MMRec's two kNN graphs copied into our model for what follows")

    emb = parity.compare_forward(report, ours, data, theirs, theirs.norm_adj, train=True)
    with torch.no_grad():
        _, _, side, content = theirs.forward(theirs.norm_adj, train=True)
    report.compare("eval: ID view", emb.extras["id_view"], content)
    report.compare("eval: modality view", emb.extras["modality_view"], side)

    batch = parity.drawn_batch(USERS, ITEMS, B, seed=5)
    # the attention's gradients are near-cancelling sums (|grad| down to 1e-8): rounding
    slack = {n: 100 for n in MAPPING if n.startswith("attention.")}
    parity.compare_step(report, ours, theirs, data, batch, MAPPING, label="train (BPR + reg + cl): ", slack=slack)
    with torch.no_grad():  # the parts, from their side's pieces
        emb = ours(data)
        extra = ours.extra_losses(emb, batch)
        uu, pp = theirs.forward(theirs.norm_adj, train=True)[:2]
        mf, emb_loss, _ = theirs.bpr_loss(uu[batch.users], pp[batch.pos], pp[batch.neg[:, 0]])
    report.compare("train: BPR", RankingLoss("bpr")(emb, batch), mf)
    report.compare("train: reg_weight x reg", extra["reg"].weight * extra["reg"].value, emb_loss)


report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(USERS)} training pairs, image 7 / text 5 wide")
run()
run(d=64, ui_layers=2, item_layers=1, knn_k=5, reg_weight=1e-4, cl_weight=0.01)
run(d=8, ui_layers=1, item_layers=2, knn_k=3, reg_weight=0.1, cl_weight=0.3)
report.finish()
