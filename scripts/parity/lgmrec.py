"""Parity check: sea/models/lgmrec.py (separation: none) against MMRec's
src/models/lgmrec.py, run as is.

Stand-ins: the base class, config and dataset (common.py). Deliberate difference
accounted for: MMRec draws Gumbel noise in evaluation too; for the eval comparison its
module's ``F.gumbel_softmax`` is replaced by the noise-free softmax at tau (what ours does
in evaluation). Training is compared with the noise and the dropout masks on: both draw
them from torch's generator in the same order, so one seed gives both the same. Settings:
MMRec's Baby setting, a deeper one, cf_model mf. Compared: the adjacency, R and the
degrees, vectors, hyperedge vectors and scores (eval and training), each loss term, the
total and the gradients; and what MMRec makes of a repeated pair (shown).
``--float64``: both sides in float64, to tell rounding from a real difference.

    python scripts/parity/lgmrec.py --ref PATH/TO/MMRec [--float64]
"""

from __future__ import annotations

import dataclasses
import types

import common as parity
import numpy as np
import torch
import torch.nn.functional as F
from common import N_ITEMS, N_USERS

s = parity.setup("lgmrec", float64=True)

from sea.batch import Batch  # noqa: E402
from sea.losses import RankingLoss  # noqa: E402
from sea.models.base import GraphData  # noqa: E402
from sea.models.lgmrec import LGMRec, LGMRecConfig  # noqa: E402

DTYPE = torch.float64 if s.float64 else torch.float32
rng = np.random.default_rng(0)
pairs = parity.sampled_pairs(rng, range(N_USERS - 1), 9, (1, 5))  # user 11: no training item; item 9 isolated
rows = [(u, i, "train") for u, i in pairs] + [(u, 9, "test") for u in range(N_USERS)]
data = GraphData.build(parity.frame(rows), N_ITEMS, parity.features(rng))
if s.float64:
    data = dataclasses.replace(
        data, adj=data.adj.to(DTYPE), features={m: x.to(DTYPE) for m, x in data.features.items()}
    )
users_np, items_np = np.array([u for u, _ in pairs]), np.array([i for _, i in pairs])
MAPPING = {
    "user_emb.weight": "user_embedding.weight",
    "item_emb.weight": "item_id_embedding.weight",
    "projections.image": "item_image_trs",
    "projections.text": "item_text_trs",
    "hyperedges.image": "v_hyper",
    "hyperedges.text": "t_hyper",
}
# noise-free Gumbel softmax for MMRec's module in evaluation (the deliberate difference)
NOISE_FREE = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("_")})
NOISE_FREE.gumbel_softmax = lambda logits, tau=1.0, hard=False, dim=-1: torch.softmax(logits / tau, dim=dim)


def their_config(cfg):
    return {
        "train_batch_size": 8,
        "device": torch.device("cpu"),
        "embedding_size": cfg.embedding_dim,
        "feat_embed_dim": cfg.embedding_dim,
        "cf_model": cfg.cf_model,
        "n_mm_layers": cfg.mm_layers,
        "n_ui_layers": cfg.ui_layers,
        "n_hyper_layer": cfg.hyper_layers,
        "hyper_num": cfg.hyper_num,
        "keep_rate": cfg.keep_rate,
        "alpha": cfg.alpha,
        "cl_weight": cfg.cl_weight,
        "reg_weight": cfg.reg_weight,
    }


def dataset(users, items):
    return parity.Dataset(N_USERS, N_ITEMS, users, items, data.features["image"].clone(), data.features["text"].clone())


def build(overrides):
    cfg = LGMRecConfig.from_dict(
        {"embedding_dim": 8, "hyper_num": 3, "cl_weight": 0.5, "reg_weight": 0.25} | overrides, "lgmrec"
    )
    torch.manual_seed(0)
    ours = LGMRec.build(data, cfg, ["image", "text"])
    with torch.no_grad():  # away from the small initialisation, so that every part matters
        for p in ours.parameters():
            p.normal_()
    assert cfg.temperature == 0.2  # MMRec's fixed tau
    theirs = s.ref.LGMRec(their_config(cfg), dataset(users_np, items_np))
    if s.float64:
        ours.double(), theirs.double()
        theirs.adj, theirs.norm_adj = theirs.adj.double(), theirs.norm_adj.double()
        theirs.num_inters = theirs.num_inters.double()
    # every trainable parameter of theirs mapped (image/text_embedding: the frozen features)
    assert set(parity.copy_weights(ours, theirs, MAPPING)) == {"image_embedding.weight", "text_embedding.weight"}
    assert not theirs.image_embedding.weight.requires_grad
    assert torch.equal(theirs.image_embedding.weight, data.features["image"])
    return ours, theirs, cfg


report = parity.Report(
    s,
    f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs; image 7 / text 5 wide; d = 8, hyper_num 3",
    rtol64=1e-6,
)  # MMRec's 1/(deg + 1e-7) stays ~1e-7 off in float64
for label, overrides in [
    ("MMRec's Baby setting", {}),
    ("deeper", {"ui_layers": 1, "mm_layers": 3, "hyper_layers": 2, "alpha": 0.7, "keep_rate": 0.2}),
    ("mf", {"cf_model": "mf", "mm_layers": 1, "keep_rate": 1.0}),
]:
    report.section(f"{label} {overrides}")
    ours, theirs, cfg = build(overrides)
    report.compare("graph: normalised adjacency", data.adj.to_dense(), theirs.norm_adj.to_dense(), float32=True)
    report.compare("graph: R", ours.interactions(torch.eye(N_ITEMS, dtype=DTYPE)), theirs.adj.to_dense())
    # users with training items (MMRec's 1/(deg + 1e-7) is 1e7 for user 11, ours 0; both multiply a zero row)
    has = torch.from_numpy(np.bincount(users_np, minlength=N_USERS) > 0)
    report.compare("graph: 1/degree", ours.inv_degree[has], theirs.num_inters[:N_USERS][has], float32=True)

    with parity.patched(s.ref, "F", NOISE_FREE):  # eval: MMRec given the noise-free softmax
        ours.eval(), theirs.eval()
        with torch.no_grad():
            emb = ours(data)
            tu, ti, th = theirs.forward()
            their_scores = theirs.full_sort_predict((torch.arange(N_USERS),))
    report.compare("eval: user vectors", emb.user, tu)
    report.compare("eval: item vectors", emb.item, ti)
    for k, (a, b) in enumerate(zip([*emb.extras["hyper"]["image"], *emb.extras["hyper"]["text"]], th)):
        report.compare(f"eval: hyperedge vectors {k}", a, b)
    report.compare("eval: score matrix", ours.score(emb, torch.arange(N_USERS)), their_scores)

    # training: Gumbel noise and dropout on, the same seed on both sides
    ours.train(), theirs.train()
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(pairs), generator=g)[:8]
    batch = Batch(data.train_users[idx], data.train_items[idx], torch.randint(N_ITEMS, (8, 1), generator=g))
    torch.manual_seed(7)
    emb = ours(data)
    extra = ours.extra_losses(emb, batch)
    terms = {"bpr": RankingLoss("bpr")(emb, batch)} | {k: t.value for k, t in extra.items()}
    total = terms["bpr"] + sum(t.weight * t.value for t in extra.values())
    torch.manual_seed(7)
    tu, ti, th = theirs.forward()
    report.compare("train: user vectors", emb.user, tu)
    report.compare("train: item vectors", emb.item, ti)
    u, p, n = batch.users, batch.pos, batch.neg[:, 0]
    their_terms = {
        "bpr": theirs.bpr_loss(tu[u], ti[p], ti[n]),
        "hcl": theirs.ssl_triple_loss(th[0][u], th[2][u], th[2]) + theirs.ssl_triple_loss(th[1][p], th[3][p], th[3]),
        "reg": theirs.reg_loss(tu[u], ti[p], ti[n]),
    }
    for k, v in their_terms.items():
        report.compare(f"train: loss {k}", terms[k], v)
    torch.manual_seed(7)
    their_total = theirs.calculate_loss((u, p, n))
    report.compare("train: loss total", total, their_total)
    ours.zero_grad(), theirs.zero_grad()
    total.backward()
    their_total.backward()
    # the hyperedge gradients pass through sums of many terms: rounding up to ~1e-4 of the largest
    parity.compare_grads(report, ours, theirs, MAPPING, label="train: grad ", slack=50)

# A repeated (user, item) pair (our data stage drops them): MMRec's R keeps the coo's
# duplicate entries (torch sums them: 2), its degrees count the pair once.
theirs = s.ref.LGMRec(their_config(cfg), dataset(np.append(users_np, users_np[0]), np.append(items_np, items_np[0])))
print(
    f"\nrepeated pair in MMRec (shown, not checked): R[u, i] = "
    f"{theirs.adj.to_dense()[users_np[0], items_np[0]].item():g}, 1/deg[u] = "
    f"{theirs.num_inters[users_np[0]].item():.4g} (deg {np.sum(users_np == users_np[0])} distinct items)"
)
report.finish()
