"""DA-MRS on a LightGCN backbone (Xu et al., "Improving Multi-modal Recommender Systems by
Denoising and Aligning Multi-modal Content and User Feedback", KDD 2024), as MMRec's
``DAMRS`` (the authors' ``DA-MRS+LightGCN``).

Three item–item graphs, built once, each sparse top-k and built chunk-wise:

1. *Denoised modality graphs* (DIIG): an item links to its top-k cosine neighbours in a
   modality only among the items whose similarity is at least that modality's mean
   similarity in *every* modality (links consistent across modalities); the item itself
   counts as a neighbour, as in the reference. The mean over all n² pairs is computed
   exactly without the matrix: mean(ẑẑᵀ) = ‖Σᵢ ẑᵢ‖² / n².
2. The *item–item behaviour graph*: items sharing at least ``behaviour_min_common``
   training users, top ``behaviour_knn_k`` by that count (ties: lower item id), plus a
   self-loop. The counts come from chunks of RᵀR (exact integers in float32).

All three are unweighted and normalised D^-1/2 A D^-1/2 by their out-degree, and the item id
embeddings take ``mm_layers`` hops over each: one view h_m per modality plus h_b.

Item vector = LightGCN item vector + mean of the views; user vector = LightGCN user vector.
The loss (``loss.kind: none``, the model's terms are the whole objective):

- ``denoised_bpr`` (denoising user feedback): BPR with a per-pair weight w⁺ on
  log σ(s⁺ − s⁻) and w⁻ on log σ(s⁻ − s⁺), from the user's agreement with the views
  (no gradient through the weights): with p_m = σ(⟨u, ĥ_m(i⁺)⟩),
  w⁺ = clamp(mean_m p_m · exp(−var_m p_m)², 0, 1) and, where mean_m p_m is below the
  batch's mean over views and negatives of σ(⟨u, ĥ_m(i⁻)⟩) = n̄,
  w⁻ = clamp(max_m p_m − n̄, 0, 1) (else 0): an observed interaction the content does not
  support is down-weighted, or even reversed.
- ``align_item`` (× ``neighbor_weight``): per view a, for the batch's distinct items, the
  k most likely items under Σ_{o≠a} P_o + 2·P_a (P_v = row softmax of view v's cosines) are
  the cross-modal positives M, the k next in P_a alone the single-view positives S;
  −log(Σ_M e^{c/τ} / Σ_all e^{c/τ}) − log(Σ_S e^{c/τ} / (Σ_all − Σ_M) e^{c/τ}),
  c the cosines in view a; mean over items, then over views.
- ``align_user`` (× ``kl_weight``): for the batch's distinct users and items,
  a = ⟨u, norm(LightGCN item)⟩ and b = ⟨u, norm(mean view)⟩; the symmetric Bernoulli KL
  KL(σ(a)‖σ(b)) + KL(σ(b)‖σ(a)), mean over all pairs.

Differences from MMRec's code (the authors' is the same):

- The symmetric KL is computed as (σ(a) − σ(b))·(a − b), its exact closed form, instead of
  the four logs of probabilities (no NaN when a sigmoid saturates).
- Any non-empty subset of the modalities works (MMRec needs image and text); the views are
  the modalities in ``model.modalities`` order plus the behaviour view.
- The behaviour graph is built from the training split here (the reference builds it
  offline, from its training rows, into ``item_graph_dict_2.npy``); its top-k ties go to
  the lower item id (the reference's ``torch.topk`` order is unspecified).
- A kNN row selects among the consistent items only; the reference zeroes the others and
  takes the top-k of the row, which is the same whenever the kept similarities are
  positive.
- MMRec's ``image_trs`` / ``text_trs`` projections and ``reg_weight`` are created or read
  but never used there: left out.
- Multiple negatives per positive (``train.negatives``) are supported: the weights broadcast
  over them and n̄ averages over all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, sym_normalize
from sea.models.propagation import propagate
from sea.ops import full_mean, full_sum, pointwise

#: Largest number of float32 entries of one chunk while the item–item graphs are built.
CHUNK_ENTRIES = 1 << 23


@dataclass
class DAMRSConfig(Section):
    """params.yaml [damrs]. MMRec's DAMRS.yaml fixes one point (the defaults); the commented
    ranges there are the paper's sensitivity grids."""

    embedding_dim: int = 64  # user and item id embeddings
    ui_layers: int = 2  # LightGCN layers over the user–item graph (n_ui_layers; paper range 1–3)
    mm_layers: int = 1  # hops over each item–item graph (n_mm_layers; range 1–2)
    knn_k: int = 10  # denoised modality graphs: top-k consistent neighbours (range 3–20)
    behaviour_knn_k: int = 2  # behaviour graph: top-k co-occurring items (item_graph_dict_2)
    behaviour_min_common: int = 2  # behaviour graph: least number of shared training users
    kl_weight: float = 1.0  # weight of align_user (grid [1]; paper range 0–10)
    neighbor_weight: float = 1e-3  # weight of align_item (grid [0.001]; paper range 0–1)
    pseudo_k: int = 10  # align_item: cross-modal and single-view positives per item
    temperature: float = 0.2  # align_item: τ

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.ui_layers >= 0 and self.mm_layers >= 0, section, "ui_layers and mm_layers must be >= 0")
        require(self.knn_k >= 1 and self.behaviour_knn_k >= 0, section, "knn_k >= 1 and behaviour_knn_k >= 0")
        require(self.behaviour_min_common >= 1, section, "behaviour_min_common must be >= 1")
        require(self.kl_weight >= 0, section, "kl_weight must be >= 0")
        require(self.neighbor_weight >= 0, section, "neighbor_weight must be >= 0")
        require(self.pseudo_k >= 1, section, "pseudo_k must be >= 1")
        require(self.temperature > 0, section, "temperature must be > 0")


# ------------------------------------------------------------------ the item–item graphs


def consistent_knn_graphs(features: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """DA-MRS's denoised item–item graphs, one per modality, as normalised CSR tensors.

    Item i may link to j only if cos_m(i, j) ≥ mean_m (the mean cosine over all n² pairs) in
    every modality m; among those, each modality's graph keeps i's top-``k`` by its own
    cosine (i itself included). Built ``CHUNK_ENTRIES`` at a time: nothing [n, n] is held.
    """
    normed = {m: F.normalize(x.float(), dim=1) for m, x in features.items()}
    n = next(iter(normed.values())).shape[0]
    means = {}
    for m, z in normed.items():
        total = z.double().sum(0)
        means[m] = float(total @ total) / n**2
    k = min(k, n)
    chunk = max(1, CHUNK_ENTRIES // n)
    rows, cols = {m: [] for m in normed}, {m: [] for m in normed}
    for start in range(0, n, chunk):
        sims = {m: z[start : start + chunk] @ z.T for m, z in normed.items()}
        keep = None
        for m, s in sims.items():
            ok = s >= means[m]
            keep = ok if keep is None else keep & ok
        for m, s in sims.items():
            vals, idx = s.masked_fill(~keep, -float("inf")).topk(k, dim=1)
            valid = torch.isfinite(vals)
            row = torch.arange(start, start + len(s)).unsqueeze(1).expand_as(idx)
            rows[m].append(row[valid])
            cols[m].append(idx[valid])
    out = {}
    for m in normed:
        r, c = torch.cat(rows[m]), torch.cat(cols[m])
        out[m] = sym_normalize(r, c, torch.ones(len(r)), n)
    return out


def behaviour_graph(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, k: int, min_common: int
) -> torch.Tensor:
    """DA-MRS's item–item behaviour graph as a normalised CSR tensor: each item links to
    itself and to its top-``k`` items by number of shared users, among those sharing at
    least ``min_common`` (ties: the lower item id). Counts from chunks of RᵀR."""
    pairs = torch.unique(torch.stack([users.cpu(), items.cpu()]), dim=1)
    u, i = pairs[0], pairs[1]
    r_t = torch.sparse_coo_tensor(torch.stack([i, u]), torch.ones(len(u)), (n_items, n_users)).to_sparse_csr()
    rows, cols = [torch.arange(n_items)], [torch.arange(n_items)]
    k = min(k, n_items - 1)
    if k > 0:
        chunk = max(1, CHUNK_ENTRIES // max(n_users, n_items))
        tie = n_items - 1 - torch.arange(n_items)  # larger for lower ids
        for start in range(0, n_items, chunk):
            stop = min(start + chunk, n_items)
            inside = (i >= start) & (i < stop)
            block = torch.zeros(n_users, stop - start)
            block[u[inside], i[inside] - start] = 1.0
            counts = torch.sparse.mm(r_t, block).T  # [chunk, n_items]: shared users, exact
            local = torch.arange(stop - start)
            counts[local, local + start] = 0.0
            key = counts.long() * n_items + tie
            key[counts < min_common] = -1
            vals, idx = key.topk(k, dim=1)
            valid = vals >= 0
            rows.append((local + start).unsqueeze(1).expand_as(idx)[valid])
            cols.append(idx[valid])
    r, c = torch.cat(rows), torch.cat(cols)
    return sym_normalize(r, c, torch.ones(len(r)), n_items)


# ------------------------------------------------------------------ the model


@register
class DAMRS(Recommender):
    """DA-MRS+LightGCN recommender (see the module docstring for the formulas).

    Args:
        n_users, n_items: graph sizes.
        modality_graphs: modality name -> its denoised, normalised item–item graph
            ``[n_items, n_items]`` (sparse).
        behaviour: the normalised item–item behaviour graph (sparse).
        embedding_dim: width of every vector (64).
        ui_layers: LightGCN layers over the user–item graph (2).
        mm_layers: hops of the item id embeddings over each item–item graph (1).
        kl_weight: weight of ``align_user`` (1; 0 drops it).
        neighbor_weight: weight of ``align_item`` (1e-3; 0 drops it).
        pseudo_k: cross-modal and single-view positives per item in ``align_item`` (10).
        temperature: τ of ``align_item`` (0.2).
    """

    name = "damrs"
    Config = DAMRSConfig
    uses_features = True
    preferred_loss = "none"
    #: The grid ``tune.spaces.damrs`` defaults to (docs/tuning.md).
    search_space = {"kl_weight": [0.1, 1.0], "neighbor_weight": [0.0001, 0.001, 0.01], "ui_layers": [1, 2]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        modality_graphs: dict[str, torch.Tensor],
        behaviour: torch.Tensor,
        *,
        embedding_dim: int = 64,
        ui_layers: int = 2,
        mm_layers: int = 1,
        kl_weight: float = 1.0,
        neighbor_weight: float = 1e-3,
        pseudo_k: int = 10,
        temperature: float = 0.2,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(modality_graphs)
        self.ui_layers, self.mm_layers = ui_layers, mm_layers
        self.kl_weight, self.neighbor_weight = kl_weight, neighbor_weight
        self.pseudo_k, self.temperature = pseudo_k, temperature
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        # The views' graphs: the modalities in order, then the behaviour graph.
        self.graphs = nn.ModuleList([FrozenGraph(g) for g in modality_graphs.values()] + [FrozenGraph(behaviour)])

    @classmethod
    def build(cls, data: GraphData, cfg: DAMRSConfig, modalities: Sequence[str] | None = None, *unused) -> DAMRS:
        modalities = list(modalities or data.features)
        graphs = consistent_knn_graphs({m: data.features[m].cpu() for m in modalities}, cfg.knn_k)
        behaviour = behaviour_graph(
            data.train_users,
            data.train_items,
            data.n_users,
            data.n_items,
            cfg.behaviour_knn_k,
            cfg.behaviour_min_common,
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: g.to(data.device) for m, g in graphs.items()},
            behaviour.to(data.device),
            embedding_dim=cfg.embedding_dim,
            ui_layers=cfg.ui_layers,
            mm_layers=cfg.mm_layers,
            kl_weight=cfg.kl_weight,
            neighbor_weight=cfg.neighbor_weight,
            pseudo_k=cfg.pseudo_k,
            temperature=cfg.temperature,
        )

    def views(self) -> list[torch.Tensor]:
        """h_v = S_vᴸ·E_item for each view's graph S_v (modalities, then behaviour)."""
        out = []
        for graph in self.graphs:
            h = self.item.weight
            for _ in range(self.mm_layers):
                h = graph(h)
            out.append(h)
        return out

    def forward(self, data: GraphData) -> Embeddings:
        """User vectors and item vectors (LightGCN item vector + mean view);
        ``extras`` holds the LightGCN item vectors (``cf_item``) and the views."""
        h = propagate(data.adj, torch.cat([self.user.weight, self.item.weight]), self.ui_layers, mean=True)
        user, cf_item = h[: self.n_users], h[self.n_users :]
        views = self.views()
        content = sum(views) / len(views)
        extras = {"cf_item": cf_item, "views": views, "content": content} if self.training else {}
        return Embeddings(user, cf_item + content, extras)

    # -------------------------------------------------------------- losses

    def feedback_weights(self, user: torch.Tensor, views: list[torch.Tensor], batch: Batch):
        """(w⁺ ``[B]``, w⁻ ``[B]``) of ``denoised_bpr``, without gradient."""
        with torch.no_grad():
            pos = torch.stack([(user * F.normalize(h[batch.pos], dim=-1)).sum(-1) for h in views])  # [V, B]
            neg = torch.stack(
                [torch.einsum("bd,bnd->bn", user, F.normalize(h[batch.neg], dim=-1)) for h in views]
            )  # [V, B, N]
            p = pointwise(torch.sigmoid, pos)
            n_mean = full_mean(pointwise(torch.sigmoid, neg))
            p_mean = p.mean(0)
            w_pos = (p_mean * torch.exp(-p.var(0)).pow(2)).clamp(0, 1)
            w_neg = ((p.max(0).values - n_mean) * (p_mean < n_mean)).clamp(0, 1)
        return w_pos, w_neg

    def denoised_bpr(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """−mean over rows and negatives of w⁺·log σ(s⁺ − s⁻) + w⁻·log σ(s⁻ − s⁺)."""
        user = emb.user[batch.users]
        w_pos, w_neg = self.feedback_weights(user, emb.extras["views"], batch)
        diff = (user * emb.item[batch.pos]).sum(-1).unsqueeze(1) - torch.einsum(
            "bd,bnd->bn", user, emb.item[batch.neg]
        )  # [B, N]
        return -full_mean(w_pos.unsqueeze(1) * F.logsigmoid(diff) + w_neg.unsqueeze(1) * F.logsigmoid(-diff))

    def pseudo_positives(self, normed: list[torch.Tensor], ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per view a: (cross-modal positives M ``[n, k]``, single-view positives S ``[n, k]``)
        of the items ``ids``."""
        k = min(self.pseudo_k, self.n_items)
        with torch.no_grad():
            probs = [torch.softmax(z[ids] @ z.T, dim=1) for z in normed]
            total = sum(probs)
            out = []
            for p in probs:
                mm = (total + p).topk(k, dim=1).indices
                single = p.scatter(1, mm, 0.0).topk(k, dim=1).indices
                out.append((mm, single))
        return out

    def align_item(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """The item-guided alignment: mean over views of the mean over the batch's distinct
        items of −log(Σ_M e^{c/τ} / Σ e^{c/τ}) − log(Σ_S e^{c/τ} / (Σ e^{c/τ} − Σ_M e^{c/τ}))."""
        ids = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
        normed = [F.normalize(h, dim=1) for h in emb.extras["views"]]
        total = 0.0
        for z, (mm, single) in zip(normed, self.pseudo_positives(normed, ids), strict=True):
            e = pointwise(torch.exp, z[ids] @ z.T / self.temperature)  # [n, I]
            all_sum = e.sum(1)
            mm_sum, single_sum = e.gather(1, mm).sum(1), e.gather(1, single).sum(1)
            loss = -torch.log(mm_sum / all_sum + 1e-9) - torch.log(single_sum / (all_sum - mm_sum) + 1e-9)
            total = total + full_mean(loss)
        return total / len(normed)

    def align_user(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """The user-guided alignment: mean over (distinct user, distinct item) pairs of
        KL(σ(a)‖σ(b)) + KL(σ(b)‖σ(a)) = (σ(a) − σ(b))·(a − b)."""
        users = emb.user[torch.unique(batch.users)]
        ids = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
        a = users @ F.normalize(emb.extras["cf_item"][ids], dim=-1).T
        b = users @ F.normalize(emb.extras["content"][ids], dim=-1).T
        return full_sum((pointwise(torch.sigmoid, a) - pointwise(torch.sigmoid, b)) * (a - b)) / a.numel()

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``denoised_bpr`` (weight 1), ``align_item`` (``neighbor_weight``), ``align_user``
        (``kl_weight``); a term whose weight is 0 is skipped."""
        terms = {"denoised_bpr": Term(self.denoised_bpr(emb, batch), 1.0)}
        if self.neighbor_weight > 0:
            terms["align_item"] = Term(self.align_item(emb, batch), self.neighbor_weight)
        if self.kl_weight > 0:
            terms["align_user"] = Term(self.align_user(emb, batch), self.kl_weight)
        return terms
