"""Parity check: sea/models/dualgnn.py (separation: none) against MMRec's
src/models/dualgnn.py, run as is.

Its user-graph file is written by MMRec's own preprocessing/dualgnn-gen-u-u-matrix.py
(imported from the checkout, as for DRAGON: common.user_graph_dict). Stand-ins: the base
class, config and dataset (common.py; MMRec gets the training pairs in another order) and
a temporary data folder. PyG is the real one. MMRec's hard-coded GCN width 64 is set to d
(its MLP's hidden width is 4d; its two hops are our ui_layers = 2). Deliberate differences
accounted for: MMRec's in-place fusion, α_v·h^v + (α_v + α_t)·h^t, is ours with
(α_v, α_t) = (w_v, w_v + w_t) (our weights copied in as w = (α_v, α_t − α_v), the fusion
gradient mapped back); its penalty on w and on the unused weight_i is replaced by ours on
α (its loss as is shown); with its hard-coded k = 40 it pads short lists by a random draw
(its drawn graph copied into ours), and with a k below a row's count a tie at the k-th
count may go to another user (each row's sorted weights compared, its graph copied in).
Compared: the graphs, vectors and scores (eval), the loss / ln 2 (MMRec's BPR uses log2)
and the gradients / ln 2.

    python scripts/parity/dualgnn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("dualgnn")
gen_uu = s.load("ref_gen_u_u_matrix", parity.USER_GRAPH_SCRIPT)

from sea.losses import LN2  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.dualgnn import DualGNN, DualGNNConfig  # noqa: E402
from sea.models.graphs import FrozenGraph  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.user_graph_pairs(rng)
FEATS = parity.features(rng)
THEIR_ORDER = parity.shuffled(rng, pairs)


def copy_into(ours, theirs, modalities):
    """Our weights into MMRec's model; (name, ours, theirs) per mapped tensor."""
    mapped = []
    for m in modalities:
        gcn = theirs.v_gcn if m == "image" else theirs.t_gcn
        mapped.append((f"preference.{m}", ours.preference[m], gcn.preference))
        for k, lin in ((0, gcn.MLP), (2, gcn.MLP_1)):
            mapped += [(f"mlp.{m}.{k}.{p}", getattr(ours.mlp[m][k], p), getattr(lin, p)) for p in ("weight", "bias")]
    with torch.no_grad():
        for _, o, t in mapped:
            t.copy_(o)
        if ours.fusion is not None:  # MMRec's (w_v, w_t) weighs (h^v, h^v + h^t): w = (α_v, α_t − α_v)
            a = ours.fusion
            theirs.weight_u.copy_(torch.stack([a[:, 0], a[:, 1] - a[:, 0]], 1).unsqueeze(2))
            mapped.append(("fusion", a, theirs.weight_u))
    assert {id(p) for _, p, _ in mapped} == {id(p) for p in ours.parameters()}
    return mapped


def run(modalities, d, k_user, lam):
    """k_user: ours and MMRec's user k (MMRec's self.k set to it), or None for MMRec's
    hard-coded 40 with its random padding (its drawn graph then copied into ours)."""
    report.section(
        f"{'+'.join(modalities)}, d={d} (MLP hidden {4 * d}), user k={k_user or '40 (MMRec, padded)'}, reg_weight={lam}"
    )
    data = GraphData.build(parity.frame(rows), N_ITEMS, {m: FEATS[m] for m in modalities})
    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    cfg = DualGNNConfig(embedding_dim=d, mlp_hidden_dim=4 * d, ui_layers=2, user_knn_k=k_user or 40, reg_weight=lam)
    torch.manual_seed(0)
    ours = DualGNN.build(data, cfg, list(modalities))
    feat = {m: torch.from_numpy(FEATS[m]) if m in modalities else None for m in ("image", "text")}
    handed = {"user_graph_dict.npy": parity.user_graph_dict(gen_uu, tu, ti, N_USERS)}
    config = {
        "train_batch_size": 16,
        "embedding_size": 64,
        "aggr_mode": "add",
        "reg_weight": lam,
        "data_path": "handed/",  # nothing is read from disk: handed_files
        "dataset": "hand",
        "user_graph_dict_file": "user_graph_dict.npy",
        "device": torch.device("cpu"),
    }
    np.random.seed(0)
    dataset = parity.Dataset(N_USERS, N_ITEMS, *THEIR_ORDER, feat["image"], feat["text"])
    with parity.handed_files(s.ref, handed), parity.patched(s.ref, "GCN", parity.gcn_of_width(s.ref, d)):
        theirs = s.ref.DualGNN(config, dataset)
    # On the CPU, result_embed's .to(device) returns the Parameter itself, which forward() may
    # not re-assign a plain tensor; on a GPU it is a plain tensor: make it one.
    del theirs._parameters["result_embed"]
    theirs.result_embed = None
    if k_user is not None:
        theirs.k = k_user
    mapped = copy_into(ours, theirs, modalities)
    report.note(
        "no counterpart in ours: "
        + str(sorted(n for n, p in theirs.named_parameters() if all(p is not t for _, _, t in mapped)))
    )

    gcn = theirs.v_gcn if "image" in modalities else theirs.t_gcn
    with torch.no_grad():
        a_theirs = gcn.conv_embed_1(torch.eye(N_USERS + N_ITEMS), theirs.edge_index)  # Â·I through PyG
    report.compare("graph: user-item adjacency", data.adj.to_dense(), a_theirs)
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
    if (uu_ours - uu_theirs).abs().max() > 1e-6:
        ours.user_graph = FrozenGraph(uu_theirs.to_sparse())
        report.note("MMRec's user-user graph copied into ours")

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
    report.compare("loss / ln 2 vs MMRec's as is (its penalty)", loss / LN2, their_loss, info=True)
    # MMRec's penalty on (w, weight_i) replaced by ours on the fusion weights α(w) (none with one modality)
    w = theirs.weight_u.squeeze(2)
    their_loss = their_loss - lam * ((theirs.weight_u**2).mean() + (theirs.weight_i**2).mean())
    if ours.fusion is not None:
        their_loss = their_loss + lam * (torch.stack([w[:, 0], w[:, 0] + w[:, 1]], 1) ** 2).mean()
    report.compare("loss / ln 2 (MMRec's with our penalty on α)", loss / LN2, their_loss)
    loss.backward()
    their_loss.backward()
    for name, o, t in mapped:
        g = t.grad
        if name == "fusion":  # dL/dα from dL/dw: α = (w_v, w_v + w_t)
            g = torch.stack([g[:, 0, 0] - g[:, 1, 0], g[:, 1, 0]], 1)
        report.compare(f"grad / ln 2 {name}", o.grad / LN2, g)
    report.note(f"MMRec parameters without a gradient: {[n for n, p in theirs.named_parameters() if p.grad is None]}")


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs "
    "(user 11 shares no item, item 9 isolated); image 7 / text 5 wide",
)
run(("image", "text"), 64, 10, 1e-3)  # MMRec's widths; k = 10: every user keeps all its co-occurring users
run(("image", "text"), 64, None, 1e-3)  # MMRec's k = 40: its padded draw
run(("image", "text"), 8, 10, 0.1)
run(("image", "text"), 8, 3, 0.1)  # a cut at k = 3 (agrees where no tie straddles the cut)
run(("image",), 8, 10, 0.1)
run(("text",), 8, 10, 0.1)
report.finish()
