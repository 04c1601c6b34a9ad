"""Parity check: sea/models/cohesion.py against the authors' src/models/cohesion.py
(github.com/Jinfeng-Xu/COHESION, MMRec-based), run as is.

Their user-user lists come from their own preprocessing/dualgnn-gen-u-u-matrix.py
(imported from the checkout; the per-user dict made as its __main__ makes it, ties by
increasing user id as ours). Stand-ins: the base class, config and dataset (common.py),
a temporary data folder (their model writes mm_adj_<k>.pt there and reads the user-graph
dict from it). Their hard-coded sizes: width 64 and MLP hidden 4 x 64, so d = 64 / 256 on
both sides; their hard-coded user k = 40 is set to ours before pre_epoch_processing.
Compared: the three graphs, vectors and scores (eval), the loss / ln 2 (theirs less the
constant penalty of their unused weight_u) and the gradients / ln 2.

    python scripts/parity/cohesion.py --ref PATH/TO/COHESION
"""

from __future__ import annotations

import os
import tempfile

import common as parity
import numpy as np
import pandas as pd
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("cohesion")
gen_uu = s.load("ref_gen_u_u_matrix", parity.USER_GRAPH_SCRIPT)

from sea.batch import Batch  # noqa: E402
from sea.losses import LN2  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.cohesion import COHESION as Ours  # noqa: E402
from sea.models.cohesion import COHESIONConfig  # noqa: E402

g = np.random.default_rng(3)
users, items = parity.matrix_pairs(g, 0.35, last_user_items=[N_ITEMS - 2])  # user 11: one item, maybe shared by no one
V, T = g.normal(size=(N_ITEMS, 7)).astype(np.float32), g.normal(size=(N_ITEMS, 5)).astype(np.float32)


def run(ui_layers=2, item_layers=1, knn_k=3, user_k=3, reg_weight=0.1, seed=0):
    report.section(
        f"ui_layers {ui_layers}, item_layers {item_layers}, knn_k {knn_k}, user k {user_k}, reg_weight {reg_weight}"
    )
    data = GraphData.build(
        pd.DataFrame({"user": users, "item": items, "split": "train"}), N_ITEMS, {"image": V, "text": T}
    )
    cfg = COHESIONConfig(
        embedding_dim=64,
        mlp_hidden_dim=256,
        ui_layers=ui_layers,
        item_layers=item_layers,
        knn_k=knn_k,
        user_knn_k=user_k,
        reg_weight=reg_weight,
        detach_id=True,
    )
    torch.manual_seed(seed)
    ours = Ours.build(data, cfg, ["image", "text"])
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "toy"))
        handed = {"u_u.npy": parity.user_graph_dict(gen_uu, users, items, N_USERS, tie_order=True)}
        config = {
            "embedding_size": 64,
            "feat_embed_dim": 64,
            "n_mm_layers": item_layers,
            "n_layers": 2,
            "knn_k": knn_k,
            "mm_image_weight": 0.1,
            "dropout": 0.0,
            "num_layer": ui_layers,
            "reg_weight": reg_weight,
            "data_path": tmp + "/",
            "dataset": "toy",
            "user_graph_dict_file": "u_u.npy",
            "train_batch_size": 8,
            "device": torch.device("cpu"),
        }
        np.random.seed(seed)
        with parity.handed_files(s.ref, handed):
            theirs = s.ref.COHESION(
                config, parity.Dataset(N_USERS, N_ITEMS, users, items, torch.tensor(V), torch.tensor(T))
            )
    # on CPU their result_embed stays a registered Parameter (nn.Parameter(...).to(cpu) is the
    # same object) and forward's `self.result_embed = torch.cat(...)` would raise; on CUDA
    # .to() returns a plain tensor. Unregistered (dead: overwritten by every forward).
    del theirs._parameters["result_embed"]
    theirs.result_embed = None
    theirs.k = user_k  # their hard-coded 40
    padded = {u: len(lists[0]) for u, lists in theirs.user_graph_dict.items() if 0 < len(lists[0]) < user_k}
    # their re-drawn padding changes nothing for a user with a single co-occurring user
    report.check("users padded at random have one co-occurring user", all(n == 1 for n in padded.values()), str(padded))
    theirs.pre_epoch_processing()
    # their neighbour lists are a list of lists; torch reads such an index as a tensor only
    # from 32 rows on (their data sets), below as a tuple of indices: handed as a tensor
    theirs.epoch_user_graph = torch.tensor(theirs.epoch_user_graph)

    mapping = {"item_id": theirs.id_feat}
    for m, gcn in (("id", theirs.id_gcn), ("image", theirs.v_gcn), ("text", theirs.t_gcn)):
        pref, mlp = ("id_preference", "id_mlp") if m == "id" else (f"preference.{m}", f"mlp.{m}")
        mapping |= {
            pref: gcn.preference,
            f"{mlp}.0.weight": gcn.MLP.weight,
            f"{mlp}.0.bias": gcn.MLP.bias,
            f"{mlp}.2.weight": gcn.MLP_1.weight,
            f"{mlp}.2.bias": gcn.MLP_1.bias,
        }
    params = dict(ours.named_parameters())
    state = params | {n: b for n, b in ours.named_buffers() if n in mapping}  # id_*: our fixed buffers
    assert set(state) >= set(mapping) and set(params) <= set(mapping)
    with torch.no_grad():
        for n, p in mapping.items():
            p.copy_(state[n])
    report.note(
        f"mapped {len(mapping)} tensors ({len(params)} our parameters, {len(mapping) - len(params)} our "
        "fixed buffers); theirs without counterpart: "
        + str([n for n, p in theirs.named_parameters() if all(p is not q for q in mapping.values())])
    )

    report.compare("graph: user-item adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    report.compare("graph: item-item (knn, mixed)", ours.item_graph.matrix.to_dense(), theirs.mm_adj.to_dense())
    s_theirs = torch.zeros(N_USERS, N_USERS)
    for u in range(N_USERS):
        for j, w in zip(theirs.epoch_user_graph[u], theirs.user_weight_matrix[u]):
            s_theirs[u, j] += w
    report.compare("graph: user-user", ours.user_graph.matrix.to_dense(), s_theirs)

    gen = torch.Generator().manual_seed(seed + 1)
    b_idx = torch.randperm(len(users), generator=gen)[:8]
    bu, bp = torch.tensor(users)[b_idx], torch.tensor(items)[b_idx]
    bn = torch.randint(0, N_ITEMS, (8,), generator=gen)
    ours.eval(), theirs.eval()
    emb = ours(data)
    theirs.forward([bu.clone(), bp.clone(), bn.clone()])  # sets result_embed (adds n_users in place: clones)
    report.compare("eval: user vectors", emb.user, theirs.result_embed[:N_USERS])
    report.compare("eval: item vectors", emb.item, theirs.result_embed[N_USERS:])
    report.compare("eval: score matrix", emb.user @ emb.item.T, theirs.full_sort_predict([torch.arange(N_USERS)]))

    ours.train(), theirs.train()
    ours.zero_grad(), theirs.zero_grad()
    terms = ours.extra_losses(ours(data), Batch(bu, bp, bn.unsqueeze(1)))
    loss = sum(term.weight * term.value for term in terms.values())
    their_loss = theirs.calculate_loss([bu.clone(), bp.clone(), bn.clone()])
    weight_u_term = reg_weight * (theirs.weight_u**2).mean()  # their dead weight_u's penalty: a constant
    report.note(
        f"their loss {their_loss.item():.6f} includes the constant penalty of weight_u, "
        f"{weight_u_term.item():.3g}; ours is ln 2 x the rest"
    )
    report.compare("loss / ln 2 vs theirs less weight_u's term", loss / LN2, their_loss - weight_u_term)
    loss.backward()
    their_loss.backward()
    for n, p in mapping.items():
        if n in params:
            report.compare(f"grad / ln 2 {n}", params[n].grad / LN2, p.grad)
        else:  # our fixed buffer: theirs gets no gradient either (id_rep.data)
            report.check(f"no gradient on theirs: {n}", p.grad is None or p.grad.abs().max() == 0)
    report.check(
        "no gradient on their feature tables",
        all(p.grad is None or p.grad.abs().max() == 0 for n, p in theirs.named_parameters() if "embedding" in n),
    )


report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, image 7 / text 5 wide, d 64, MLP hidden 256")
for kw in ({"ui_layers": 1}, {"ui_layers": 2}, {"ui_layers": 2, "item_layers": 2, "knn_k": 4, "user_k": 2}):
    run(**kw)
report.finish()
