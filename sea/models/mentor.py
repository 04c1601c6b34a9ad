"""MENTOR (Xu, Chen, Yang, Li, Wang & Ngai, "MENTOR: Multi-level Self-supervised Learning for
Multimodal Recommendation", AAAI 2025), as the authors' code (github.com/Jinfeng-Xu/MENTOR,
built on MMRec) runs it, with the deviations listed below.

Views. Besides each feature modality m (image, text) there is an *id* view whose item
"feature" is a learnable table. Per view v, user nodes carry a preference vector p^v_u and
item nodes the two-layer MLP f_v of their feature; rows are L2-normalised and propagated over
the user–item graph Â (``ui_layers`` weightless hops, the sum of the layers 0…L, as DualGNN):

    h^v = Σ_{l=0}^{L} Âˡ norm([p^v; f_v(x^v)])

The item–item graph S is frozen: per modality, each item's ``knn_k`` most cosine-similar
items (itself included, as in the authors' code), binary, D^-1/2·S·D^-1/2 (= S / k), mixed
``image_knn_weight``·image + (1 − w)·text; built chunk-wise, kept sparse. Every view's item
vectors take ``item_layers`` hops over it, added: g^v = h^v_I + S^K h^v_I.

Fusion (the scored vectors): users u = [α_u1 h^1_u ‖ … ‖ α_uM h^M_u] with a learnable weight
per user and feature modality (softmax-initialised), items i = [g^1 ‖ … ‖ g^M] (feature
modalities only). Score = ⟨u, i⟩.

Losses (besides the trainer's BPR), each weighted ×ln 2 (the authors' BPR is −mean log₂ σ,
the trainer's −mean ln σ: the whole objective is theirs ×ln 2 and the weights keep their
scale and grids):

- ``reg`` (``reg_weight``): Σ_m mean((p^m of the batch's users)²) + mean(α²) (feature
  modalities' preferences only, as the authors').
- ``align`` (``align_weight``, multilevel cross-modal alignment): four tables, the fused one
  (users u, items i), the id-guided one ([h^id_u ‖ … ‖ h^id_u], [g^id ‖ … ‖ g^id]) and each
  modality's ([h^m_u ‖ …], [g^m ‖ …], the modality repeated M times); for every pair of
  them |var_a − var_b| + |mean_a − mean_b| of all their elements (mean and unbiased variance
  over users and items together): 6 pairs with two modalities.
- ``mask_f`` (``mask_weight_f``, feature-level general feature enhancement): the fused
  vectors under dropout (rate ``dropout``, no gradient) against a linear map P of them,
  2 − mean cos(drop(u), P u) − mean cos(drop(i), P i) over all users and all items.
- ``mask_g`` (``mask_weight_g``, graph-level general feature enhancement, after SimGCL): two
  noisy versions of the fused vectors, in which every hop of the user–item propagation adds
  ``noise_eps``·sign(h)·norm(U(0,1) noise), compared by InfoNCE at ``temperature`` over the
  batch's distinct users plus over its distinct positive items.

Differences from the authors' code (deliberate; the published numbers come from that code):

- The authors' ``mask_f`` is computed entirely under ``torch.no_grad()``: it adds a random
  constant to the loss and no gradient (their MLP P is never trained). Here P and the
  fused vectors receive its gradient (the target side stays without gradient, as BM3's),
  which is what the paper describes; ``mask_weight_f: 0`` gives the authors' training.
- ``mask_g``: the authors run the noisy views through four separate encoders (their own
  preferences and MLPs per modality and view), trained by this term alone, so it reaches
  the scored model only through α. Here the two noisy views share the encoders of the
  scored view, as in SimGCL and the paper's description. Their InfoNCE runs over all users
  and all items (an n × n similarity matrix); here over the batch's distinct users and
  positive items (never a dense users × users or items × items matrix).
- ``align``: a modality table repeated M times has the mean and, up to the factor
  (N − 1)·M / (M·N − 1) on the unbiased variance, the variance of one copy; the repeated
  tables are not materialised, their exact statistics are computed from one copy.
- Dead code of the authors' left out: the dropped-edge lists (built, never used), the user–
  user graph lists read and resampled every epoch (never used), ``weight_i``, ``MLP_user``,
  the trainable copies of the feature tables and their projections ``image_trs``/``text_trs``
  (not read by the forward pass; the item graph is built from the raw features either way),
  the initial ``result_embed*`` tables. Feature tables stay fixed, as in this package's
  DualGNN. MMRec hard-codes the width 64, the MLP's 256, the two user–item hops and the
  noise 0.1; here they are ``embedding_dim``, ``mlp_hidden_dim``, ``ui_layers`` and
  ``noise_eps``.
- With one feature modality there is no fusion weight (the authors' code needs two).
- Evaluation re-embeds in eval mode (no noise, no dropout); the authors score with the
  vectors of the last training batch's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import LN2, solosim_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, knn_lists, normalise_lists, spmm
from sea.models.propagation import propagate
from sea.models.towers import ModalityTowers
from sea.ops import full_mean, full_sum

ID = "id"


@dataclass
class MENTORConfig(Section):
    """params.yaml [mentor]. The authors' final grid: mask_weight_g x temp (learning rate 1e-4)."""

    embedding_dim: int = 64  # width of every view's user preference and item projection (authors: 64 fixed)
    mlp_hidden_dim: int = 256  # hidden width of the item MLPs (authors: 4 x 64 fixed)
    ui_layers: int = 2  # hops over the user-item graph, sum of layers 0..L (authors: 2 fixed)
    knn_k: int = 10  # item-item graph: top-k cosine neighbours per modality (authors: knn_k)
    image_knn_weight: float = 0.1  # item-item graph = w*image + (1 - w)*text (authors: mm_image_weight)
    item_layers: int = 1  # hops over the item-item graph (authors: n_mm_layers 1; their n_layers is unused)
    reg_weight: float = 1e-3  # preference/fusion-weight penalty (authors: [0.001])
    align_weight: float = 0.1  # multilevel alignment (authors: [0.1]; paper grid {0.1, 0.2, 0.3})
    mask_weight_f: float = 1.5  # feature masking (authors: [1.5]; paper grid {0.5, ..., 2.5})
    dropout: float = 0.5  # feature masking's dropout rate (authors: [0.5])
    mask_weight_g: float = 1e-4  # graph perturbation InfoNCE (authors: [1e-4, 1e-3])
    temperature: float = 0.2  # its temperature (authors: temp [0.2, 0.4, 0.6])
    noise_eps: float = 0.1  # size of the per-hop noise (authors: 0.1 fixed)
    knn_chunk: int = 1024  # rows of the item-item similarity computed at a time (memory only)

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.mlp_hidden_dim > 0, section, "mlp_hidden_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(self.align_weight >= 0, section, "align_weight must be >= 0")
        require(self.mask_weight_f >= 0, section, "mask_weight_f must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.mask_weight_g >= 0, section, "mask_weight_g must be >= 0")
        require(self.temperature > 0, section, "temperature must be positive")
        require(self.noise_eps >= 0, section, "noise_eps must be >= 0")
        require(self.knn_chunk >= 1, section, "knn_chunk must be >= 1")


def mentor_item_graph(features: dict[str, torch.Tensor], k: int, image_weight: float, chunk: int) -> torch.Tensor:
    """The frozen item–item graph, ``[n, n]`` CSR: per modality each item's top-``k`` cosine
    neighbours (itself included), binary, D^-1/2 S D^-1/2; mixed ``image_weight``·image +
    (1 − ``image_weight``)·text (a single modality: its graph). Searched ``chunk`` rows at a
    time: never a dense [n, n] matrix."""
    weights = {"image": image_weight, "text": 1.0 - image_weight} if len(features) > 1 else None
    total = None
    for m, x in features.items():
        neighbours, _ = knn_lists(x, k, chunk)
        n, kk = neighbours.shape
        values = normalise_lists(neighbours, torch.ones(n, kk, device=neighbours.device)).reshape(-1)
        if weights is not None:
            values = values * weights[m]
        rows = torch.arange(n, device=neighbours.device).repeat_interleave(kk)
        graph = torch.sparse_coo_tensor(torch.stack([rows, neighbours.reshape(-1)]), values, (n, n))
        total = graph if total is None else total + graph
    return total.coalesce().to_sparse_csr()


def perturbed_propagate(adj: torch.Tensor, x: torch.Tensor, layers: int, eps: float) -> torch.Tensor:
    """Σ_{l=0}^{L} h_l with h_0 = x, h_{l+1} = Â h_l + eps·sign(Â h_l)·norm(noise), noise
    uniform in [0, 1) per element (torch's generator), rows L2-normalised (SimGCL's noise)."""
    out = x
    for _ in range(layers):
        x = spmm(adj, x)
        x = x + eps * torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1)
        out = out + x
    return out


def table_moments(user: torch.Tensor, item: torch.Tensor, copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of all elements of [user; item] repeated ``copies`` times
    side by side (without building the repeated table)."""
    n = user.numel() + item.numel()
    mean = (full_sum(user) + full_sum(item)) / n
    # Centred on the mean without its gradient (the backward of subtracting a scalar that has
    # one would sum a whole table in ATen's thread-dependent grouping); the second part
    # restores the exact value (it is 0) and the exact gradient.
    shift = mean.detach()
    squares = full_sum((user - shift).pow(2)) + full_sum((item - shift).pow(2)) - n * (mean - shift).pow(2)
    return mean, copies * squares / (copies * n - 1)


@register
class MENTOR(ModalityTowers, Recommender):
    r"""MENTOR ("MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation",
    Jinfeng Xu, Zheyu Chen, Shuo Yang, Jinze Li, Hewei Wang and Edith C.-H. Ngai, AAAI 2025).

    Per view v (an id view with a learnable item table, and each feature modality m):

    .. math::
        h^v = \sum_{l=0}^{L} \hat{A}^l\,\mathrm{norm}\big([p^v; f_v(x^v)]\big), \qquad
        g^v = h^v_I + S^K h^v_I

    with :math:`f_v(x) = W_2\,\mathrm{LeakyReLU}(W_1 x + b_1) + b_2`, :math:`\hat{A}` the
    normalised user–item graph and S the frozen kNN item–item graph. Scored vectors:

    .. math::
        u = [\alpha_{u1} h^1_u \,\|\, \dots \,\|\, \alpha_{uM} h^M_u], \qquad
        i = [g^1_i \,\|\, \dots \,\|\, g^M_i]

    Loss = BPR + ln 2·(λ_reg·reg + λ_align·align + λ_f·mask_f + λ_g·mask_g), where ``align``
    sums |var_a − var_b| + |mean_a − mean_b| over the pairs of the fused, id-guided and
    per-modality tables, ``mask_f`` = 2 − mean cos(drop(u), P u) − mean cos(drop(i), P i)
    and ``mask_g`` the InfoNCE between two noisy propagations (module docstring).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: feature modality -> raw feature width, in the fusion's order.
        item_graph: the item–item graph S, ``[n_items, n_items]`` sparse.
        embedding_dim: d, width of each view (64); the scored vectors have M·d.
        mlp_hidden_dim: hidden width of the MLPs f_v (256).
        ui_layers: L (2). item_layers: K (1).
        reg_weight, align_weight, mask_weight_f, mask_weight_g: the terms' weights (1e-3,
            0.1, 1.5, 1e-4; 0 skips a term).
        dropout: the feature-masking dropout rate (0.5).
        temperature: τ of ``mask_g`` (0.2). noise_eps: its noise size (0.1).
    """

    name = "mentor"
    Config = MENTORConfig
    uses_features = True
    #: The grid ``tune.spaces.mentor`` defaults to (docs/tuning.md): the authors' final grid.
    search_space = {"train.lr": [0.0001], "mask_weight_g": [0.0001, 0.001], "temperature": [0.2, 0.4, 0.6]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graph: torch.Tensor,
        *,
        embedding_dim: int = 64,
        mlp_hidden_dim: int = 256,
        ui_layers: int = 2,
        item_layers: int = 1,
        reg_weight: float = 1e-3,
        align_weight: float = 0.1,
        mask_weight_f: float = 1.5,
        dropout: float = 0.5,
        mask_weight_g: float = 1e-4,
        temperature: float = 0.2,
        noise_eps: float = 0.1,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.views = [ID, *self.modalities]
        self.ui_layers, self.item_layers = ui_layers, item_layers
        self.reg_weight, self.align_weight = reg_weight, align_weight
        self.mask_weight_f, self.dropout = mask_weight_f, dropout
        self.mask_weight_g, self.temperature, self.noise_eps = mask_weight_g, temperature, noise_eps
        self.id_table = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_items, embedding_dim)))
        # towers for the ID view and each modality; fusion weights over the modalities only
        self.init_towers(n_users, {ID: embedding_dim} | feature_dims, embedding_dim, mlp_hidden_dim, self.modalities)
        width = len(self.modalities) * embedding_dim
        self.predictor = nn.Linear(width, width)  # P of the feature-masking term
        self.item_graph = FrozenGraph(item_graph)

    @classmethod
    def build(cls, data: GraphData, cfg: MENTORConfig, modalities: Sequence[str] | None = None, *unused) -> MENTOR:
        modalities = list(modalities or data.features)
        graph = mentor_item_graph(
            {m: data.features[m] for m in modalities}, cfg.knn_k, cfg.image_knn_weight, cfg.knn_chunk
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graph.to(data.device),
            embedding_dim=cfg.embedding_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            reg_weight=cfg.reg_weight,
            align_weight=cfg.align_weight,
            mask_weight_f=cfg.mask_weight_f,
            dropout=cfg.dropout,
            mask_weight_g=cfg.mask_weight_g,
            temperature=cfg.temperature,
            noise_eps=cfg.noise_eps,
        )

    def layer0(self, data: GraphData, v: str) -> torch.Tensor:
        """norm([p^v; f_v(x^v)]), ``[n_users + n_items, d]``."""
        feature = self.id_table if v == ID else data.features[v]
        return F.normalize(torch.cat([self.preference[v], self.mlp[v](feature)]), dim=1)

    def item_hops(self, h_item: torch.Tensor) -> torch.Tensor:
        """g = h + S^K h over the item–item graph."""
        x = h_item
        for _ in range(self.item_layers):
            x = self.item_graph(x)
        return h_item + x if self.item_layers > 0 else 2 * h_item

    def fuse(self, h: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(u, i, g) from each feature modality's propagated vectors ``h[m]``: the fused users
        and items, and each modality's item-graph-enhanced items g^m."""
        U = self.n_users
        g = {m: self.item_hops(h[m][U:]) for m in self.modalities}
        if self.fusion is None:
            user = h[self.modalities[0]][:U]
        else:
            user = torch.cat([self.fusion[:, j : j + 1] * h[m][:U] for j, m in enumerate(self.modalities)], dim=1)
        return user, torch.cat([g[m] for m in self.modalities], dim=1), g

    def forward(self, data: GraphData) -> Embeddings:
        """The fused user and item vectors; in training, ``extras`` holds what the
        self-supervised terms read (the views' tables and the two noisy fusions)."""
        views = self.views if self.training and self.align_weight > 0 else self.modalities
        x = {v: self.layer0(data, v) for v in views}
        h = {v: propagate(data.adj, x[v], self.ui_layers) for v in views}
        user, item, g = self.fuse(h)
        extras: dict[str, Any] = {}
        if self.training:
            if self.align_weight > 0:
                U = self.n_users
                extras["views"] = [(h[v][:U], self.item_hops(h[v][U:]) if v == ID else g[v]) for v in self.views]
            if self.mask_weight_g > 0:
                for name in ("noisy1", "noisy2"):
                    hn = {
                        m: perturbed_propagate(data.adj, x[m], self.ui_layers, self.noise_eps) for m in self.modalities
                    }
                    extras[name] = self.fuse(hn)[:2]
        return Embeddings(user, item, extras)

    def alignment(self, emb: Embeddings) -> torch.Tensor:
        """Σ over pairs of the fused, id-guided and modality tables of |Δvar| + |Δmean|."""
        copies = len(self.modalities)
        moments = [table_moments(emb.user, emb.item)]
        moments += [table_moments(u, i, copies) for u, i in emb.extras["views"]]
        total = 0.0
        for a in range(len(moments)):
            for b in range(a + 1, len(moments)):
                total = total + (moments[a][1] - moments[b][1]).abs() + (moments[a][0] - moments[b][0]).abs()
        return total

    def feature_mask(self, emb: Embeddings) -> torch.Tensor:
        """2 − mean cos(drop(u), P u) − mean cos(drop(i), P i), targets without gradient."""
        total = 0.0
        for table in (emb.user, emb.item):
            with torch.no_grad():
                target = F.dropout(table.detach(), self.dropout, training=True)
            total = total + 1.0 - full_mean(F.cosine_similarity(target, self.predictor(table), dim=1))
        return total

    def graph_contrast(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """InfoNCE(noisy 1 → noisy 2) over the batch's distinct users + its distinct positive items."""
        (u1, i1), (u2, i2) = emb.extras["noisy1"], emb.extras["noisy2"]
        users, items = torch.unique(batch.users), torch.unique(batch.pos)
        return solosim_loss(u1[users], u2[users], self.temperature) + solosim_loss(
            i1[items], i2[items], self.temperature
        )

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``, ``align``, ``mask_f``, ``mask_g`` (each weighted ×ln 2; see the module
        docstring); a term whose weight is 0 is skipped."""
        terms = {}
        if self.reg_weight > 0:
            reg = sum(full_mean(self.preference[m][batch.users].pow(2)) for m in self.modalities)
            if self.fusion is not None:
                reg = reg + full_mean(self.fusion.pow(2))
            terms["reg"] = Term(reg, self.reg_weight * LN2)
        if self.align_weight > 0:
            terms["align"] = Term(self.alignment(emb), self.align_weight * LN2)
        if self.mask_weight_f > 0:
            terms["mask_f"] = Term(self.feature_mask(emb), self.mask_weight_f * LN2)
        if self.mask_weight_g > 0:
            terms["mask_g"] = Term(self.graph_contrast(emb, batch), self.mask_weight_g * LN2)
        return terms
