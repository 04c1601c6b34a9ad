"""Parity check: sea/models/bm3.py (separation: none) against MMRec's src/models/bm3.py,
run as is.

MMRec's common/loss.py (EmbLoss) is its own; the base class, config and dataset are
stand-ins (common.py). The targets' dropout masks are drawn here once per whole table
(users, items, each modality's projections) and handed to both sides: MMRec's ``F.dropout``
(its module's ``F``) and our ``model.targets`` apply the same mask (ours on its distinct-row
slices). 30 settings: modalities (both, image, text) x layers 0-2 x dropout 0/0.3/0.5 at
d=8, reg 0.1, cl 2; + reg 0.01; reg 0 and cl 0; d=64. Compared: the adjacency, online and
predicted vectors and scores (eval), the loss and each of its terms, the gradients, and
the trainer's own step. Relative differences per entry. ``--float64``: both sides in
float64 (MMRec then reads our adjacency), to tell rounding from a real difference.

    python scripts/parity/bm3.py --ref PATH/TO/MMRec [--float64]
"""

from __future__ import annotations

import types

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("bm3", float64=True)

from sea.models.base import GraphData  # noqa: E402
from sea.models.bm3 import BM3, BM3Config  # noqa: E402
from sea.train import train_step  # noqa: E402

B = 16
rng = np.random.default_rng(0)
train, rows = parity.hand_graph(rng, denser=True)  # item 9: isolated
E = len(train)
FEATS = parity.features(rng)
DATA = GraphData.build(parity.frame(rows), N_ITEMS, FEATS)
if s.float64:
    DATA.adj = DATA.adj.to(torch.float64)
    DATA.features = {m: x.double() for m, x in DATA.features.items()}
    torch.set_default_dtype(torch.float64)  # MMRec's EmbLoss sums into torch.zeros(1)
THEIR_PAIRS = parity.shuffled(rng, train)
BATCH = parity.drawn_batch(DATA.train_users, DATA.train_items, B, seed=7)
assert len(set(BATCH.users.tolist())) < B and len(set(BATCH.pos.tolist())) < B  # users and items repeat
MAPPING = parity.mmrec_mapping() | {"predictor.weight": "predictor.weight", "predictor.bias": "predictor.bias"}


def models(mods, d, layers, dropout, reg, cl):
    torch.manual_seed(0)
    cfg = {"embedding_dim": d, "layers": layers, "dropout": dropout, "reg_weight": reg, "cl_weight": cl}
    ours = BM3.build(DATA, BM3Config.from_dict(cfg, "bm3"), mods)
    feat = {m: torch.as_tensor(FEATS[m]) if m in mods else None for m in ("image", "text")}
    dataset = parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"])
    config = {
        "embedding_size": d,
        "feat_embed_dim": d,
        "n_layers": layers,
        "reg_weight": reg,
        "cl_weight": cl,
        "dropout": dropout,
        "device": torch.device("cpu"),
        "train_batch_size": B,
    }
    torch.manual_seed(1)
    theirs = s.ref.BM3(config, dataset)
    if s.float64:
        ours.double(), theirs.double()
    mapping = {o: t for o, t in MAPPING.items() if o in dict(ours.named_parameters())}
    unmapped = parity.copy_weights(ours, theirs, mapping)
    return ours, theirs, mapping, unmapped


class SharedDropout:
    """The same masks for both sides: one per whole table (user, item, each modality)."""

    def __init__(self, p, d, seed):
        g = torch.Generator().manual_seed(seed)
        self.p = p
        self.masks = {
            k: (torch.rand(n, d, generator=g) >= p).float()
            for k, n in [("user", N_USERS), ("item", N_ITEMS), ("image", N_ITEMS), ("text", N_ITEMS)]
        }

    def apply(self, x, mask):
        return x * mask / (1 - self.p) if self.p > 0 else x.clone()

    def theirs(self, mods):
        calls = iter(["user", "item"] + [m for m in ("text", "image") if m in mods])  # MMRec's call order

        def dropout(x, p=0.5, training=True, inplace=False):
            assert p == self.p and training
            return self.apply(x, self.masks[next(calls)])

        return types.SimpleNamespace(dropout=dropout), calls

    def ours(self, mods, users, items):
        calls = iter([("user", users), ("item", items)] + [(m, items) for m in mods])  # our call order

        def targets(x):
            k, rows = next(calls)
            with torch.no_grad():
                return self.apply(x.detach(), self.masks[k][rows])

        return targets, calls


def their_terms(theirs, batch):
    """MMRec's loss, and its cosine terms recorded in the order it computes them."""
    seen = []
    cosine = s.ref.cosine_similarity

    def recording(a, b, dim=-1):
        c = cosine(a, b, dim=dim)
        seen.append(1 - c.mean())
        return c

    with parity.patched(s.ref, "cosine_similarity", recording):
        loss = theirs.calculate_loss((batch.users, batch.pos, batch.neg[:, 0]))
    return loss, seen


SETTINGS = [
    (mods, 8, layers, dropout, 0.1, 2.0)
    for mods in (["image", "text"], ["image"], ["text"])
    for layers in (0, 1, 2)
    for dropout in (0.0, 0.3, 0.5)
]
SETTINGS += [
    (["image", "text"], 8, 2, 0.5, 0.01, 2.0),
    (["image", "text"], 8, 1, 0.5, 0.0, 0.0),
    (["image", "text"], 64, 2, 0.5, 0.1, 2.0),
]
report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {E} training edges (item 9 "
    f"isolated), image 7 / text 5 wide; batch of {B} pairs; {len(SETTINGS)} settings: modalities x layers "
    "0-2 x dropout 0/0.3/0.5 at d=8, reg 0.1, cl 2; + reg 0.01; reg 0 and cl 0; d=64",
    elementwise=True,
    quiet=True,
)
unmapped_seen = set()
for n, (mods, d, layers, dropout, reg, cl) in enumerate(SETTINGS):
    ours, theirs, mapping, unmapped = models(mods, d, layers, dropout, reg, cl)
    if cl > 0:
        unmapped_seen |= set(unmapped)
    report.compare("graph: normalised adjacency", DATA.adj.to_dense(), theirs.norm_adj.to_dense(), float32=True)
    if s.float64:  # after the graph comparison (float32 on both sides): MMRec reads ours
        theirs.norm_adj = DATA.adj.to_sparse_coo()

    ours.eval(), theirs.eval()
    with torch.no_grad():
        emb = ours(DATA)
        ou, oi = ours.online(DATA.adj)
        tu, ti = theirs.forward()
        report.compare("eval: online user vectors", ou, tu)
        report.compare("eval: online item vectors", oi, ti)
        report.compare("eval: predicted user vectors", emb.user, theirs.predictor(tu))
        report.compare("eval: predicted item vectors", emb.item, theirs.predictor(ti))
        report.compare(
            "eval: score matrix",
            ours.score(emb, torch.arange(N_USERS)),
            theirs.full_sort_predict((torch.arange(N_USERS),)),
        )

    # training loss and gradients, the same dropout masks on both sides
    ours.train(), theirs.train()
    shared = SharedDropout(dropout, d, seed=100 + n)
    ours.targets, ocalls = shared.ours(mods if cl > 0 else [], torch.unique(BATCH.users), torch.unique(BATCH.pos))
    theirs_f, tcalls = shared.theirs(mods)
    with parity.patched(s.ref, "F", theirs_f):
        ours.zero_grad(), theirs.zero_grad()
        terms = ours.extra_losses(ours(DATA), BATCH)
        loss = sum(t.weight * t.value for t in terms.values())
        loss.backward()
        tloss, seen = their_terms(theirs, BATCH)
        tloss.backward()
    assert next(ocalls, None) is None and next(tcalls, None) is None  # every mask used, once
    report.compare("train: total loss", loss, tloss)
    # MMRec's recorded cosine terms: [t->i, t->t,] [v->i, v->v,] u->i, i->u
    parts = {m: seen[2 * k : 2 * k + 2] for k, m in enumerate(m for m in ("text", "image") if m in mods)}
    k = 2 * len(parts)
    report.compare("train: graph term", terms["graph"].value, seen[k] + seen[k + 1])
    if cl > 0:
        report.compare("train: align term", terms["align"].value, sum(parts[m][0] for m in mods))
        report.compare("train: mask term", terms["mask"].value, sum(parts[m][1] for m in mods))
    if reg > 0:
        with torch.no_grad():
            tu, ti = theirs.forward()
        report.compare("train: reg term", terms["reg"].value, theirs.reg_loss(tu, ti))
    parity.compare_grads(report, ours, theirs, mapping, label="train: grad ")

# the trainer's own step gives the same total (no ranking term with loss.kind auto)
ours, *_ = models(["image", "text"], 8, 1, 0.0, 0.1, 2.0)
step = train_step(ours, torch.optim.SGD(ours.parameters(), lr=0.0), DATA, BATCH, "auto")
report.check("train_step: its terms", set(step) == {"loss", "graph", "align", "mask", "reg"}, str(sorted(step)))
_, theirs, *_ = models(["image", "text"], 8, 1, 0.0, 0.1, 2.0)
if s.float64:
    theirs.norm_adj = DATA.adj.to_sparse_coo()
report.compare("train_step: total loss", step["loss"], theirs.train().calculate_loss((BATCH.users, BATCH.pos)))
print(f"MMRec parameters without counterpart: {sorted(unmapped_seen)}")
report.finish()
