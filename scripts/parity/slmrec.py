"""Parity check: sea/models/slmrec.py against MMRec's src/models/slmrec.py, run as is.

Stand-ins: the base class, its Config (missing keys read as None) and the train loader
(common.py); torch_scatter (imported, unused). sklearn is the real one.
  A. image (7) + text (5), MMRec's default path (dataset not 'kwai'): FAC, d = 8 / L = 2
     and d = 64 / L = 3. MMRec's FD / FM fail there (shown).
  B. image only, config dataset = data.input.dataset = 'kwai' (MMRec's one-modality path,
     the only one on which its FD / FM run): FAC (fine stage only), FD, FM, FD+FM, our
     draws handed to theirs (dropout masks, masked views). For FM / FD+FM MMRec's code is
     run as is (shown) and, checked, with its swap of the two copies' layer lists undone
     (the same file with the two lines swapped back, in memory).
Compared: the adjacency, vectors and scores (eval), the InfoNCE and SSL terms, the total
with Adam's coupled weight decay as a term, and the gradients (+ lambda theta).

    python scripts/parity/slmrec.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import types

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("slmrec")
# MMRec appends copy 1's propagated layers to copy 2's list and vice versa (in
# feature_dropout and feature_masking); this variant appends each to its own.
SWAP = {
    "embs_sub_2.append(ego_emb_sub_1)\n": "embs_sub_1.append(ego_emb_sub_1)\n",
    "embs_sub_1.append(ego_emb_sub_2)\n": "embs_sub_2.append(ego_emb_sub_2)\n",
}
unswapped = s.load("ref_slmrec_unswapped", s.file, replace=SWAP)

from sea.models.base import GraphData  # noqa: E402
from sea.models.slmrec import SLMRec  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATURES = parity.features(rng)
BATCH = parity.repeat_batch(rng, pairs, negatives=False)
MAPPING = {"user.weight": "embedding_user.weight", "item.weight": "embedding_item.weight"}
for ours_name, their_name in (
    ("projections.image", "v_dense"),
    ("projections.text", "t_dense"),
    ("item_fusion", "embedding_item_after_GCN"),
    ("user_fusion", "embedding_user_after_GCN"),
    ("fac_id", "g_i_iv"),
    ("fac_modality.image", "g_v_iv"),
    ("fac_chain.0", "g_iv_iva"),
    ("fac_chain.1", "g_iva_ivat"),
    ("fac_modality.text", "g_t_ivat"),
):
    MAPPING |= {f"{ours_name}.{q}": f"{their_name}.{q}" for q in ("weight", "bias")}
THEIR_IDX = {"id": 3, "image": 0, "text": 2}  # MMRec's masking indices (audio 1)


def build(modalities, d, layers, task, module=s.ref, alpha=0.3, ssl_temp=0.5, temp=0.2, wd=1e-2, p=0.3):
    data = GraphData.build(parity.frame(rows), N_ITEMS, {m: FEATURES[m] for m in modalities})
    torch.manual_seed(0)
    ours = SLMRec(
        N_USERS,
        N_ITEMS,
        {m: FEATURES[m].shape[1] for m in modalities},
        embedding_dim=d,
        layers=layers,
        temperature=temp,
        ssl_task=task.lower(),
        ssl_alpha=alpha,
        ssl_temp=ssl_temp,
        dropout_rate=p,
        weight_decay=wd,
    )
    kwai = modalities == ["image"]
    config = parity.Config(
        train_batch_size=2048,
        device=torch.device("cpu"),
        recdim=d,
        layer_num=layers,
        mm_fusion_mode="concat",
        temp=temp,
        ssl_task=task,
        ssl_alpha=alpha,
        ssl_temp=ssl_temp,
        dropout_rate=p,
        init="xavier",
        adj_type="pre",
        weight_decay=wd,
        dataset="kwai" if kwai else "toy",
    )
    if kwai:
        config["data.input.dataset"] = "kwai"
    feat = {m: torch.from_numpy(FEATURES[m]) if m in modalities else None for m in ("image", "text")}
    u, i = np.array(pairs).T
    theirs = module.SLMRec(config, parity.Dataset(N_USERS, N_ITEMS, u, i, feat["image"], feat["text"]))
    mapping = {k: v for k, v in MAPPING.items() if k in dict(ours.named_parameters())}
    return data, ours, theirs, mapping, parity.copy_weights(ours, theirs, mapping)


def compare_forward(label, data, ours, theirs):
    ours.eval(), theirs.eval()
    with torch.no_grad():
        emb = ours(data)
        scores = ours.score(emb, torch.arange(N_USERS))
        tu, ti = theirs.compute()
        theirs.all_users, theirs.all_items = tu, ti  # what full_sort_predict reads
        their_scores = theirs.full_sort_predict([torch.arange(N_USERS)])
    report.compare(f"{label}graph: adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense())
    report.compare(f"{label}eval: user vectors", emb.user, tu)
    report.compare(f"{label}eval: item vectors", emb.item, ti)
    report.compare(f"{label}eval: scores (sigmoid)", torch.sigmoid(scores), their_scores)
    report.compare(f"{label}eval: u.i", scores, tu @ ti.T)


class Recorder:
    """Wraps our model's draws (dropout outputs, masked views) to hand them to MMRec's code."""

    def __init__(self, ours):
        self.drops, self.masks = [], []
        drop, masks = ours.drop, ours.view_masks

        def rec_drop(x):
            y, keep = parity.same_draw(drop, x)
            self.drops.append(keep)
            return y

        def rec_masks():
            self.masks.append(masks())
            return self.masks[-1]

        ours.drop, ours.view_masks = rec_drop, rec_masks


def hand_draws(ours, theirs, rec, copy_of_chain):
    """MMRec's dropout calls come per view, per layer, chain 1 then chain 2; each gets the
    block of our mask for copy ``copy_of_chain[chain]`` and that view. Its two np.random
    draws get our masked views."""
    d, nv = ours.dim, ours.n_views
    blocks = [
        rec.drops[layer][:, (c * nv + v) * d : (c * nv + v + 1) * d]
        for v in range(nv if rec.drops else 0)
        for layer in range(ours.layers)
        for c in copy_of_chain
    ]
    if blocks:
        del theirs.dropout
        theirs.dropout = lambda x: x * blocks.pop(0)
    views = ["id", *ours.modalities]
    draws = [] if not rec.masks else [THEIR_IDX[views[int((rec.masks[0][c] == 0).nonzero())]] for c in copy_of_chain]
    fake = types.SimpleNamespace(random=types.SimpleNamespace(randint=lambda n: draws.pop(0)))
    return blocks, draws, fake


def compare_loss(label, data, ours, theirs, mapping, wd, copy_of_chain=(0, 1), info=False):
    """Loss terms, total and gradients of one batch, training mode, our draws handed over."""
    ours.train(), theirs.train()
    rec = Recorder(ours)
    torch.manual_seed(5)
    terms = ours.extra_losses(ours(data), BATCH)
    total = sum(t.weight * t.value for t in terms.values())
    ours.zero_grad()
    total.backward()
    blocks, draws, fake = hand_draws(ours, theirs, rec, copy_of_chain)
    g = type(theirs).feature_masking.__globals__
    real_np, g["np"] = g["np"], fake
    try:
        theirs.zero_grad()
        main = theirs.infonce(BATCH.users, BATCH.pos)
        ssl = theirs.compute_ssl(BATCH.users, BATCH.pos)
        loss = main + theirs.config["ssl_alpha"] * ssl
        loss.backward()
        assert not blocks and not draws, "every handed draw is used"
        again = (
            theirs.calculate_loss([BATCH.users, BATCH.pos, BATCH.neg[:, 0]]) if not (rec.drops or rec.masks) else None
        )
    finally:
        g["np"] = real_np
    their_p = dict(theirs.named_parameters())
    decay = 0.5 * sum(their_p[v].detach().pow(2).sum() for v in mapping.values())  # Adam's coupled λθ, as a term
    report.compare(f"{label}loss infonce", terms["infonce"].value, main, info=info)
    report.compare(f"{label}loss ssl", terms["ssl"].value, ssl, info=info)
    report.compare(f"{label}loss total (+ weight decay)", total, loss + wd * decay, info=info)
    if again is not None:
        report.compare(f"{label}their calculate_loss vs its parts", again, loss)
    ours_p = dict(ours.named_parameters())
    for k, v in mapping.items():  # Adam(weight_decay=λ) adds λθ; the InfoNCE sums: rounding up to ~1e-5
        report.compare(
            f"{label}grad {k}", ours_p[k].grad, their_p[v].grad + wd * their_p[v].detach(), info=info, slack=10
        )
    report.note(f"without a gradient in MMRec: {sorted(k for k, q in their_p.items() if q.grad is None)}")


report = parity.Report(
    s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs; batch {len(BATCH.users)} pairs"
)
for d, layers in ((8, 2), (64, 3)):
    report.section(f"A: image + text, FAC (MMRec's default path), d={d} L={layers}")
    data, ours, theirs, mapping, unmapped = build(["image", "text"], d, layers, "FAC")
    report.note(f"{len(mapping)} parameters mapped; no counterpart in ours: {unmapped}")
    compare_forward("A: ", data, ours, theirs)
    compare_loss("A: ", data, ours, theirs, mapping, 1e-2)
for task in ("FD", "FM", "FD+FM"):
    data, ours, theirs, mapping, _ = build(["image", "text"], 8, 2, task)
    theirs.train()
    try:
        theirs.calculate_loss([BATCH.users, BATCH.pos, BATCH.neg[:, 0]])
        report.note(f"A, {task}: MMRec runs (unexpected)")
    except Exception as e:  # noqa: BLE001
        report.note(f"A, {task}: MMRec fails (shown, not checked): {type(e).__name__}: {e}")

for task in ("FAC", "FD", "FM", "FD+FM"):
    for module, variant in ((s.ref, "as is"), (unswapped, "swap undone")):
        if task == "FAC" and module is unswapped:
            continue
        report.section(f"B: image only ('kwai'), {task}, MMRec {variant}")
        data, ours, theirs, mapping, unmapped = build(["image"], 8, 2, task, module=module)
        if task == "FAC":
            report.note(f"{len(mapping)} mapped; no counterpart in ours: {unmapped}")
            compare_forward("B: ", data, ours, theirs)
        # MMRec's copy-1 list holds copy 2's propagated layers (as is): its chain 2 is our copy 0.
        chains = (1, 0) if module is s.ref else (0, 1)
        swapped = module is s.ref and task in ("FM", "FD+FM")  # MMRec's swap: shown, not checked
        compare_loss(f"B {task} ({variant}): ", data, ours, theirs, mapping, 1e-2, chains, info=swapped)
report.finish()
