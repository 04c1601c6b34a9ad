"""Parity check: sea/models/mmgcf.py (separation: none) against MMRec's src/models/mmgcf.py,
run as is.

Stand-ins: the base class, config and dataset (common.py), torch.sparse.FloatTensor. All
nine fusion_mode x weighting pairs, alpha set to 0.3 on both sides (the gate exercised).
MMRec's torch.multinomial draw of the epoch's kept edges is handed OUR draw (the kept-edge
count, round vs MMRec's int, and the generator are the documented differences; the
dropout is chosen so that the counts agree). With concat MMRec creates all three fusion
layers: those the weighting does not read have no counterpart. Compared: the adjacency
and the pruning weights, vectors and scores (eval), the pruned adjacency, the loss and
the gradient of every parameter. The biases that shift every item vector by the same
amount (zero gradient in exact arithmetic: BPR compares items of one user) are checked
against an absolute tolerance.

    python scripts/parity/mmgcf.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("mmgcf")

from sea.models.base import GraphData  # noqa: E402
from sea.models.mmgcf import FUSIONS, MMGCF, WEIGHTINGS, MMGCFConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATS = parity.features(rng)
THEIR_PAIRS = parity.shuffled(rng, pairs)
BATCH = parity.repeat_batch(rng, pairs)
D, LAYERS, REG, DROPOUT = 8, 2, 0.1, 0.5  # E = 28 edges: 14 kept on both sides
NOISE_ATOL = 1e-7  # the shift-invariant biases' gradients: rounding noise on both sides


def mapping(ours):
    m = parity.mmrec_mapping() | {"alpha": "mm_alpha"}
    for o, t in (("fuse_all", "all_concat_layer"), ("fuse_modalities", "mm_concat_layer")):
        m |= {f"{o}.{p}": f"{t}.{p}" for p in ("weight", "bias")}
    m |= {f"fuse_id_modal.{p}": f"id_mm_concat_layer.{p}" for p in ("weight", "bias")}
    return {o: t for o, t in m.items() if o in dict(ours.named_parameters())}


def shift_invariant(weighting):
    """Our parameters that add the same vector to every item (zero gradient under BPR)."""
    names = {"fuse_all.bias", "fuse_id_modal.bias", "fuse_modalities.bias"}
    if weighting != "normalized":
        names |= {f"projections.{m}.bias" for m in ("image", "text")}
    return names


def run(fusion, weighting):
    report.section(f"fusion_mode {fusion}, weighting {weighting}")
    feat_dim = 6 if fusion == "concat" else D
    cfg = MMGCFConfig(
        embedding_dim=D,
        feat_dim=feat_dim,
        layers=LAYERS,
        reg_weight=REG,
        fusion_mode=fusion,
        weighting=weighting,
        dropout=DROPOUT,
    )
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATS)
    torch.manual_seed(0)
    ours = MMGCF.build(data, cfg, ["image", "text"])
    if ours.alpha is not None:
        with torch.no_grad():
            ours.alpha.fill_(0.3)
    config = {
        "train_batch_size": 2048,
        "device": torch.device("cpu"),
        "embedding_size": D,
        "feat_embed_dim": feat_dim,
        "n_ui_layers": LAYERS,
        "reg_weight": REG,
        "fusion_mode": fusion,
        "weighting": weighting,
        "dropout": DROPOUT,
    }
    feat = {m: torch.from_numpy(FEATS[m]) for m in FEATS}
    theirs = s.ref.MMGCF(config, parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"]))
    m = mapping(ours)
    report.note(f"no counterpart in ours: {parity.copy_weights(ours, theirs, m)}")

    report.compare("graph: user-item adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    to_ours = parity.their_edge_positions(
        torch.stack([ours.edge_users, ours.edge_items]), *theirs.edge_indices, range(theirs.edge_indices.shape[1])
    )
    report.compare("pruning weights 1/sqrt(d_u d_i)", ours.edge_weight[to_ours], theirs.edge_values)
    parity.compare_forward(report, ours, data, theirs, theirs.norm_adj)

    parity.hand_our_draw(report, ours, theirs, 5)
    report.compare(
        "pruned adjacency (our draw handed over)", ours.pruned.matrix.to_dense(), theirs.masked_adj.to_dense()
    )

    noise = shift_invariant(weighting)
    parity.compare_step(report, ours, theirs, data, BATCH, {o: t for o, t in m.items() if o not in noise})
    ours_p, their_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for o in sorted(noise & set(m)):
        g_ours, g_theirs = ours_p[o].grad, their_p[m[o]].grad
        ab, rel, ref = parity.diff(g_ours, g_theirs)
        report.record(f"grad (zero in exact arithmetic) {o}", ab, rel, ref, atol=NOISE_ATOL)
        report.note(f"  max |grad| ours {g_ours.abs().max().item():.1e}, MMRec's {g_theirs.abs().max().item():.1e}")


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs (item 9 isolated), image 7 / text 5 wide; "
    f"d={D} (feat_dim 6 with concat), {LAYERS} layers, reg_weight {REG}, dropout {DROPOUT}; "
    f"batch {len(BATCH.users)} triples",
)
for fusion in FUSIONS:
    for weighting in WEIGHTINGS:
        run(fusion, weighting)
report.finish()
