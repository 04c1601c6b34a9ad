"""Parity check: sea/models/smore.py (separation: none) against MMRec's
src/models/smore.py, run as is (with MMRec's own src/utils/utils.py).

Stand-ins: the base class, config and dataset (common.py), torch_scatter.scatter_add;
the kNN graphs MMRec caches go to a fresh temporary folder per build. Our biases are set
non-zero, so that a misplaced one would show. With dropout, our masks are handed to
MMRec's nn.Dropout in the same order (image, text, fusion preference gates). Compared:
the adjacency, R, the kNN and fusion graphs, vectors and scores (eval), the loss terms
(BPR, reg, InfoNCE) and total, and the gradients. Shown: MMRec's L2 term divides by
train_batch_size (not the batch's rows); with k = all items MMRec keeps negative cosines.

    python scripts/parity/smore.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common as parity
import numpy as np
import torch
import torch.nn.functional as F
from common import N_ITEMS, N_USERS

s = parity.setup("smore")

from sea.losses import RankingLoss  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.smore import SMORE, user_item_block, weighted_knn_graph  # noqa: E402

DIMS = {"image": 7, "text": 5}
rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATURES = parity.features(rng)
BATCH = parity.repeat_batch(rng, pairs)
MAPPING = parity.mmrec_mapping() | {f"filters.{v}": f"{v}_complex_weight" for v in ("image", "text", "fusion")}
for m, q in (("image", "query_v"), ("text", "query_t")):
    MAPPING |= {
        f"queries.{m}.0.weight": f"{q}.0.weight",
        f"queries.{m}.0.bias": f"{q}.0.bias",
        f"queries.{m}.2.weight": f"{q}.2.weight",
    }
for v, g, p in (
    ("image", "gate_v", "gate_image_prefer"),
    ("text", "gate_t", "gate_text_prefer"),
    ("fusion", "gate_f", "gate_fusion_prefer"),
):
    for w in ("weight", "bias"):
        MAPPING |= {f"item_gates.{v}.0.{w}": f"{g}.0.{w}", f"preference_gates.{v}.0.{w}": f"{p}.0.{w}"}


def build(d, ui_layers, item_layers, k_image, k_text, *, dropout=0.0, reg=1e-2, cl=0.1, batch_size=None):
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATURES)
    graphs = {m: weighted_knn_graph(data.features[m], k) for m, k in (("image", k_image), ("text", k_text))}
    torch.manual_seed(0)
    ours = SMORE(
        N_USERS,
        N_ITEMS,
        DIMS,
        graphs,
        user_item_block(data.adj, N_USERS, N_ITEMS),
        embedding_dim=d,
        ui_layers=ui_layers,
        item_layers=item_layers,
        cl_weight=cl,
        temperature=0.2,
        reg_weight=reg,
        dropout=dropout,
    )
    with torch.no_grad():  # non-zero biases, so that a misplaced one would show
        for p in ours.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    with tempfile.TemporaryDirectory() as folder:
        config = {
            "train_batch_size": batch_size or len(BATCH.users),
            "device": torch.device("cpu"),
            "cl_loss": cl,
            "n_ui_layers": ui_layers,
            "embedding_size": d,
            "n_layers": item_layers,
            "reg_weight": reg,
            "image_knn_k": k_image,
            "text_knn_k": k_text,
            "dropout_rate": dropout,
            "data_path": folder + "/",
            "dataset": "toy",
        }
        Path(folder, "toy").mkdir()
        u, i = np.array(pairs).T
        feat = {m: torch.from_numpy(FEATURES[m]) for m in FEATURES}
        theirs = s.ref.SMORE(config, parity.Dataset(N_USERS, N_ITEMS, u, i, feat["image"], feat["text"]))
    return data, ours, theirs, parity.copy_weights(ours, theirs, MAPPING)


def compare_loss(data, ours, theirs):
    """Training mode; our dropout masks (if any) handed to MMRec's nn.Dropout, in order."""
    masks, drop = [], F.dropout

    def recording(x, p=0.5, training=True, inplace=False):
        y, mask = parity.same_draw(lambda t: drop(t, p, training), x)
        masks.append(mask)
        return y

    def their_dropout():
        handed = list(masks)
        return lambda x: x * handed.pop(0)

    torch.manual_seed(5)
    with parity.patched(F, "dropout", recording):
        ours.train()
        emb = ours(data)
    if ours.dropout > 0:
        assert len(masks) == 3
        del theirs.dropout
        theirs.dropout = their_dropout()
    # the total and the gradients: compare_step's forward returns the one above (whose masks MMRec got)
    with parity.patched(ours, "forward", lambda data_, emb=emb: emb):
        parity.compare_step(report, ours, theirs, data, BATCH, MAPPING, label="train: ")
    extra = ours.extra_losses(emb, BATCH)
    with torch.no_grad():  # their terms, from their forward
        if ours.dropout > 0:
            theirs.dropout = their_dropout()
        tu, ti, side, content = theirs.forward(theirs.norm_adj, train=True)
        mf, emb_loss, _ = theirs.bpr_loss(tu[BATCH.users], ti[BATCH.pos], ti[BATCH.neg[:, 0]])
        items, users = BATCH.pos + N_USERS, BATCH.users
        cl = theirs.InfoNCE(side[items], content[items], 0.2) + theirs.InfoNCE(side[users], content[users], 0.2)
    report.compare("train: BPR", RankingLoss("bpr")(emb, BATCH), mf)
    report.compare("train: reg_weight x reg", ours.reg_weight * extra["reg"].value, emb_loss)
    report.compare("train: InfoNCE", extra["cl"].value, cl)


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs; "
    f"image 7 / text 5 wide; batch {len(BATCH.users)} rows, one negative",
)
for d, lu, li, ki, kt, p in [(8, 2, 2, 4, 3, 0.0), (7, 3, 1, 3, 2, 0.0), (64, 4, 1, 4, 3, 0.1), (8, 2, 2, 4, 3, 0.3)]:
    report.section(f"d={d} ui_layers={lu} item_layers={li} image_k={ki} text_k={kt} dropout={p}")
    data, ours, theirs, unmapped = build(d, lu, li, ki, kt, dropout=p)
    report.note(f"{len(MAPPING)} parameters mapped; no counterpart in ours: {unmapped}")
    g = {v: ours.item_graphs[v].matrix.to_dense() for v in ours.views}
    report.compare("graph: adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    report.compare("graph: R", ours.user_items.matrix.to_dense(), theirs.R.to_dense())
    report.compare("graph: image kNN", g["image"], theirs.image_original_adj.to_dense())
    report.compare("graph: text kNN", g["text"], theirs.text_original_adj.to_dense())
    report.compare("graph: fusion", g["fusion"], theirs.fusion_adj.to_dense())
    parity.compare_forward(report, ours, data, theirs, theirs.norm_adj)
    compare_loss(data, ours, theirs)

print("\nShown, not checked:")
data, ours, theirs, _ = build(8, 2, 2, 4, 3, batch_size=2048)
ours.train(), theirs.train()
with torch.no_grad():
    mine = ours.reg_weight * ours.squared_l2(ours(data), BATCH)
    tu, ti = theirs.forward(theirs.norm_adj, train=True)[:2]
    _, their_reg, _ = theirs.bpr_loss(tu[BATCH.users], ti[BATCH.pos], ti[BATCH.neg[:, 0]])
print(
    f"  MMRec's L2 term divides by train_batch_size (2048), not the batch's rows: reg ours / theirs = "
    f"{(mine / their_reg).item():.4f} = 2048 / {len(BATCH.users)} ({2048 / len(BATCH.users):.4f})"
)
x = F.normalize(data.features["image"], dim=1)
top = (x @ x.T).topk(N_ITEMS, dim=1).values
data, ours, theirs, _ = build(8, 2, 2, N_ITEMS, 3)
ti = theirs.image_original_adj.to_dense()
print(
    f"  image k = {N_ITEMS} (all items): negative entries among the top-k {(top < 0).sum().item()}, "
    f"row sums of the raw kNN weights min {top.sum(1).min().item():.3f}; MMRec's image graph: "
    f"{(ti < 0).sum().item()} negative entries, {torch.isnan(ti).sum().item()} NaN; ours: "
    f"{(ours.item_graphs['image'].matrix.to_dense() < 0).sum().item()} negative"
)
report.finish()
