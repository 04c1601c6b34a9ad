"""Parity check: sea/models/vbpr.py (separation: none) against MMRec's src/models/vbpr.py,
run as is.

MMRec's common/loss.py and common/init.py are its own; the base class (with the features
v_feat / t_feat, either may be None), config and dataset are stand-ins (common.py).
MMRec concatenates the features as [text; image], ours in ``model.modalities`` order
([image; text] by default): E's column blocks are reordered when copied into MMRec's
item_linear (and its gradient back to compare). E's bias gets no BPR gradient in exact
arithmetic (it shifts every item's content part alike), only the penalty's: both sides'
bias gradients are also compared with a float64 copy of ours.

    python scripts/parity/vbpr.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import copy
import dataclasses

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("vbpr")

from sea.models.base import GraphData  # noqa: E402
from sea.models.vbpr import VBPR, VBPRConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
THEIR_PAIRS = parity.shuffled(rng, pairs)
FEATURES = parity.features(rng)
BATCHES = {"9 triples": parity.sampled_batch(rng, pairs, 9), "20 triples": parity.sampled_batch(rng, pairs, 20)}
MAPPING = {
    "user": "u_embedding",
    "item_id": "i_embedding",
    "content.weight": "item_linear.weight",
    "content.bias": "item_linear.bias",
}
WITHOUT_BIAS = {k: v for k, v in MAPPING.items() if k != "content.bias"}


def build(d, reg, modalities):
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATURES)
    torch.manual_seed(0)
    ours = VBPR.build(data, VBPRConfig(embedding_dim=d, reg_weight=reg, separation="none"), modalities)
    assert ours.separation is None
    feat = {m: torch.from_numpy(FEATURES[m]) if m in modalities else None for m in FEATURES}
    dataset = parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"])
    theirs = s.ref.VBPR({"device": torch.device("cpu"), "embedding_size": d, "reg_weight": reg}, dataset)
    unmapped = parity.copy_weights(ours, theirs, MAPPING)
    # E's columns in MMRec's order [text; image]
    starts = {m: sum(ours.feature_dims[: ours.modalities.index(m)]) for m in ours.modalities}
    widths = dict(zip(ours.modalities, ours.feature_dims))
    cols = torch.cat([torch.arange(starts[m], starts[m] + widths[m]) for m in ("text", "image") if m in modalities])
    with torch.no_grad():
        theirs.item_linear.weight.copy_(ours.content.weight[:, cols])
    return data, ours, theirs, cols, unmapped


report = parity.Report(s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs, image 7 / text 5 wide")
SETTINGS = [
    (8, 2.0, ("image", "text")),
    (8, 1e-2, ("image", "text")),
    (64, 1e-3, ("image", "text")),
    (8, 0.1, ("text", "image")),
    (8, 0.0, ("image", "text")),
    (8, 0.1, ("image",)),
    (8, 0.1, ("text",)),
]
for d, reg, modalities in SETTINGS:
    data, ours, theirs, cols, unmapped = build(d, reg, modalities)
    report.section(f"d={d} reg_weight={reg} modalities={modalities} (ours f = [{'; '.join(ours.modalities)}])")
    report.note(f"E's columns in MMRec's order: {cols.tolist()}; theirs without counterpart: {unmapped or 'none'}")
    parity.compare_forward(report, ours, data, theirs)
    back = {"item_linear.weight": lambda g, cols=cols: g[:, torch.argsort(cols)]}
    for name, batch in BATCHES.items():
        parity.compare_step(report, ours, theirs, data, batch, WITHOUT_BIAS, label=f"[{name}] ", to_ours=back)
        # near an exact 0 (reg_weight 0): rounding alone; checked against float64 below
        report.compare(f"[{name}] grad content.bias", ours.content.bias.grad, theirs.item_linear.bias.grad, info=True)
        exact = copy.deepcopy(ours).double()  # E's bias gradient in float64, ours
        data64 = dataclasses.replace(data, features={m: x.double() for m, x in data.features.items()})
        parity.our_loss(exact, data64, batch)[0].backward()
        b64 = exact.content.bias.grad
        # absolute: the exact value is the penalty's gradient alone (0 with reg_weight 0)
        report.record(
            f"[{name}] E's bias grad, ours vs float64", (ours.content.bias.grad - b64).abs().max().item(), atol=2e-7
        )
        report.record(
            f"[{name}] E's bias grad, theirs vs float64",
            (theirs.item_linear.bias.grad - b64).abs().max().item(),
            atol=2e-7,
        )
report.finish()
