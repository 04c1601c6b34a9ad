"""Parity check: sea/models/grcn.py against MMRec's src/models/grcn.py, run as is.

Stand-ins: the base class, config and dataset (common.py); Tensor.cuda is the identity
(MMRec's loss builds torch.zeros(1).cuda()). PyG is the real one. Ours runs with routing
0: MMRec's n_layers = 3 routing iterations are a no-op (ours with the paper's routing, 3
iterations, shown against it). Settings: d = latent 8 and 64, image alone, and float64.
Compared: the training edges, the attention weights towards items and users, the refined
(pruned) edge weights, vectors and scores (eval), the loss and every gradient; MMRec with
text alone (its forward fails: content_rep misspelt) is shown.

    python scripts/parity/grcn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("grcn")

from sea.models.base import GraphData  # noqa: E402
from sea.models.grcn import GRCN  # noqa: E402

WIDTHS = {"image": 7, "text": 5}
g = np.random.default_rng(3)
USERS, ITEMS = parity.matrix_pairs(g, 0.3)  # distinct, sorted by (user, item)
RAW = {"image": g.normal(size=(N_ITEMS, 7)).astype(np.float32), "text": g.normal(size=(N_ITEMS, 5)).astype(np.float32)}


def run(d=8, latent=8, reg_weight=0.1, seed=0, modalities=("image", "text")):
    dtype = torch.get_default_dtype()
    report.section(
        f"{dtype}, {', '.join(f'{m} {WIDTHS[m]} wide' for m in modalities)}, embedding {d}, latent {latent}, "
        f"reg_weight {reg_weight}"
    )
    users, items = torch.tensor(USERS), torch.tensor(ITEMS)
    widths = {m: WIDTHS[m] for m in modalities}
    kw = {"embedding_dim": d, "latent_dim": latent, "reg_weight": reg_weight}
    torch.manual_seed(seed)
    ours = GRCN(N_USERS, N_ITEMS, widths, users, items, **kw)  # routing 0, 2 hops, confidence, pruning
    feats = {m: torch.tensor(RAW[m], dtype=dtype) for m in modalities}
    adj = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(len(users)), (N_USERS, N_ITEMS))
    data = GraphData(N_USERS, N_ITEMS, users, items, adj, feats)
    config = {
        "embedding_size": d,
        "latent_embedding": latent,
        "n_layers": 3,
        "train_batch_size": 4,
        "reg_weight": reg_weight,
        "device": torch.device("cpu"),
    }
    theirs = s.ref.GRCN(config, parity.Dataset(N_USERS, N_ITEMS, USERS, ITEMS, feats.get("image"), feats.get("text")))
    mapping = {"id_embedding": "id_gcn.id_embedding", "confidence": "model_specific_conf"}
    for m, gcn in (("image", "v_gcn"), ("text", "t_gcn")):
        if m in modalities:
            mapping |= {
                f"preference.{m}": f"{gcn}.preference",
                f"projection.{m}.weight": f"{gcn}.MLP.weight",
                f"projection.{m}.bias": f"{gcn}.MLP.bias",
            }
    report.check("every parameter of theirs mapped", not parity.copy_weights(ours, theirs, mapping))
    ei = theirs.edge_index
    report.check(
        "the same training edges, in the same order",
        ei[0].tolist() == ours.edge_users.tolist() and (ei[1] - N_USERS).tolist() == ours.edge_items.tolist(),
    )

    ours.eval(), theirs.eval()
    with torch.no_grad():
        emb = ours(data)
        rep = theirs.forward()
        parts = [ours.modality(feats[m], m) for m in ours.modalities]
        to_user, to_item = torch.cat([p[2] for p in parts], 1), torch.cat([p[3] for p in parts], 1)
        w_user, w_item = ours.edge_weights(to_user, to_item)
        E = len(users)
        # theirs: alpha of the doubled graph: first E (user->item, softmax over the item's
        # users), then E (item->user, over the user's items)
        gcns = {"image": "v_gcn", "text": "t_gcn"}
        alpha = torch.cat([getattr(theirs, gcns[m])(theirs.edge_index)[1] for m in modalities], 1)
        report.compare("attention towards the item [E, modalities]", to_item, alpha[:E])
        report.compare("attention towards the user [E, modalities]", to_user, alpha[E:])
        theirs.forward()
        wv = theirs.id_gcn.conv_embed_1.weight_vector  # the refined weights the id convolution used
        report.compare("refined weight towards the item [E]", w_item, wv[:E])
        report.compare("refined weight towards the user [E]", w_user, wv[E:])
        pruned = ((w_item == 0).sum() + (w_user == 0).sum()).item()
        report.check(
            "pruned edges (weight 0)",
            pruned == (wv == 0).sum().item(),
            f"ours {pruned}, theirs {(wv == 0).sum().item()} of {2 * E}",
        )
        report.compare("eval: user vectors [U, d + m x latent]", emb.user, rep[:N_USERS])
        report.compare("eval: item vectors [I, d + m x latent]", emb.item, rep[N_USERS:])
        report.compare(
            "eval: score matrix",
            ours.score(emb, torch.arange(N_USERS)),
            theirs.full_sort_predict([torch.arange(N_USERS)]),
        )
        paper = GRCN(N_USERS, N_ITEMS, widths, users, items, **kw, routing=3)
        paper.load_state_dict(ours.state_dict())
        report.compare(
            "ours with the paper's routing (3): user vectors", paper.eval()(data).user, rep[:N_USERS], info=True
        )

    batch = parity.drawn_batch(users, items, 16, seed=5)
    parity.compare_step(report, ours, theirs, data, batch, mapping, label="train: ")


report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(USERS)} training edges")
run(d=8, latent=8, reg_weight=0.1)
run(d=64, latent=64, reg_weight=1e-3)
run(d=8, latent=8, reg_weight=0.1, modalities=("image",))
torch.set_default_dtype(torch.float64)
report.rtol, rtol32 = 1e-12, report.rtol  # the float64 run: rounding only
run(d=8, latent=8, reg_weight=0.1)
torch.set_default_dtype(torch.float32)
report.rtol = rtol32
config = {
    "embedding_size": 8,
    "latent_embedding": 8,
    "n_layers": 3,
    "train_batch_size": 4,
    "reg_weight": 0.1,
    "device": torch.device("cpu"),
}
theirs = s.ref.GRCN(config, parity.Dataset(N_USERS, N_ITEMS, USERS, ITEMS, None, torch.tensor(RAW["text"])))
try:
    theirs.forward()
    print("\nMMRec, text alone: forward ran")
except Exception as e:  # noqa: BLE001
    print(f"\nMMRec, text alone (shown, not checked): forward fails, {type(e).__name__}: {e}")
report.finish()
