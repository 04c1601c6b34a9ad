"""MMGCF ("Multimodal Graph Collaborative Filtering for Recommendation with Graph
Convolutional Networks", UMAP 2026, doi:10.1145/3774935.3806158), as MMRec's
``src/models/mmgcf.py`` defines it, optionally with SEA's separation.

A *late-fusion* model: a LightGCN over the user–item graph (mean of layers 0…L of the id
embeddings) gives the user vectors and the items' graph vectors; each modality's fixed
feature is mapped by its own linear layer P_m (with bias) to ``feat_dim``; the item vector
is the fusion of the graph vector with those projections. Fusion (``fusion_mode``): the
element-wise ``mean`` or ``sum`` of the vectors, or ``concat`` (concatenation, then a
linear layer). Weighting (``weighting``):

- ``equal``: the modalities are fused first (one modality: itself), then the result with
  the graph vector;
- ``alpha``: with a = σ(α) (α a learnable scalar, initially 0), fuse [a·e_i, (1 − a)·P_m x_i^m …];
- ``normalized``: fuse [M·e_i/‖e_i‖, P_m x_i^m/‖P_m x_i^m‖ …] (M modalities).

During training the user–item graph is pruned every epoch (:meth:`MMGCF.on_epoch_start`):
a share (1 − ``dropout``) of the training edges is kept, drawn without replacement with
probability ∝ 1/√(d_u·d_i) (FREEDOM's draw), and re-normalised. Evaluation uses the whole
training graph. Loss: BPR on the fused vectors + ``reg_weight``·(‖E⁰_u‖² + ‖E⁰_{i⁺}‖² +
‖E⁰_{i⁻}‖²)/(2B) on the batch's layer-0 id vectors.

``separation: sea`` (not in MMRec): each modality's feature is split into generic and unique
parts by :class:`~sea.models.separation.Separation` before P_m, and the CLUB and Solosim
terms are added (the :class:`~sea.models.separation.Separable` mixin).

Differences from MMRec's code:

- The default ``weighting`` is ``normalized`` (a point of MMRec's grid; its yaml recommends
  ``equal``, whose sums the raw feature scales swamp: see docs/models/mmgcf.md).
- The kept-edge count is round((1 − dropout)·E) (FREEDOM's), MMRec's ⌊(1 − dropout)·E⌋: at
  most one edge more; the draw comes from the trainer's seeded generator (MMRec:
  ``torch.multinomial`` on the global generator, the same law). Degrees are counted without
  MMRec's +1e-7.
- Only the fusion layers the chosen ``weighting`` reads are created (MMRec's ``concat``
  creates all three of its layers whatever the weighting, two of them then unused), so that
  every parameter learns; the random initialisation therefore draws in another order.
- The BPR is the trainer's ranking loss (``loss.kind``; BPR by default, as MMRec's mean
  BPR); with several negatives per positive the regulariser sums over all of them, still
  divided by 2B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.losses import ClubConfig, LossConfig, rows_norm
from sea.models.base import GraphData, Recommender, register
from sea.models.freedom import FREEDOM
from sea.models.graphs import FrozenGraph, user_item_adjacency
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.ops import full_sum

FUSIONS = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")


class _Scale(torch.autograd.Function):
    """``x · s`` for a tensor ``x`` and a 0-d ``s`` whose gradient, Σ grad·x, is summed in
    :func:`~sea.ops.full_sum`'s fixed grouping (autograd's own sum depends on the thread count)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, s = ctx.saved_tensors
        gx = grad * s if ctx.needs_input_grad[0] else None
        gs = full_sum(grad * x).reshape(s.shape) if ctx.needs_input_grad[1] else None
        return gx, gs


@dataclass
class MMGCFConfig(Section):
    """params.yaml [mmgcf]. MMRec grid-searches layers, reg_weight, fusion_mode, weighting, dropout."""

    embedding_dim: int = 64  # user and item id embeddings (MMRec embedding_size)
    feat_dim: int = 64  # width of each modality's projection (MMRec feat_embed_dim); = embedding_dim unless concat
    layers: int = 2  # LightGCN layers over the (pruned) user–item graph (MMRec n_ui_layers); grid [1, 2, 3]
    reg_weight: float = 1e-3  # squared L2 of the batch's layer-0 id vectors / 2B; grid [1e-1, 1e-2, 1e-3, 1e-4]
    fusion_mode: str = "mean"  # mean | sum | concat; grid: all three
    weighting: str = "normalized"  # equal | alpha | normalized; grid: all three (MMRec's yaml recommends equal)
    dropout: float = 0.2  # share of user–item edges pruned each epoch (degree-sensitive); grid [0.2, 0.5, 0.8]
    separation: str = "none"  # none | sea: SEA's split of each modality before its projection, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.feat_dim > 0, section, "feat_dim must be positive")
        require(self.layers >= 0, section, "layers must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require_choice(self.fusion_mode, FUSIONS, section, "fusion_mode")
        require_choice(self.weighting, WEIGHTINGS, section, "weighting")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(
            self.fusion_mode == "concat" or self.feat_dim == self.embedding_dim,
            section,
            "feat_dim must equal embedding_dim unless fusion_mode is concat",
        )
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


@register
class MMGCF(Separable, Recommender):
    r"""MMGCF ("Multimodal Graph Collaborative Filtering for Recommendation with Graph
    Convolutional Networks", UMAP 2026; MMRec's ``mmgcf.py``, contributed by Giuseppe
    Spillo). With :math:`\hat{A}` the symmetric-normalised user–item graph (this epoch's
    pruned one in training), :math:`\mathbf{e}^{(0)}` the id embeddings and
    :math:`\mathbf{f}^m_i = P_m \mathbf{x}^m_i + \mathbf{b}_m` the projected features:

    .. math::
        [\mathbf{e}_u; \mathbf{e}_i] = \frac{1}{L + 1} \sum_{l=0}^{L} \hat{A}^l \mathbf{e}^{(0)}, \qquad
        \mathbf{h}_i = \mathrm{fuse}(\mathbf{e}_i, \mathbf{f}^1_i, \ldots, \mathbf{f}^M_i), \qquad
        \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{h}_i

    where ``fuse`` is set by ``fusion_mode`` (mean, sum, or concat + linear layer) and
    ``weighting`` (``equal``: fuse(e_i, fuse(f¹…f^M)); ``alpha``: fuse(a·e_i, (1 − a)·f^m …),
    a = σ(α); ``normalized``: fuse(M·e_i/‖e_i‖, f^m/‖f^m‖ …)). Loss: the ranking loss on
    :math:`\mathbf{e}_u, \mathbf{h}_i` plus ``reg_weight``·(‖E⁰_u‖² + ‖E⁰_{i⁺}‖² +
    ‖E⁰_{i⁻}‖²)/(2B).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width, in the order they are fused.
        train_users, train_items: the distinct training (user, item) edges.
        embedding_dim: width of the id embeddings (64).
        feat_dim: width of each modality's projection (64; must equal ``embedding_dim``
            unless ``fusion_mode`` is ``concat``).
        layers: LightGCN layers L (2).
        reg_weight: weight of the squared-L2 term (1e-3; 0 drops it).
        fusion_mode: ``mean``, ``sum`` or ``concat``.
        weighting: ``normalized``, ``equal`` or ``alpha``.
        dropout: share of the training edges pruned each epoch (0.2; 0: the whole graph).
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``),
            or None for plain MMGCF.
    """

    name = "mmgcf"
    Config = MMGCFConfig
    uses_features = True
    #: The grid ``tune.spaces.mmgcf`` defaults to (docs/tuning.md): MMRec's fusion x weighting
    #: grid; its layers, reg_weight and dropout grids are cut (324 points in all).
    search_space = {"fusion_mode": ["mean", "sum", "concat"], "weighting": ["equal", "alpha", "normalized"]}

    # FREEDOM's degree-sensitive draw of the kept edges (reads ``edge_weight`` and ``dropout``).
    kept_edges = FREEDOM.kept_edges

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        train_users: torch.Tensor,
        train_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        feat_dim: int = 64,
        layers: int = 2,
        reg_weight: float = 1e-3,
        fusion_mode: str = "mean",
        weighting: str = "normalized",
        dropout: float = 0.2,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        if fusion_mode != "concat" and feat_dim != embedding_dim:
            raise ValueError("feat_dim must equal embedding_dim unless fusion_mode is concat")
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.layers, self.reg_weight, self.dropout = layers, reg_weight, dropout
        self.fusion_mode, self.weighting = fusion_mode, weighting
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(d, feat_dim) for m, d in feature_dims.items()})
        n_mod = len(self.modalities)
        self.alpha = nn.Parameter(torch.zeros(())) if weighting == "alpha" else None
        # concat layers: only those the weighting reads
        self.fuse_all = self.fuse_modalities = self.fuse_id_modal = None
        if fusion_mode == "concat":
            if weighting == "equal":
                if n_mod > 1:
                    self.fuse_modalities = nn.Linear(n_mod * feat_dim, feat_dim)
                self.fuse_id_modal = nn.Linear(embedding_dim + feat_dim, embedding_dim)
            else:
                self.fuse_all = nn.Linear(embedding_dim + n_mod * feat_dim, embedding_dim)
        self.register_buffer("edge_users", train_users, persistent=False)
        self.register_buffer("edge_items", train_items, persistent=False)
        self.register_buffer(
            "edge_weight", FREEDOM.pruning_weights(train_users, train_items, n_users, n_items), persistent=False
        )
        self.pruned: FrozenGraph | None = None  # this epoch's training graph (on_epoch_start)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: MMGCFConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> MMGCF:
        modalities = list(modalities or data.features)
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1)
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            edges[0],
            edges[1],
            embedding_dim=cfg.embedding_dim,
            feat_dim=cfg.feat_dim,
            layers=cfg.layers,
            reg_weight=cfg.reg_weight,
            fusion_mode=cfg.fusion_mode,
            weighting=cfg.weighting,
            dropout=cfg.dropout,
            separation=separation_settings(cfg, loss, club),
        )

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Prune the user–item graph for this epoch (degree-sensitive), drawing from ``generator``."""
        if self.dropout == 0:
            return
        kept = self.kept_edges(generator).sort().values
        users, items = self.edge_users[kept].cpu().numpy(), self.edge_items[kept].cpu().numpy()
        adj = user_item_adjacency(users, items, self.n_users, self.n_items)
        self.pruned = FrozenGraph(adj, symmetric=True).to(self.edge_weight.device)

    def combine(self, tensors: list[torch.Tensor], layer: nn.Linear | None) -> torch.Tensor:
        """``fusion_mode`` applied to equally shaped ``tensors`` (concat: through ``layer``)."""
        if self.fusion_mode == "concat":
            return layer(torch.cat(tensors, dim=1))
        total = tensors[0]
        for t in tensors[1:]:
            total = total + t
        return total / len(tensors) if self.fusion_mode == "mean" else total

    def fuse(self, item: torch.Tensor, modal: list[torch.Tensor]) -> torch.Tensor:
        """The fused item vectors from the graph vectors ``item`` and the projected features ``modal``."""
        if self.weighting == "alpha":
            a = torch.sigmoid(self.alpha)
            return self.combine([_Scale.apply(item, a)] + [_Scale.apply(f, 1.0 - a) for f in modal], self.fuse_all)
        if self.weighting == "normalized":
            return self.combine([F.normalize(item) * len(modal)] + [F.normalize(f) for f in modal], self.fuse_all)
        fused = self.combine(modal, self.fuse_modalities) if len(modal) > 1 else modal[0]
        return self.combine([item, fused], self.fuse_id_modal)

    def forward(self, data: GraphData) -> Embeddings:
        """User vectors and fused item vectors: the LightGCN over this epoch's pruned graph
        in training mode, over ``data.adj`` in eval mode (deterministic)."""
        if not self.training or self.dropout == 0:
            adj = data.adj
        elif self.pruned is None:
            raise RuntimeError("MMGCF prunes its graph in on_epoch_start(): call it before training")
        else:
            adj = self.pruned.matrix
        h = propagate(adj, torch.cat([self.user.weight, self.item.weight]), self.layers, mean=True)
        content, extras = self.item_features(data.features)
        modal = [content.apply(m, self.projections[m]) for m in self.modalities]
        return Embeddings(h[: self.n_users], self.fuse(h[self.n_users :], modal), extras)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: (‖E⁰_u‖² + ‖E⁰_{i⁺}‖² + ‖E⁰_{i⁻}‖²)/(2B) on the batch's layer-0 id vectors;
        with the separation, ``club`` and ``solosim``."""
        terms = {}
        if self.reg_weight > 0:
            lookups = ((self.user.weight, batch.users), (self.item.weight, batch.pos), (self.item.weight, batch.neg))
            squares = sum(rows_norm(table, ids).square() for table, ids in lookups)
            terms["reg"] = Term(squares / (2 * len(batch.users)), self.reg_weight)
        return terms | self.separation_losses(emb, batch)
