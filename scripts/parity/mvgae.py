"""Parity check: sea/models/mvgae.py against MMRec's src/models/mvgae.py, run as is.

Stand-ins: the base class, config and dataset (common.py). PyG is the real one. MMRec's
preferences and collaborative item table are plain tensors: made leaves holding our
values, to compare their gradients. Deliberate differences accounted for: MMRec's loss
indexes the node table with raw item ids (it scores users against users): it is given the
items' node rows (item id + number of users); its scores come from the last forward
(one in eval mode is run first). Training: both sides draw the dropout masks and the
samples ε from torch's generator in the same order, so one seed gives both the same
(checked with dropout off too). Compared: every expert's μ and log σ², the fused vectors
and the scores (eval), the recon and KL sums and the total loss, the gradient of every
mapped tensor; MMRec's unused linear_layer1/2 have no counterpart.

    python scripts/parity/mvgae.py --ref PATH/TO/MMRec
"""

from __future__ import annotations

import common as parity
import numpy as np
import torch
from common import N_ITEMS, N_USERS

s = parity.setup("mvgae")

from sea.models.base import GraphData  # noqa: E402
from sea.models.mvgae import MVGAE, GraphConv, MVGAEConfig  # noqa: E402

rng = np.random.default_rng(0)
pairs, rows = parity.hand_graph(rng)  # item 9: no training pair (isolated)
FEATS = parity.features(rng)
THEIR_PAIRS = parity.shuffled(rng, pairs)
EXPERTS = {"encoders.image": "v_gcn", "encoders.text": "t_gcn", "collaborative": "c_gcn"}


def copy_into(ours, theirs, layers):
    """Our weights into MMRec's model; (name, our tensor, their tensor) per mapped tensor."""
    names = {"preference": "preference", "projection": "MLP"}
    names |= {f"convs.{k}": f"conv_embed_{k + 1}" for k in range(layers)}
    names |= {f"combine.{k}": f"g_layer{k + 1}" for k in range(layers)}
    names |= {"mu_conv": "conv_embed_4", "mu_combine": "g_layer4", "mu_own": "linear_layer4"}
    names |= {"logvar_conv": "conv_embed_5", "logvar_combine": "g_layer5", "logvar_own": "linear_layer5"}
    ours_p = dict(ours.named_parameters())
    mapped = []
    for prefix, gcn_name in EXPERTS.items():
        gcn = getattr(theirs, gcn_name)
        for o, t in names.items():
            if o == "preference":  # a plain tensor in MMRec: a leaf with a gradient
                gcn.preference = ours_p[f"{prefix}.preference"].detach().clone().requires_grad_(True)
                mapped.append((f"{prefix}.preference", ours_p[f"{prefix}.preference"], gcn.preference))
                continue
            for p in ("weight", "bias"):
                mine, their = ours_p[f"{prefix}.{o}.{p}"], getattr(getattr(gcn, t), p)
                assert mine.shape == their.shape, (o, mine.shape, their.shape)
                with torch.no_grad():
                    their.copy_(mine)
                mapped.append((f"{prefix}.{o}.{p}", mine, their))
    theirs.collaborative = ours.item_id.detach().clone().requires_grad_(True)
    theirs.c_gcn.features = theirs.collaborative  # the same tensor, as MMRec builds it
    mapped.append(("item_id", ours.item_id, theirs.collaborative))
    assert {id(o) for _, o, _ in mapped} == {id(p) for p in ours.parameters()}
    unused = sorted(n for n, p in theirs.named_parameters() if all(p is not t for _, _, t in mapped))
    report.note(f"{len(mapped)} tensors mapped; no counterpart in ours: {unused}")
    return mapped


def no_dropout(*models):
    """The convolutions' dropout off (each conv in eval mode; the models stay as they are)."""
    for model in models:
        for m in model.modules():
            if isinstance(m, (GraphConv, s.ref.BaseModel)):
                m.eval()


def recording(fn, values):
    """``fn``, each value it returns also appended to ``values``."""

    def wrapped(*args):
        values.append(fn(*args))
        return values[-1]

    return wrapped


def grad_norm(value, tensors):
    """The norm of d value / d tensors (all of them together), the graph kept."""
    grads = torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True)
    return sum(g.square().sum() for g in grads if g is not None).sqrt().item()


def run(d, layers, beta, batch_seed=2):
    report.section(f"d={d}, latent_dim 128, {layers} block(s), beta={beta}")
    data = GraphData.build(parity.frame(rows), N_ITEMS, FEATS)
    torch.manual_seed(0)
    ours = MVGAE.build(data, MVGAEConfig(embedding_dim=d, layers=layers, beta=beta), ["image", "text"])
    config = {"n_layers": layers, "embedding_size": d, "beta": beta, "train_batch_size": 16, "device": "cpu"}
    feat = {m: torch.from_numpy(FEATS[m]) for m in FEATS}
    theirs = s.ref.MVGAE(config, parity.Dataset(N_USERS, N_ITEMS, *THEIR_PAIRS, feat["image"], feat["text"]))
    mapped = copy_into(ours, theirs, layers)

    ours.eval(), theirs.eval()
    with torch.no_grad():
        for (mu, logvar), (name, gcn) in zip(ours.experts(data), EXPERTS.items(), strict=True):
            their_mu, their_logvar = getattr(theirs, gcn)()
            report.compare(f"eval: {name} mu", mu, their_mu)
            report.compare(f"eval: {name} logvar", logvar, their_logvar)

    def their_forward():
        theirs.forward()
        return theirs.result_embed[:N_USERS], theirs.result_embed[N_USERS:]

    parity.compare_forward(report, ours, data, theirs, forward=their_forward)

    tu, ti = data.train_users.numpy(), data.train_items.numpy()
    batch = parity.drawn_batch(tu, ti, 16, seed=batch_seed)
    for dropout, seed in ((False, 3), (True, 4)):
        label = f"dropout {'on' if dropout else 'off'}: "
        ours.train(), theirs.train()
        if not dropout:
            no_dropout(ours, theirs)
        ours.zero_grad()
        for _, _, t in mapped:
            t.grad = None
        torch.manual_seed(seed)
        loss, terms = parity.our_loss(ours, data, batch, ranking=None)
        recorded = {"recon": [], "kl": []}
        torch.manual_seed(seed)  # the same dropout masks and draws ε, in the same order
        with (
            parity.patched(theirs, "recon_loss", recording(theirs.recon_loss, recorded["recon"])),
            parity.patched(theirs, "kl_loss", recording(theirs.kl_loss, recorded["kl"])),
        ):
            their_loss = theirs.calculate_loss([batch.users, batch.pos + N_USERS, batch.neg[:, 0] + N_USERS])
        report.compare(f"{label}recon (4 Gaussians)", terms["recon"], sum(recorded["recon"]))
        report.compare(f"{label}kl (4 Gaussians)", terms["kl"], sum(recorded["kl"]))
        report.compare(f"{label}loss", loss, their_loss)
        if dropout:  # what drives training: recon's gradient against beta KL's
            ours_t, their_t = [o for _, o, _ in mapped], [t for _, _, t in mapped]
            report.note(
                "gradient norm, ours / MMRec's: recon "
                f"{grad_norm(terms['recon'], ours_t):.2e} / {grad_norm(sum(recorded['recon']), their_t):.2e}, "
                f"beta kl {grad_norm(beta * terms['kl'], ours_t):.2e} / "
                f"{grad_norm(beta * sum(recorded['kl']), their_t):.2e}"
            )
        loss.backward()
        their_loss.backward()
        figures = {name: parity.diff(o.grad, t.grad) for name, o, t in mapped}  # (abs, rel, |theirs|)
        worst = max(figures, key=lambda n: figures[n][1])
        report.record(
            f"{label}grads, each tensor (worst rel.)",
            max(f[0] for f in figures.values()),
            figures[worst][1],
            max(f[2] for f in figures.values()),
        )
        report.note(f"  worst: {worst} (max |theirs| {figures[worst][2]:.2e})")
    report.note(f"recon per batch row and Gaussian: {terms['recon'].item() / (4 * len(batch.users)):.7f}")


report = parity.Report(
    s, f"{N_USERS} users x {N_ITEMS} items, {len(pairs)} training pairs (item 9 isolated), image 7 / text 5 wide"
)
for d, layers, beta in ((8, 1, 0.1), (8, 2, 1.0), (64, 1, 0.1), (64, 2, 0.01)):
    run(d, layers, beta)
report.finish()
