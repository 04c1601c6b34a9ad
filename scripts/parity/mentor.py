"""Parity check: sea/models/mentor.py against the authors' src/models/mentor.py
(github.com/Jinfeng-Xu/MENTOR, MMRec-based), run as is.

Stand-ins: the base class, config and dataset (common.py), a temporary data folder (their
model caches mm_adj_<k>.pt there and reads a user-graph file: an empty one, never used).
PyG is the real one. Their hard-coded sizes (width 64, MLP hidden 256, two user-item
hops) are ours here. Their four noisy encoders get copies of our scored encoders. The
batch holds every user once and every item once as a positive, so that their InfoNCE over
all users and items is ours over the batch's. Deliberate differences accounted for: their
BPR is log2 (ours = ln 2 x theirs); their mask_f has no gradient and their noisy views
have encoders of their own, so the gradients are compared with mask_f and mask_g off on
both sides, and mask_g's alone: our shared encoders' gradient against the sum of their two
noisy copies'. Compared: the item graph, vectors and scores (eval), the loss (all terms,
the same seed on both sides: the same noise and dropout masks, drawn in the same order),
mask_g alone, the gradients.

    python scripts/parity/mentor.py --ref PATH/TO/MENTOR
"""

from __future__ import annotations

import os
import tempfile

import common as parity
import numpy as np
import torch

s = parity.setup("mentor")

from sea.batch import Batch  # noqa: E402
from sea.losses import LN2  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.mentor import MENTOR, MENTORConfig  # noqa: E402

N, D = 30, 64  # users = items; their hard-coded width
rng = np.random.default_rng(0)
USERS, ITEMS = parity.connected_pairs(rng, N, N)
FEATS = parity.features(rng, N, (("image", 9), ("text", 7)))
order = torch.from_numpy(rng.permutation(N))
BATCH = Batch(order, order, torch.from_numpy(rng.integers(0, N, size=(N, 1))))  # (u, u): training pairs
GCN = {"id": "id_gcn", "image": "v_gcn", "text": "t_gcn"}
MAPPING = {"id_table": "id_feat", "fusion": "weight_u", "predictor.weight": "mlp.weight", "predictor.bias": "mlp.bias"}
for v, g in GCN.items():
    MAPPING |= {f"preference.{v}": f"{g}.preference"}
    MAPPING |= {
        f"mlp.{v}.{k}.{p}": f"{g}.{lin}.{p}" for k, lin in ((0, "MLP"), (2, "MLP_1")) for p in ("weight", "bias")
    }
NOISY = {
    o: [t.replace("_gcn", f"_gcn_n{j}") for j in (1, 2)] for o, t in MAPPING.items() if t[:5] in ("v_gcn", "t_gcn")
}


def build(item_layers, weights):
    data = GraphData.build(parity.frame([(u, i, "train") for u, i in zip(USERS, ITEMS)]), N, FEATS)
    cfg = MENTORConfig(embedding_dim=D, mlp_hidden_dim=4 * D, ui_layers=2, knn_k=10, item_layers=item_layers, **weights)
    torch.manual_seed(0)
    ours = MENTOR.build(data, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "hand"))
        config = {
            "embedding_size": D,
            "feat_embed_dim": D,
            "n_mm_layers": item_layers,
            "knn_k": 10,
            "mm_image_weight": cfg.image_knn_weight,
            "dropout": cfg.dropout,
            "reg_weight": cfg.reg_weight,
            "align_weight": cfg.align_weight,
            "mask_weight_g": cfg.mask_weight_g,
            "mask_weight_f": cfg.mask_weight_f,
            "temp": cfg.temperature,
            "data_path": tmp + "/",
            "dataset": "hand",
            "user_graph_dict_file": "u_u.npy",
            "train_batch_size": N,
            "device": torch.device("cpu"),
        }
        np.random.seed(0)
        feat = {m: torch.from_numpy(FEATS[m].copy()) for m in FEATS}
        with parity.handed_files(s.ref, {"u_u.npy": {}}):  # an empty user graph
            theirs = s.ref.MENTOR(config, parity.Dataset(N, N, USERS, ITEMS, feat["image"], feat["text"]))
    # on the CPU their result_embed* stay registered Parameters (nn.Parameter(...).to(cpu) is the
    # same object) and forward's re-assignment would raise; on a GPU plain tensors: made so
    for name in [n for n in theirs._parameters if n.startswith("result_embed")]:
        del theirs._parameters[name]
        setattr(theirs, name, None)
    parity.copy_weights(ours, theirs, MAPPING)
    their_p, ours_p = dict(theirs.named_parameters()), dict(ours.named_parameters())
    with torch.no_grad():  # their noisy encoders: copies of our scored ones
        for o, copies in NOISY.items():
            for t in copies:
                their_p[t].copy_(ours_p[o])
    return data, ours, theirs


def interaction():
    return [BATCH.users.clone(), BATCH.pos.clone(), BATCH.neg[:, 0].clone()]  # their forward adds U in place


def run(item_layers, weights):
    report.section(f"item_layers {item_layers}, {weights}")
    data, ours, theirs = build(item_layers, weights)
    report.compare("graph: item-item", ours.item_graph.matrix.to_dense(), theirs.mm_adj.to_dense())

    ours.eval()
    with torch.no_grad():
        emb = ours(data)
        theirs.forward(interaction())
        their_scores = theirs.full_sort_predict([torch.arange(N)])
    report.compare("eval: user vectors", emb.user, theirs.result_embed[:N])
    report.compare("eval: item vectors", emb.item, theirs.result_embed[N:])
    report.compare("eval: score matrix", ours.score(emb, torch.arange(N)), their_scores)

    ours.train()
    torch.manual_seed(3)
    total, terms = parity.our_loss(ours, data, BATCH)
    torch.manual_seed(3)
    their_total = theirs.calculate_loss(interaction())
    report.compare("train: loss (all terms) / ln 2", total / LN2, their_total)
    n1, n2 = theirs.result_embed_n1, theirs.result_embed_n2
    their_g = theirs.InfoNCE(n1[:N], n2[:N], theirs.temp) + theirs.InfoNCE(n1[N:], n2[N:], theirs.temp)
    report.compare("train: mask_g value", terms["mask_g"], their_g)

    # mask_g alone: our shared encoders' gradient = the sum of their two noisy copies'
    ours.zero_grad(), theirs.zero_grad()
    torch.manual_seed(4)
    ours.graph_contrast(ours(data), BATCH).backward()
    torch.manual_seed(4)
    theirs.forward(interaction())
    n1, n2 = theirs.result_embed_n1, theirs.result_embed_n2
    (theirs.InfoNCE(n1[:N], n2[:N], theirs.temp) + theirs.InfoNCE(n1[N:], n2[N:], theirs.temp)).backward()
    their_p, ours_p = dict(theirs.named_parameters()), dict(ours.named_parameters())
    for o, (t1, t2) in NOISY.items():
        report.compare(f"mask_g: grad {o} vs their two copies'", ours_p[o].grad, their_p[t1].grad + their_p[t2].grad)
    report.compare("mask_g: grad fusion", ours.fusion.grad, theirs.weight_u.grad)

    # BPR + reg + align: mask_f and mask_g off on both sides
    data, ours, theirs = build(item_layers, weights | {"mask_weight_f": 0.0, "mask_weight_g": 0.0})
    ours.train()
    total, _ = parity.our_loss(ours, data, BATCH)
    their_total = theirs.calculate_loss(interaction())
    report.compare("BPR + reg + align: loss / ln 2", total / LN2, their_total)
    total.backward()
    their_total.backward()
    for name in ("v_preference", "t_preference", "id_preference"):  # forward's aliases of the GCNs' preferences
        theirs._parameters.pop(name)  # (registered on the CPU, as result_embed*): their names back
    parity.compare_grads(report, ours, theirs, MAPPING, scale=1 / LN2, label="BPR + reg + align: grad / ln 2 ")


report = parity.Report(
    s,
    f"{N} users x {N} items, {len(USERS)} training pairs (connected), image 9 / text 7 wide; d {D}, MLP hidden "
    f"{4 * D}, 2 user-item hops, knn_k 10; batch: every user and every item once",
)
ALL = {"reg_weight": 0.1, "align_weight": 0.2, "mask_weight_f": 1.5, "dropout": 0.5, "mask_weight_g": 0.3}
run(1, ALL)
run(2, ALL | {"temperature": 0.4})
run(1, {"mask_weight_g": 1e-3})  # the authors' setting otherwise
report.finish()
