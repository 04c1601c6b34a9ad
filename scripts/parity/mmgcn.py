"""Parity check: sea/models/mmgcn.py against MMRec's src/models/mmgcn.py, run as is.

Stand-ins: the base class, config and dataset (common.py). PyG is the real one. MMRec's
GCN hard-codes aggr_mode 'mean' and concate 'False' (a truthy string): to check our other
variants against its code, those two arguments are replaced (element-wise combination;
sum aggregation). MMRec's id embedding and preferences are plain tensors: made leaves
holding our values, to compare their gradients. Documented difference accounted for: we
penalise every modality's preferences, MMRec the image's only (the text term added to
its loss). Compared: the graph's pattern, one aggregation step, vectors and scores
(eval), the loss and the gradients of every tensor.

    python scripts/parity/mmgcn.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS
from torch import nn

s = parity.setup("mmgcn")

from sea.models.base import GraphData  # noqa: E402
from sea.models.mmgcn import MMGCN, MMGCNConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATS = parity.features(rng)
GCN = s.ref.GCN


def patched_gcn(aggr_mode, concate):
    """MMRec's GCN with its hard-coded aggr_mode / concate (positional arguments 6 and 7)
    replaced."""

    def make(*args, **kwargs):
        args = list(args)
        args[6], args[7] = aggr_mode, concate
        with parity.patched(s.ref, "GCN", GCN):  # its __init__ calls super(GCN, self)
            return GCN(*args, **kwargs)

    return make


def copy_into(ours, theirs):
    """Our weights into MMRec's model; (name, our tensor, their tensor) per mapping."""
    pairs_ = [("id_embedding", ours.id_embedding, "id_embedding", theirs)]
    for m, gcn_name in (("image", "v_gcn"), ("text", "t_gcn")):
        if m not in ours.gcn:
            continue
        g, t = ours.gcn[m], getattr(theirs, gcn_name)
        pairs_.append((f"gcn.{m}.preference", g.preference, "preference", t))
        if g.projection is not None:
            pairs_ += [(f"gcn.{m}.projection.{p}", getattr(g.projection, p), p, t.MLP) for p in ("weight", "bias")]
        for k in range(3):
            pairs_.append((f"gcn.{m}.aggregate.{k}", g.aggregate[k], "weight", getattr(t, f"conv_embed_{k + 1}")))
            for part, their_name in (("own", "linear_layer"), ("combine", "g_layer")):
                for p in ("weight", "bias"):
                    pairs_.append(
                        (
                            f"gcn.{m}.{part}.{k}.{p}",
                            getattr(getattr(g, part)[k], p),
                            p,
                            getattr(t, f"{their_name}{k + 1}"),
                        )
                    )
    mapped = []
    for name, ours_t, attr, owner in pairs_:
        old = getattr(owner, attr)
        assert old.shape == ours_t.shape, (name, old.shape, ours_t.shape)
        if isinstance(old, nn.Parameter):
            with torch.no_grad():
                old.copy_(ours_t)
            new = old
        else:  # MMRec's plain tensors (ids, preferences): a leaf with a gradient, to compare it
            new = ours_t.detach().clone().requires_grad_(True)
            setattr(owner, attr, new)
        mapped.append((name, ours_t, new))
    report.check(
        "every tensor of both sides mapped",
        {id(t) for _, _, t in mapped} >= {id(p) for p in theirs.parameters()}
        and {id(o) for _, o, _ in mapped} >= {id(p) for p in ours.parameters()},
    )
    return mapped


def run(modalities, d, lam, aggregation="mean", combination="concat"):
    report.section(f"{'+'.join(modalities)}, d={d}, reg_weight={lam}, {aggregation}/{combination}")
    data = GraphData.build(parity.frame(rows), N_ITEMS, {m: FEATS[m] for m in modalities})
    cfg = MMGCNConfig(embedding_dim=d, reg_weight=lam, aggregation=aggregation, combination=combination)
    torch.manual_seed(0)
    ours = MMGCN.build(data, cfg, list(modalities))
    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    feat = {m: torch.from_numpy(FEATS[m]) if m in modalities else None for m in ("image", "text")}
    config = {"embedding_size": d, "n_layers": 2, "train_batch_size": 16, "reg_weight": lam, "device": "cpu"}
    with parity.patched(
        s.ref, "GCN", patched_gcn({"mean": "mean", "sum": "add"}[aggregation], combination == "concat")
    ):
        theirs = s.ref.MMGCN(config, parity.Dataset(N_USERS, N_ITEMS, tu, ti, feat["image"], feat["text"]))
    mapped = copy_into(ours, theirs)

    n = N_USERS + N_ITEMS
    a_theirs = torch.zeros(n, n)
    a_theirs[theirs.edge_index[1], theirs.edge_index[0]] += 1  # PyG: messages from [0] to [1]
    report.compare("graph: pattern", data.adj.to_dense().ne(0).float(), a_theirs)
    y = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    conv = (theirs.v_gcn if "image" in modalities else theirs.t_gcn).conv_embed_2
    with torch.no_grad():
        report.compare(
            f"graph: one {aggregation} aggregation",
            ours.neighbour_aggregation(data.adj)(y),
            conv.propagate(theirs.edge_index, size=(n, n), x=y),
        )

    def their_forward():
        rep = theirs.forward()
        return rep[:N_USERS], rep[N_USERS:]

    parity.compare_forward(report, ours, data, theirs, forward=their_forward)

    batch = parity.drawn_batch(tu, ti, 16, seed=2)
    ours.train(), theirs.train()
    loss, _ = parity.our_loss(ours, data, batch)
    their_loss = theirs.calculate_loss([batch.users, batch.pos, batch.neg[:, 0]])
    if "text" in modalities:  # documented: we penalise every modality's preferences, MMRec the image's only
        their_loss = their_loss + lam * (theirs.t_gcn.preference**2).mean()
    report.compare("loss", loss, their_loss)
    loss.backward()
    their_loss.backward()
    for name, o, t in mapped:
        report.compare(f"grad {name}", o.grad, t.grad)


report = parity.Report(
    s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs (item 9 isolated), image 7 / text 5 wide"
)
for modalities, d, lam, *variant in [
    (("image", "text"), 8, 0.1),
    (("image", "text"), 64, 1e-4),
    (("image",), 8, 0.1),
    (("text",), 8, 0.1),
    (("image", "text"), 8, 0.1, "mean", "element"),
    (("image", "text"), 8, 0.1, "sum", "concat"),
]:
    run(modalities, d, lam, *variant)
report.finish()
