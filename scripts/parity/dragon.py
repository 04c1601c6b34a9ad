"""Parity check: sea/models/dragon.py (separation: none) against MMRec's
src/models/dragon.py, run as is.

Its user-graph file is written by MMRec's own preprocessing/dualgnn-gen-u-u-matrix.py
(imported from the checkout: its gen_user_matrix, then the lines of its __main__ that
make the per-user dict, in common.user_graph_dict). Stand-ins: the base class, config
and dataset (common.py) and a temporary data folder (MMRec caches mm_adj_<k>.pt there).
PyG is the real one. MMRec's hard-coded GCN width 64 is set to d. Deliberate differences
accounted for: MMRec keeps each item in its own kNN list (its item graph, shown, is then
copied into ours), and with its hard-coded user k = 40 pads short lists by a random draw
(its drawn user graph copied into ours); with a user k below that, a tie at the k-th
count may go to another user (each row's sorted weights compared). Compared: the graphs,
vectors and scores (eval), the loss / ln 2 (MMRec's BPR uses log2) and the gradients / ln 2.

    python scripts/parity/dragon.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import os
import tempfile

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("dragon")
gen_uu = s.load("ref_gen_u_u_matrix", parity.USER_GRAPH_SCRIPT)

from sea.losses import LN2  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.dragon import DRAGON, DRAGONConfig  # noqa: E402
from sea.models.graphs import FrozenGraph, knn_graph  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.user_graph_pairs(rng)
FEATS = parity.features(rng)


def copy_into(ours, theirs):
    """Our weights into MMRec's model; (name, ours, theirs) per mapped tensor."""
    mapped = []
    for m, gcn in (("image", theirs.v_gcn), ("text", theirs.t_gcn)):
        mapped.append((f"preference.{m}", ours.preference[m], gcn.preference))
        for k, lin in ((0, gcn.MLP), (2, gcn.MLP_1)):
            mapped += [(f"mlp.{m}.{k}.{p}", getattr(ours.mlp[m][k], p), getattr(lin, p)) for p in ("weight", "bias")]
    with torch.no_grad():
        for _, o, t in mapped:
            t.copy_(o)
        theirs.weight_u.copy_(ours.fusion.unsqueeze(2))  # [U, 2] -> [U, 2, 1]
    mapped.append(("fusion", ours.fusion, theirs.weight_u))
    assert {id(p) for _, p, _ in mapped} == {id(p) for p in ours.parameters()}
    return mapped


def run(d, hidden, knn_k, k_user, lam):
    """k_user: ours and MMRec's user k (MMRec's self.k set to it), or None for MMRec's
    hard-coded 40 with its random padding (its drawn graph then copied into ours)."""
    report.section(
        f"d={d} (MLP hidden {hidden}), knn_k={knn_k}, user k={k_user or '40 (MMRec, padded)'}, reg_weight={lam}"
    )
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATS)
    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    cfg = DRAGONConfig(embedding_dim=d, mlp_hidden_dim=hidden, knn_k=knn_k, user_knn_k=k_user or 40, reg_weight=lam)
    torch.manual_seed(0)
    ours = DRAGON.build(data, cfg, ["image", "text"])
    with tempfile.TemporaryDirectory() as tmp:  # fresh: MMRec caches mm_adj_<k>.pt there
        os.makedirs(os.path.join(tmp, "hand"))
        handed = {"user_graph_dict.npy": parity.user_graph_dict(gen_uu, tu, ti, N_USERS)}
        config = {
            "train_batch_size": 16,
            "embedding_size": 64,
            "feat_embed_dim": 64,
            "n_mm_layers": 1,
            "knn_k": knn_k,
            "mm_image_weight": 0.1,
            "aggr_mode": "add",
            "reg_weight": lam,
            "data_path": tmp + "/",
            "dataset": "hand",
            "user_graph_dict_file": "user_graph_dict.npy",
            "device": torch.device("cpu"),
        }
        np.random.seed(0)
        dataset = parity.Dataset(
            N_USERS, N_ITEMS, tu, ti, torch.from_numpy(FEATS["image"]), torch.from_numpy(FEATS["text"])
        )
        with parity.handed_files(s.ref, handed), parity.patched(s.ref, "GCN", parity.gcn_of_width(s.ref, d)):
            theirs = s.ref.DRAGON(config, dataset)
    # On the CPU, result_embed's .to(device) returns the Parameter itself, which forward() may
    # not re-assign a plain tensor; on a GPU it is a plain tensor: make it one.
    del theirs._parameters["result_embed"]
    theirs.result_embed = None
    if k_user is not None:
        theirs.k = k_user
    mapped = copy_into(ours, theirs)
    report.note(
        "no counterpart in ours: "
        + str(sorted(n for n, p in theirs.named_parameters() if all(p is not t for _, _, t in mapped)))
    )

    with torch.no_grad():
        a_theirs = theirs.v_gcn.conv_embed_1(torch.eye(N_USERS + N_ITEMS), theirs.edge_index)  # Â·I through PyG
    report.compare("graph: user-item adjacency", data.adj.to_dense(), a_theirs)
    mm_ours = ours.item_graph.matrix.to_dense()
    report.compare("graph: item-item as built (MMRec keeps self)", mm_ours, theirs.mm_adj.to_dense(), info=True)
    parts = []
    for m in ("image", "text"):  # MMRec's normalisation applied to our lists (itself left out)
        idx = knn_graph(torch.from_numpy(FEATS[m]), knn_k).to_sparse_coo().indices()
        parts.append(theirs.compute_normalized_laplacian(idx, (N_ITEMS, N_ITEMS)).to_dense())
    report.compare("graph: item-item, MMRec's normalisation of ours", mm_ours, 0.1 * parts[0] + 0.9 * parts[1])
    np.random.seed(1)
    theirs.pre_epoch_processing()
    # With fewer than 32 users torch reads MMRec's list of index lists as a tuple of indices
    # (numpy's legacy rule) and fails; from 32 users on as one index tensor, made here.
    theirs.epoch_user_graph = torch.as_tensor(theirs.epoch_user_graph)
    uu_theirs, uu_ours = parity.dense_user_graph(theirs, N_USERS), ours.user_graph.matrix.to_dense()
    differs = k_user is None or k_user < 10  # MMRec's padded draw, or its pick among users tied at the cut
    report.compare(
        "graph: user-user" + (" (padded draw / tie at the cut)" if differs else ""), uu_ours, uu_theirs, info=differs
    )
    if k_user is not None:  # each row's weights, whichever users they go to (a tie at the k-th count)
        report.compare("graph: user-user, each row's weights sorted", uu_ours.sort(1).values, uu_theirs.sort(1).values)
    ours.item_graph = FrozenGraph(theirs.mm_adj.coalesce())  # copied in (the deliberate difference)
    if (uu_ours - uu_theirs).abs().max() > 1e-6:  # MMRec's padded draw, or its pick among tied users
        ours.user_graph = FrozenGraph(uu_theirs.to_sparse())
        report.note("MMRec's user-user graph copied into ours")
    report.note("MMRec's item-item graph copied into ours")

    batch = parity.drawn_batch(tu, ti, 16, seed=2)
    users, pos, neg = batch.users, batch.pos, batch.neg[:, 0]
    ours.eval(), theirs.eval()
    with torch.no_grad():  # MMRec scores with the vectors of its last forward
        emb = ours(data)
        theirs.forward([users.clone(), pos.clone(), neg.clone()])  # it adds U to the item ids in place
        report.compare("eval: user vectors", emb.user, theirs.result_embed[:N_USERS])
        report.compare("eval: item vectors", emb.item, theirs.result_embed[N_USERS:])
        report.compare(
            "eval: score matrix",
            ours.score(emb, torch.arange(N_USERS)),
            theirs.full_sort_predict([torch.arange(N_USERS)]),
        )

    ours.train(), theirs.train()
    loss, _ = parity.our_loss(ours, data, batch)
    their_loss = theirs.calculate_loss([users.clone(), pos.clone(), neg.clone()])
    report.compare("loss / ln 2", loss / LN2, their_loss)
    loss.backward()
    their_loss.backward()
    for name, o, t in mapped:
        report.compare(f"grad / ln 2 {name}", o.grad / LN2, t.grad.squeeze(2) if name == "fusion" else t.grad)
    report.note(f"MMRec parameters without a gradient: {[n for n, p in theirs.named_parameters() if p.grad is None]}")


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs "
    "(user 11 shares no item, item 9 isolated); image 7 / text 5 wide",
)
run(64, 256, 3, 10, 1e-3)  # MMRec's widths; k = 10: every user keeps all its co-occurring users
run(64, 256, 3, None, 1e-3)  # MMRec's k = 40: its padded draw
run(8, 32, 4, 10, 0.1)
run(8, 32, 4, 3, 0.1)  # a cut at k = 3 (agrees where no tie straddles the cut)
report.finish()
