"""DRAGON (Zhou, Zhou, Liu, Zeng, Miao, Wang, You & Jiang, "Enhancing Dyadic Relations with
Homogeneous Graphs for Multimodal Recommendation", ECAI 2023), as MMRec runs it.

Three graphs:

1. A *heterogeneous* user–item graph per modality m: the training graph whose user nodes
   carry a learnable preference vector p_u^m and whose item nodes carry the item's feature
   projected by a two-layer MLP, f_m(x_i^m). Both are L2-normalised per row, then propagated
   (``ui_layers`` weightless hops over the symmetric-normalised adjacency Â, the sum of the
   layers 0…L).
2. A *user–user* co-occurrence graph: each user's ``user_knn_k`` users with the most training
   items in common (ties: the lower user id), weighted by the softmax of those counts.
3. The frozen *item–item* kNN graph of the raw features (as FREEDOM's: cosine top-``knn_k``
   per modality, w·image + (1 − w)·text).

The modalities are fused by concatenation: the item vector is [h^1_i; h^2_i; …], the user
vector [α_u1·h^1_u; α_u2·h^2_u; …] with a learnable weight per user and modality
(softmax-initialised). Items then add ``item_layers`` hops over the item–item graph, users
one weighted hop over the user–user graph. Score = dot product; BPR plus λ times the mean
square of the batch users' preference vectors and of all the fusion weights.

``separation: sea`` ("DRAGON+SEA", as SEA's plug-in on VBPR and FREEDOM): each modality's
feature is split into generic and unique parts by :class:`~sea.models.separation.Separation`
before its MLP (the MLP's first layer reads the split), and the CLUB and Solosim terms are
added (the :class:`~sea.models.separation.Separable` mixin).

Differences from MMRec's ``dragon.py`` (all deliberate; the published numbers come from that code):

- MMRec's BPR is −mean log₂ σ(·), the trainer's −mean ln σ(·): the same loss divided by
  ln 2. The regularisation term enters with weight λ·ln 2 instead of λ, so that the whole
  loss is MMRec's times the constant ln 2, to which Adam's update is invariant (up to its
  ε): ``reg_weight`` keeps MMRec's scale and grid.
- MMRec pads a user with fewer than k co-occurring users to k by re-drawing random
  neighbours of its list at every epoch (``topk_sample``), so a duplicated neighbour counts
  twice in the softmax; here such a user keeps its real neighbours only, softmax over
  them (deterministic, and what the paper describes). MMRec breaks ties in the counts
  arbitrarily (torch.topk); here the lower user id wins. MMRec reads the co-occurrence
  lists from a file precomputed by a script; here they are built from the training edges
  at build time, chunk by chunk (never a dense users × users matrix).
- The item kNN lists leave out the item itself (MMRec counts each item as its own nearest
  neighbour), as :mod:`sea.models.freedom` and SEA's graph.
- MMRec's dead code is left out: the per-modality edge dropping it computes but never
  passes to the propagation, the unused ``weight_i``, ``MLP_v``/``MLP_t``/``MLP_user``,
  ``image_trs``/``text_trs`` and trainable feature tables (the features stay fixed, as in
  MMRec's forward); the fusion is its ``cat`` construction (the other constructions are
  switched off in its code). The width is ``embedding_dim`` (MMRec hard-codes 64 there).
- With one modality there is no fusion weight (MMRec keeps an unused one in its penalty).
  ``item_layers: 0`` and ``user_knn_k: 0`` switch the item–item and user–user graphs off
  (MMRec's loop would double the item vectors at 0 hops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import LN2, ClubConfig, LossConfig
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, item_item_graph, optional_user_graph
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.models.towers import ModalityTowers


@dataclass
class DRAGONConfig(Section):
    """params.yaml [dragon]. MMRec grid-searches reg_weight and the learning rate."""

    embedding_dim: int = 64  # width of each modality's user preference and item projection
    mlp_hidden_dim: int = 256  # hidden width of the item feature MLPs (MMRec: 4 x 64)
    ui_layers: int = 2  # hops over each modality's user-item graph (sum of layers 0..L)
    item_layers: int = 1  # hops over the frozen item-item graph (MMRec's n_mm_layers)
    knn_k: int = 10  # item-item graph: top-k cosine neighbours per modality
    image_knn_weight: float = 0.1  # item-item graph = w * image kNN + (1 - w) * text kNN
    user_knn_k: int = 40  # user-user graph: the k users with the most common items (0: none)
    reg_weight: float = 1e-3  # lambda; MMRec grid [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
    separation: str = "none"  # none | sea: SEA's split of each modality before its MLP, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.mlp_hidden_dim > 0, section, "mlp_hidden_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require(self.user_knn_k >= 0, section, "user_knn_k must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


@register
class DRAGON(ModalityTowers, Separable, Recommender):
    r"""DRAGON ("Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
    Recommendation", Zhou, Zhou, Liu, Zeng, Miao, Wang, You & Jiang, ECAI 2023).

    Per modality m, user nodes carry a preference vector :math:`p^m_u` and item nodes the
    projection :math:`f_m(x^m_i) = W_2\,\mathrm{LeakyReLU}(W_1 x^m_i + b_1) + b_2` of their
    feature; the rows are L2-normalised and propagated over the user–item graph :math:`\hat{A}`:

    .. math::
        h^m = \sum_{l=0}^{L} \hat{A}^l \,\mathrm{norm}\big([p^m; f_m(x^m)]\big)

    Fusion by concatenation, with a learnable weight :math:`\alpha_{um}` per user and
    modality; then one hop over the user–user graph :math:`S_U` (softmax of co-occurrence
    counts over each user's top-k) and :math:`L_I` hops over the frozen item–item graph
    :math:`S_I`:

    .. math::
        u = \tilde{u} + S_U \tilde{u}, \quad \tilde{u} = [\alpha_{u1} h^1_u; \alpha_{u2} h^2_u], \qquad
        i = \tilde{i} + S_I^{L_I} \tilde{i}, \quad \tilde{i} = [h^1_i; h^2_i]

    Score :math:`\langle u, i \rangle`. Besides the trainer's BPR, the term ``reg`` is
    :math:`\sum_m \mathrm{mean}\big((p^m_{B})^2\big) + \mathrm{mean}(\alpha^2)` (the batch's
    users' preferences, all fusion weights), weighted λ·ln 2 (MMRec's BPR is in bits; see
    the module docstring).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width, in the fusion's order.
        item_graph: the frozen, normalised item–item graph ``[n_items, n_items]`` (sparse).
        user_graph: the user–user graph ``[n_users, n_users]`` (sparse, rows sum to 1 or 0),
            or None for none.
        embedding_dim: width of each modality's vectors (64); users and items get
            ``len(feature_dims) · embedding_dim``.
        mlp_hidden_dim: hidden width of the feature MLPs f_m (256).
        ui_layers: L, hops over the user–item graph (2).
        item_layers: L_I, hops over the item–item graph (1).
        reg_weight: λ (1e-3; 0 drops the term).
        separation: keyword arguments of :class:`~sea.models.separation.Separation`
            (without ``feature_dims``) for DRAGON+SEA, or None for plain DRAGON: each
            modality's feature is split into [generic; unique] before its MLP, and the
            CLUB and Solosim terms are added.
    """

    name = "dragon"
    Config = DRAGONConfig
    uses_features = True
    #: The grid ``tune.spaces.dragon`` defaults to (docs/tuning.md).
    search_space = {"train.lr": [0.001, 0.0001], "reg_weight": [0.1, 0.01, 0.001, 0.0001, 1e-05]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graph: torch.Tensor,
        user_graph: torch.Tensor | None,
        *,
        embedding_dim: int = 64,
        mlp_hidden_dim: int = 256,
        ui_layers: int = 2,
        item_layers: int = 1,
        reg_weight: float = 1e-3,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.ui_layers, self.item_layers, self.reg_weight = ui_layers, item_layers, reg_weight
        self.init_towers(n_users, feature_dims, embedding_dim, mlp_hidden_dim)
        self.item_graph = FrozenGraph(item_graph)
        self.user_graph = FrozenGraph(user_graph) if user_graph is not None else None
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: DRAGONConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> DRAGON:
        modalities = list(modalities or data.features)
        item_graph = item_item_graph({m: data.features[m].cpu() for m in modalities}, cfg.knn_k, cfg.image_knn_weight)
        user_graph = optional_user_graph(
            data.train_users, data.train_items, data.n_users, data.n_items, cfg.user_knn_k, data.device
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            item_graph.to(data.device),
            user_graph,
            embedding_dim=cfg.embedding_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            reg_weight=cfg.reg_weight,
            separation=separation_settings(cfg, loss, club),
        )

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors (the same in training and eval mode); with the separation,
        ``extras["split"]`` holds each modality's [g; s]."""
        content, extras = self.item_features(data.features)
        h = [self.modality_vectors(data, content, m) for m in self.modalities]
        if self.fusion is None:
            user = h[0][: self.n_users]
        else:
            user = torch.cat([self.fusion[:, j : j + 1] * hm[: self.n_users] for j, hm in enumerate(h)], dim=1)
        item = torch.cat([hm[self.n_users :] for hm in h], dim=1)
        if self.item_layers > 0:
            hop = item
            for _ in range(self.item_layers):
                hop = self.item_graph(hop)
            item = item + hop
        if self.user_graph is not None:
            user = user + self.user_graph(user)
        return Embeddings(user, item, extras)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: Σ_m mean((p^m of the batch's users)²) + mean(α²), weight λ·ln 2; with
        the separation, its ``club`` and ``solosim`` terms."""
        terms = {}
        if self.reg_weight > 0:
            terms["reg"] = Term(self.tower_penalty(batch.users), self.reg_weight * LN2)
        return terms | self.separation_losses(emb, batch)
