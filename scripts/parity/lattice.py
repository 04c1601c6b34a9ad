"""Parity check: sea/models/lattice.py (separation: none) against MMRec's
src/models/lattice.py, run as is (cf_model lightgcn, as MMRec's LATTICE.yaml).

MMRec's own src/utils/utils.py (build_sim, build_knn_neighbourhood,
compute_normalized_laplacian) and common/loss.py are used as they are; stand-ins: the base
class, config and dataset (common.py); the initial graphs' cache files go to a fresh
temporary folder. Deliberate differences accounted for: MMRec's user-item adjacency
D^-1(A + I) is shown against ours, then OUR symmetric-normalised adjacency is handed to
MMRec's forward; MMRec's trainable raw-feature tables have no counterpart (their gradients
shown). Compared: the initial item graphs, the learned item graph A (eval rebuild, and
cached in training), vectors and scores (eval), the loss and gradients on the epoch's
first batch (rebuild) and a second (cached A); with knn_k = n_items (rows summing to <= 0:
ours gives them degree factor 0, MMRec NaN) the NaN counts are shown.

    python scripts/parity/lattice.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import os
import tempfile

import common as parity
import numpy as np
import pandas as pd
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("lattice")

from sea.batch import Batch  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.lattice import LATTICE, LATTICEConfig  # noqa: E402

B = 16
rng = np.random.default_rng(0)
pairs = sorted(
    {(u, int(i)) for u in range(N_USERS) for i in rng.choice(N_ITEMS, size=rng.integers(2, 5), replace=False)}
)
users, items = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
FEATS = parity.features(rng)
data = GraphData.build(pd.DataFrame({"user": users, "item": items, "split": "train"}), N_ITEMS, FEATS)
g = torch.Generator().manual_seed(3)
rows = torch.randperm(len(users), generator=g)[:B]
BATCH = Batch(torch.as_tensor(users)[rows], torch.as_tensor(items)[rows], torch.randint(N_ITEMS, (B, 1), generator=g))
MAPPING = parity.mmrec_mapping() | {"modal_weight": "modal_weight"}
TMP = tempfile.TemporaryDirectory()  # MMRec caches its initial graphs as files there


def build_pair(d, feat, k, cf_layers, n_layers, lam, reg):
    torch.manual_seed(0)
    cfg = LATTICEConfig(
        embedding_dim=d,
        feat_embed_dim=feat,
        cf_layers=cf_layers,
        n_layers=n_layers,
        knn_k=k,
        lambda_coeff=lam,
        reg_weight=reg,
        knn_chunk=4,
    )
    ours = LATTICE.build(data, cfg)
    with torch.no_grad():  # modality weights away from their equal start, so that alpha matters
        ours.modal_weight.copy_(torch.tensor([-0.3, 0.4]))
    folder = tempfile.mkdtemp(dir=TMP.name)
    config = {
        "embedding_size": d,
        "feat_embed_dim": feat,
        "weight_size": [d] * cf_layers,
        "knn_k": k,
        "lambda_coeff": lam,
        "cf_model": "lightgcn",
        "n_layers": n_layers,
        "reg_weight": reg,
        "mess_dropout": [0.1] * cf_layers,
        "data_path": folder + "/",
        "dataset": "tiny",
        "train_batch_size": B,
        "device": "cpu",
    }
    os.makedirs(folder + "/tiny")
    feats = {m: torch.from_numpy(x) for m, x in FEATS.items()}
    theirs = s.ref.LATTICE(config, parity.Dataset(N_USERS, N_ITEMS, users, items, feats["image"], feats["text"]))
    return ours, theirs, parity.copy_weights(ours, theirs, MAPPING)


def ours_item_graph(ours):
    """Our eval-time A, densified from the learned graph's lists and the initial graphs."""
    with torch.no_grad():
        neighbours, weights, alpha = ours.learned_graph(ours.item_features(data.features)[0])
        return ours.frozen_item_graph(neighbours, weights, alpha)[0].to_dense()


def check(**kw):
    report.section(str(kw))
    ours, theirs, unmapped = build_pair(**kw)
    report.note(f"MMRec parameters without counterpart: {unmapped}")
    for m in ("image", "text"):
        report.compare(f"graph: initial {m}", ours.initial[m].matrix.to_dense(), getattr(theirs, f"{m}_original_adj"))
    report.compare(
        "graph: user-item adjacency (differs by design)", data.adj.to_dense(), theirs.norm_adj.to_dense(), info=True
    )
    theirs.norm_adj = data.adj.to_sparse_coo()  # ours handed to MMRec's forward (documented difference)
    parity.compare_forward(report, ours, data, theirs, theirs.norm_adj, build_item_graph=True)
    report.compare("graph: item graph A (eval rebuild)", ours_item_graph(ours), theirs.item_adj)

    ours.on_epoch_start(1, torch.Generator())
    theirs.pre_epoch_processing()
    for step in ("batch 1 (A rebuilt)", "batch 2 (A cached)"):
        parity.compare_step(report, ours, theirs, data, BATCH, MAPPING, label=f"{step}: ")
        if step.startswith("batch 1"):
            report.compare("graph: item graph A (train, cached)", ours.cached[0].to_dense(), theirs.item_adj)
        grads = {t: theirs.get_parameter(t).grad for t in unmapped}
        report.note(
            "their gradients without counterpart, max |.|: "
            + ", ".join(f"{t} {0.0 if g is None else g.abs().max().item():.2e}" for t, g in grads.items())
        )


report = parity.Report(
    s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs, image 7 / text 5 wide; batch {B}"
)
check(d=8, feat=6, k=4, cf_layers=2, n_layers=1, lam=0.9, reg=1e-3)
check(d=8, feat=6, k=3, cf_layers=1, n_layers=2, lam=0.5, reg=1e-2)
check(d=64, feat=64, k=5, cf_layers=2, n_layers=1, lam=0.9, reg=1e-5)

print(f"\n== knn_k = n_items = {N_ITEMS} (rows summing to <= 0; shown, not checked)")
ours, theirs, _ = build_pair(d=8, feat=6, k=N_ITEMS, cf_layers=2, n_layers=1, lam=0.9, reg=1e-3)
for m, x in FEATS.items():
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    print(f"  {m}: rows of the raw cosine matrix summing to <= 0: {int(((xn @ xn.T).sum(1) <= 0).sum())}")
theirs.norm_adj = data.adj.to_sparse_coo()
ours.eval(), theirs.eval()
with torch.no_grad():
    emb = ours(data)
    _, ti = theirs.forward(theirs.norm_adj, build_item_graph=True)
print(f"  NaN entries of the item vectors: ours {int(emb.item.isnan().sum())}, MMRec {int(ti.isnan().sum())}")
report.finish()
