"""Parity check: sea/models/gume.py against the authors' src/models/gume.py
(github.com/NanGongNingYi/GUME, MMRec-based), run as is (with their src/utils/utils.py).

Stand-ins: the base class, config and dataset (common.py; their kNN graphs and links are
cached in a temporary folder), torch_scatter.scatter_add, numpy's removed ``np.int``.
Their link search hard-codes lists of 10, so knn_k = 10. Deliberate differences
accounted for: their kNN graphs are cosine-weighted with each item its own nearest
neighbour, so their links (the intersection of the lists, self dropped) are a subset of
ours (shown, checked); their normalisation (get_adj_mat) of OUR links is checked against
our enhanced adjacency, and their model is given our kNN graphs, enhanced adjacency and R
for the rest. Their feature tables are trainable, ours fixed (the same values). Their
noise is drawn for the whole user table: the same draw is handed to both sides, ours the
rows of the batch's (distinct) users. Compared: the graphs, vectors, the ID, modality and
explicit views and scores (eval), each loss term and the total, every gradient.

    python scripts/parity/gume.py --ref PATH/TO/GUME
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import common as parity
import numpy as np
import scipy.sparse as sp
import torch

s = parity.setup("gume")
if not hasattr(np, "int"):  # their add_edge's dtype=np.int (removed in numpy 1.24)
    np.int = int

from sea.batch import Batch  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.gume import GUME, GUMEConfig, common_neighbours, neighbour_lists  # noqa: E402

N_USERS, N_ITEMS, B = 40, 30, 16
rng = np.random.default_rng(0)
USERS, ITEMS = parity.connected_pairs(rng, N_USERS, N_ITEMS)
FEATS = parity.features(rng, N_ITEMS, (("image", 9), ("text", 7)))
PAIRS = list(zip(USERS.tolist(), ITEMS.tolist()))
BATCH_USERS = rng.choice(N_USERS, B, replace=False)  # distinct: their noise is drawn per user of the table
BATCH = Batch(
    torch.from_numpy(BATCH_USERS),
    torch.tensor([rng.choice(ITEMS[USERS == u]) for u in BATCH_USERS]),
    torch.from_numpy(rng.integers(0, N_ITEMS, size=(B, 1))),
)
MAPPING = {
    "user.weight": "user_embedding.weight",
    "item.weight": "item_id_embedding.weight",
    "attention.0.weight": "separate_coarse.0.weight",
    "attention.0.bias": "separate_coarse.0.bias",
    "attention.2.weight": "separate_coarse.2.weight",
}
for m in ("image", "text"):
    MAPPING[f"extended_users.{m}"] = f"extended_{m}_user.weight"
    for p in ("weight", "bias"):
        MAPPING |= {
            f"projections.{m}.{p}": f"{m}_reduce_dim.{p}",
            f"purifiers.{m}.{p}": f"{m}_trans_dim.0.{p}",
            f"preferences.{m}.{p}": f"{m}_behavior.0.{p}",
        }


@contextlib.contextmanager
def noise(draws, rows=None):
    """torch.rand_like handing out ``draws`` in turn (``rows``: their rows only)."""
    it = iter(draws)
    with parity.patched(torch, "rand_like", lambda x: next(it) if rows is None else next(it)[rows]):
        yield


def run(d, ui_layers, item_layers, **weights):
    report.section(f"d={d}, ui_layers={ui_layers}, item_layers={item_layers}, {weights}")
    data = GraphData.build(parity.frame([(u, i, "train") for u, i in PAIRS]), N_ITEMS, FEATS)
    cfg = GUMEConfig(embedding_dim=d, ui_layers=ui_layers, item_layers=item_layers, knn_k=10, **weights)
    torch.manual_seed(0)
    ours = GUME.build(data, cfg)
    config = {
        "bm_loss": cfg.bm_weight,
        "um_loss": cfg.um_weight,
        "vt_loss": cfg.vt_weight,
        "reg_weight_1": cfg.reg_weight,
        "reg_weight_2": cfg.extended_reg_weight,
        "bm_temp": cfg.bm_temperature,
        "um_temp": cfg.um_temperature,
        "n_ui_layers": ui_layers,
        "embedding_size": d,
        "knn_k": 10,
        "n_layers": item_layers,
        "data_path": "/",
        "dataset": "hand",
        "train_batch_size": B,
        "device": torch.device("cpu"),
    }
    feat = {m: torch.from_numpy(FEATS[m].copy()) for m in FEATS}
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # their files: cwd + data_path + dataset
        os.makedirs("hand")
        theirs = s.ref.GUME(config, parity.Dataset(N_USERS, N_ITEMS, USERS, ITEMS, feat["image"], feat["text"]), 0)
    unmapped = parity.copy_weights(ours, theirs, MAPPING)
    report.check(
        "theirs unmapped: their trainable feature tables",
        unmapped == ["image_embedding.weight", "text_embedding.weight"],
        str(unmapped),
    )

    their_links = {(int(i), j) for i, js in theirs.inter.items() for j in js}
    lists = [neighbour_lists(data.features[m], 10) for m in ("image", "text")]
    rows, cols = common_neighbours(lists)
    our_links = set(zip(rows.tolist(), cols.tolist()))
    report.check(
        "links: theirs (lists holding the item) all among ours",
        their_links <= our_links,
        f"theirs {len(their_links)}, ours {len(our_links)}, theirs among ours {len(their_links & our_links)}",
    )
    report.compare(
        "graph: enhanced adjacency, ours vs theirs (deliberate)",
        ours.adjacency.matrix.to_dense(),
        theirs.norm_adj.to_dense(),
        info=True,
    )
    links = sp.coo_matrix((np.ones(len(rows)), (rows.numpy(), cols.numpy())), shape=(N_ITEMS, N_ITEMS))
    their_norm = theirs.get_adj_mat(links.tolil())  # their normalisation of our links (sets their R too)
    report.compare(
        "graph: enhanced adjacency, their get_adj_mat of our links",
        ours.adjacency.matrix.to_dense(),
        their_norm.toarray(),
    )
    report.compare("graph: R, their get_adj_mat of our links", ours.user_item.matrix.to_dense(), theirs.R.toarray())
    for m in ("image", "text"):
        report.compare(
            f"graph: kNN {m}, ours vs theirs (deliberate)",
            ours.item_graphs[m].matrix.to_dense(),
            getattr(theirs, f"{m}_original_adj").to_dense(),
            info=True,
        )
        setattr(theirs, f"{m}_original_adj", ours.item_graphs[m].matrix.to_sparse_coo())
    theirs.norm_adj = ours.adjacency.matrix.to_sparse_coo()
    theirs.R = ours.user_item.matrix.to_sparse_coo()
    report.note("theirs given our kNN graphs, enhanced adjacency and R for what follows")

    U = N_USERS
    emb = parity.compare_forward(
        report, ours, data, theirs, forward=lambda: torch.split(theirs.forward(theirs.norm_adj), [U, N_ITEMS])
    )
    with torch.no_grad():
        _, (integration, extended_id, _), explicit = theirs.forward(theirs.norm_adj, train=True)
    report.compare("eval: ID view", emb.extras["id_view"], extended_id)
    report.compare("eval: modality view", emb.extras["modality_view"], integration)
    for m, a, b in zip(("image", "text"), emb.extras["views"], explicit):
        report.compare(f"eval: explicit view {m}", a, b)

    # training: every term, the same noise (drawn for the whole user table) on both sides
    draws = [torch.rand(U, d) for _ in range(4)]
    ours.train(), theirs.train()
    ours.zero_grad(), theirs.zero_grad()
    with noise(draws, BATCH.users):
        total, terms = parity.our_loss(ours, data, BATCH)
    u, p, n = BATCH.users, BATCH.pos, BATCH.neg[:, 0]
    with torch.no_grad(), noise(draws):
        e1, (integ, ext_id, ext_it), (h_image, h_text) = theirs.forward(theirs.norm_adj, train=True)
        fu, fi = torch.split(e1, [U, N_ITEMS])
        (iu, ii), (xu, xi), (eu, ei) = (torch.split(x, [U, N_ITEMS]) for x in (integ, ext_id, ext_it))
        bpr, reg = theirs.bpr_loss(fu[u], fi[p], fi[n])
        um_temp = cfg.um_temperature
        their_terms = {
            "bpr": bpr,
            "reg": reg,
            "bm": theirs.InfoNCE(iu[u], xu[u], cfg.bm_temperature) + theirs.InfoNCE(ii[p], xi[p], cfg.bm_temperature),
            "vt": theirs.align_vt(h_image, h_text),
            "um": theirs.InfoNCE(eu[u], iu[u], um_temp)
            + theirs.cal_noise_loss(u, iu, um_temp)
            + theirs.cal_noise_loss(u, eu, um_temp),
            "extended_reg": theirs.sq_sum(ei[p]) / B,
        }
    for k, v in their_terms.items():
        ours_k = cfg.reg_weight * terms[k] if k == "reg" else terms[k]  # their bpr_loss weights the penalty
        report.compare(f"train: loss {k}", ours_k, v)
    with noise(draws):
        their_total = theirs.calculate_loss([u, p, n])
    report.compare("train: loss total", total, their_total)
    total.backward()
    their_total.backward()
    # the attention's gradients are near-cancelling sums: rounding; its bias's is 5e-10 at
    # d 64, where ours in float32 and in float64 differ by 1.6e-3 of it
    slack = {k: 100 for k in MAPPING if k.startswith("attention.")} | {"attention.0.bias": 1000}
    parity.compare_grads(report, ours, theirs, MAPPING, label="train: grad ", slack=slack)


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(PAIRS)} training pairs (connected), image 9 / text 7 wide; "
    f"batch {B} (distinct users); knn_k 10",
)
ALL = {"reg_weight": 0.1, "extended_reg_weight": 0.2, "bm_weight": 0.3, "um_weight": 0.4, "vt_weight": 0.5}
run(8, 3, 2, **ALL)
run(8, 1, 1, **ALL, bm_temperature=0.2, um_temperature=0.2)
run(64, 3, 2)  # the authors' Baby setting
report.finish()
