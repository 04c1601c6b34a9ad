"""Parity check: sea/models/damrs.py against MMRec's src/models/damrs.py, run as is.

Stand-ins: the base class, config and dataset (common.py), and the offline
item_graph_dict_2.npy, built here as the authors' build_iib_graph.py builds it (pairs of
items sharing >= 2 users, top-k by count; ties to the lower id, as ours). Random weights
far from the initial ones, so that the feedback weights vary. Three seeds / settings
(24 items: MMRec hard-codes 10 pseudo-positives of each kind). Compared: the adjacency and
the three item graphs, vectors and scores (eval), the pseudo-positive sets, each loss term
alone (MMRec returns only the weighted sum: a term is (BPR + 1·term) - BPR) with its
gradients, and the full objective. ``--float64``: both sides in float64.

    python scripts/parity/damrs.py --ref PATH/TO/MMRec [--float64]
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch

s = parity.setup("damrs", float64=True)

from sea.batch import Batch  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.damrs import DAMRS, DAMRSConfig  # noqa: E402

N_USERS, N_ITEMS = 12, 24


def authors_item_graph_dict(users, items, top_k, stable_ties):
    """The authors' build_iib_graph.py: pairs sharing >= 2 users, their count; top-k of
    each row by torch.topk (stable_ties: ties to the lower id, as ours)."""
    sets = [set(users[items == i].tolist()) for i in range(N_ITEMS)]
    m = torch.zeros(N_ITEMS, N_ITEMS)
    for a in range(N_ITEMS):
        for b in range(a + 1, N_ITEMS):
            c = len(sets[a] & sets[b])
            if c >= 2:
                m[a, b] = m[b, a] = c
    out = {}
    for i in range(N_ITEMS):
        k = min(int((m[i] != 0).sum()), top_k)
        if stable_ties:
            order = sorted(range(N_ITEMS), key=lambda j: (-float(m[i, j]), j))[:k]
            out[i] = [order, [float(m[i, j]) for j in order]]
        else:
            t = torch.topk(m[i], k)
            out[i] = [t.indices.tolist(), t.values.tolist()]
    return out


def make_data(seed):
    g = np.random.default_rng(seed)
    rows = [
        (u, int(i), "train") for u in range(N_USERS) for i in g.choice(N_ITEMS, size=g.integers(4, 9), replace=False)
    ]
    for i in range(N_ITEMS):  # every item has a training user
        if not any(r[1] == i for r in rows):
            rows.append((int(g.integers(N_USERS)), i, "train"))
    return GraphData.build(parity.frame(rows), N_ITEMS, parity.features(g, N_ITEMS))


def make_batch(data, seed, size=16):
    """Training pairs, one negative each that the user has not seen."""
    g = np.random.default_rng(seed)
    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    seen = set(zip(tu.tolist(), ti.tolist()))
    rows = g.choice(len(tu), size=size, replace=False)
    neg = []
    for u in tu[rows]:
        while (int(u), j := int(g.integers(N_ITEMS))) in seen:
            pass
        neg.append(j)
    return Batch(torch.as_tensor(tu[rows]), torch.as_tensor(ti[rows]), torch.as_tensor(neg).unsqueeze(1))


def run(cfg, seed):
    data = make_data(seed)
    torch.manual_seed(seed)
    ours = DAMRS.build(data, DAMRSConfig(**cfg), ["image", "text"])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        ours.user.weight.copy_(torch.randn(ours.user.weight.shape, generator=gen))
        ours.item.weight.copy_(torch.randn(ours.item.weight.shape, generator=gen))
    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    graph_dict = authors_item_graph_dict(tu, ti, cfg["behaviour_knn_k"], stable_ties=True)
    plain = authors_item_graph_dict(tu, ti, cfg["behaviour_knn_k"], stable_ties=False)
    tie_rows = sum(sorted(graph_dict[i][0]) != sorted(plain[i][0]) for i in range(N_ITEMS))
    handed = {"item_graph_dict_2.npy": graph_dict}
    config = {
        "embedding_size": cfg["embedding_dim"],
        "lambda_coeff": 0.9,
        "cf_model": "lightgcn",
        "knn_k": cfg["knn_k"],
        "n_mm_layers": cfg["mm_layers"],
        "n_ui_layers": cfg["ui_layers"],
        "reg_weight": 0.0,
        "kl_weight": cfg["kl_weight"],
        "neighbor_weight": cfg["neighbor_weight"],
        "data_path": "handed/",  # nothing is read from disk: handed_files
        "dataset": "toy",
        "item_graph_dict_file": "item_graph_dict_2.npy",
        "device": torch.device("cpu"),
    }
    dataset = parity.Dataset(
        data.n_users, N_ITEMS, tu, ti, data.features["image"].clone(), data.features["text"].clone()
    )
    with parity.handed_files(s.ref, handed):
        theirs = s.ref.DAMRS(config, dataset)
    with torch.no_grad():
        theirs.user_embedding.weight.copy_(ours.user.weight)
        theirs.item_id_embedding.weight.copy_(ours.item.weight)
    if s.float64:  # both sides in float64 (the graphs as built, in float32, converted)
        ours.double(), theirs.double()
        data.adj = data.adj.double()
        for name in ("norm_adj", "image_adj", "text_adj", "session_adj"):
            setattr(theirs, name, getattr(theirs, name).double())
    report.note(f"behaviour rows where plain torch.topk's tie order would pick other items: {tie_rows}")
    report.note(
        "MMRec parameters without counterpart: "
        + str(
            [n for n, _ in theirs.named_parameters() if n not in ("user_embedding.weight", "item_id_embedding.weight")]
        )
    )

    # graphs
    eye = torch.eye(N_ITEMS, dtype=ours.item.weight.dtype)
    report.compare("graph: user-item adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense(), float32=True)
    for j, (name, adj) in enumerate(
        [("image", theirs.image_adj), ("text", theirs.text_adj), ("behaviour", theirs.session_adj)]
    ):
        report.compare(f"graph: {name}", ours.graphs[j](eye), adj.to_dense(), float32=True)
        report.check(f"graph: {name}, the same entries", torch.equal(ours.graphs[j](eye) != 0, adj.to_dense() != 0))
    assert data.n_users + N_ITEMS == theirs.n_nodes

    ours.eval(), theirs.eval()
    with torch.no_grad():
        emb = ours(data)
        u_g, i_g, h_t, h_v, h_s = theirs.forward()
        report.compare("eval: user vectors", emb.user, u_g)
        report.compare("eval: item vectors", emb.item, i_g + (h_t + h_v + h_s) / 3.0)
        report.compare(
            "eval: score matrix",
            ours.score(emb, torch.arange(data.n_users)),
            theirs.full_sort_predict([torch.arange(data.n_users)]),
        )

    # align_item's pseudo-positives: the same sets per view and item
    batch = make_batch(data, seed + 100)
    users, pos, neg = batch.users, batch.pos, batch.neg[:, 0]
    ours.train(), theirs.train()
    with torch.no_grad():
        views = ours(data).extras["views"]  # image, text, behaviour
        ids = torch.unique(torch.cat([pos, neg]))
        mine = ours.pseudo_positives([torch.nn.functional.normalize(h, dim=1) for h in views], ids)
        lp = {v: theirs.label_prediction(h[ids], h) for v, h in zip("vts", views)}
        their_pp = [
            theirs.generate_pesudo_labels(lp["t"], lp["s"], lp["v"]),
            theirs.generate_pesudo_labels(lp["v"], lp["s"], lp["t"]),
            theirs.generate_pesudo_labels(lp["t"], lp["v"], lp["s"]),
        ]
        differ = sum(
            set(a[r].tolist()) != set(b[r].tolist())
            for (m1, s1), (m2, s2) in zip(mine, their_pp)
            for a, b in ((m1, m2), (s1, s2))
            for r in range(len(ids))
        )
    report.check("pseudo-positive sets that differ", differ == 0, f"{differ} of {6 * len(ids)} (views x kinds x items)")

    # each term alone, and the full objective (train mode; no dropout or draws on either side)
    params = [ours.user.weight, ours.item.weight]
    their_params = [theirs.user_embedding.weight, theirs.item_id_embedding.weight]

    def theirs_loss(nw, kl):
        theirs.neighbor_weight, theirs.kl_weight = nw, kl
        loss = theirs.calculate_loss([users, pos, neg])
        return loss, torch.autograd.grad(loss, their_params)

    bpr, bpr_g = theirs_loss(0.0, 0.0)
    their_terms = {"denoised_bpr": (bpr, bpr_g)}
    for name, (nw, kl) in {"align_item": (1.0, 0.0), "align_user": (0.0, 1.0)}.items():
        full, full_g = theirs_loss(nw, kl)
        their_terms[name] = (full - bpr, [f - b for f, b in zip(full_g, bpr_g)])
    for name, (value, grads) in their_terms.items():
        mine = ours.extra_losses(ours(data), batch)[name].value
        my_g = torch.autograd.grad(mine, params, allow_unused=True)
        # a term alone is the difference of two of MMRec's totals: their rounding, near-cancelling
        slack = 1 if name == "denoised_bpr" else 20
        report.compare(f"loss {name}", mine, value, slack=slack)
        for nm, g, tg in zip(["user", "item"], my_g, grads):
            report.compare(f"grad {name} {nm}", torch.zeros_like(tg) if g is None else g, tg, slack=slack)
    ours.zero_grad()
    total = sum(t.weight * t.value for t in ours.extra_losses(ours(data), batch).values())
    total.backward()
    theirs.neighbor_weight, theirs.kl_weight = cfg["neighbor_weight"], cfg["kl_weight"]
    their_loss = theirs.calculate_loss([users, pos, neg])
    report.compare("loss total", total, their_loss)
    for p, tg, nm in zip(params, torch.autograd.grad(their_loss, their_params), ["user", "item"]):
        report.compare(f"grad total {nm}", p.grad, tg)
    w_pos, w_neg = ours.feedback_weights(ours(data).user[users], ours(data).extras["views"], batch)
    report.note(f"total loss {total.item():.5f}; rows with w- > 0: {int((w_neg > 0).sum())}")


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, 4-8 items a user, image 7 / text 5 wide; batch of 16",
    rtol64=1e-6,
)  # the graphs are built in float32 on both sides: ~1e-7 apart in float64 too
base = dict(
    embedding_dim=8,
    ui_layers=2,
    mm_layers=1,
    knn_k=4,
    behaviour_knn_k=2,
    behaviour_min_common=2,
    kl_weight=1.0,
    neighbor_weight=1e-3,
    pseudo_k=10,
    temperature=0.2,
)
for seed, extra in [(1, {}), (2, {"knn_k": 10, "ui_layers": 3, "mm_layers": 2}), (3, {"embedding_dim": 64})]:
    report.section(f"seed {seed}: {base | extra}")
    run(base | extra, seed)
report.finish()
