"""DualGNN (Wang, Wei, Yin, Wu, Song & Nie, "DualGNN: Dual Graph Neural Network for Multimedia
Recommendation", IEEE Transactions on Multimedia 2021), as MMRec runs it.

Two graphs:

1. A user–item graph per modality m (MMGCN-style single-modality graphs): user nodes carry a
   learnable preference vector p_u^m, item nodes the item's feature through a two-layer MLP
   f_m(x_i^m). Both are L2-normalised per row, then propagated (``ui_layers`` weightless
   hops over the symmetric-normalised adjacency Â, the sum of the layers 0…L).
2. A user–user co-occurrence graph: each user's ``user_knn_k`` users with the most training
   items in common, weighted by the softmax of those counts (DRAGON's graph,
   :func:`sea.models.graphs.user_user_graph`, built chunk-wise and sparse).

Modality fusion: the user vector is the weighted sum Σ_m α_um·h^m_u with a learnable weight
per user and modality (softmax-initialised), the item vector the plain sum Σ_m h^m_i. The
fused user vectors then take one weighted hop over the user–user graph: u = ũ + S_U ũ.
Score = dot product; BPR plus λ times the mean square of the batch users' preference
vectors and of all the fusion weights.

``separation: sea`` ("DualGNN+SEA", as SEA's plug-in on VBPR and FREEDOM): each modality's
feature is split into generic and unique parts by :class:`~sea.models.separation.Separation`
before its MLP (the MLP's first layer reads the split), and the CLUB and Solosim terms are
added (the :class:`~sea.models.separation.Separable` mixin).

Differences from MMRec's ``dualgnn.py`` (deliberate; the published numbers come from that code):

- MMRec's BPR is −mean log₂ σ(·), the trainer's −mean ln σ(·): the penalty enters with
  weight λ·ln 2, so that the whole loss is MMRec's times ln 2 (Adam's update is invariant
  to that constant, up to its ε) and ``reg_weight`` keeps MMRec's scale and grid.
- Fusion: MMRec adds the text vectors *in place* into the image vectors
  (``representation += t_rep`` on the tensor ``v_rep`` also names), so its "weighted sum"
  of the users is α_v·(h^v + h^t) + α_t·h^t = α_v·h^v + (α_v + α_t)·h^t. Here it is the
  paper's Σ_m α_um·h^m_u. The two span the same functions (α'_t = α_v + α_t); they differ
  in the initial weights (MMRec's text weight starts near 1, here near ½) and in what the
  penalty on α shrinks.
- MMRec pads a user with fewer than k co-occurring users to k by re-drawing random
  neighbours of its list at every epoch, so a duplicated neighbour counts twice in the
  softmax; here such a user keeps its real neighbours only (deterministic, as the paper
  describes). Ties in the counts: the lower user id (MMRec: torch.topk's order). MMRec reads
  the lists from a file a preprocessing script writes through a dense users × users matrix;
  here they are built from the training edges at build time, chunk by chunk.
- MMRec's dead code is left out: the per-modality dropped-edge lists (computed, never used
  by the propagation), ``weight_i`` (never read by the forward pass, only penalised: its
  penalty moves nothing else), ``MLP_v``/``MLP_t``/``MLP_user``, ``result_embed``'s initial
  table, and the unused ``dropout``. ``aggr_mode: add`` (its grid's one value) is the
  normalised sum implemented here. MMRec hard-codes the width 64 and the two hops; here they
  are ``embedding_dim`` and ``ui_layers``.
- With one modality there is no fusion weight (MMRec keeps an unused one in its penalty);
  ``user_knn_k: 0`` switches the user–user graph off.
- Evaluation re-embeds in eval mode (the same function as in training); MMRec scores with
  the vectors of the last training batch's forward pass.
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
from sea.models.graphs import FrozenGraph, optional_user_graph
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.models.towers import ModalityTowers


@dataclass
class DualGNNConfig(Section):
    """params.yaml [dualgnn]. MMRec grid-searches reg_weight and the learning rate."""

    embedding_dim: int = 64  # width of each modality's user preference and item projection
    mlp_hidden_dim: int = 256  # hidden width of the item feature MLPs (MMRec: 4 x 64)
    ui_layers: int = 2  # hops over each modality's user-item graph (sum of layers 0..L)
    user_knn_k: int = 40  # user-user graph: the k users with the most common items (MMRec's k; 0: none)
    reg_weight: float = 1e-3  # lambda; MMRec grid [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
    separation: str = "none"  # none | sea: SEA's split of each modality before its MLP, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.mlp_hidden_dim > 0, section, "mlp_hidden_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.user_knn_k >= 0, section, "user_knn_k must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


@register
class DualGNN(ModalityTowers, Separable, Recommender):
    r"""DualGNN ("DualGNN: Dual Graph Neural Network for Multimedia Recommendation", Wang,
    Wei, Yin, Wu, Song & Nie, IEEE Transactions on Multimedia 2021).

    Per modality m, user nodes carry a preference vector :math:`p^m_u` and item nodes the
    projection :math:`f_m(x^m_i) = W_2\,\mathrm{LeakyReLU}(W_1 x^m_i + b_1) + b_2` of their
    feature; the rows are L2-normalised and propagated over the user–item graph :math:`\hat{A}`:

    .. math::
        h^m = \sum_{l=0}^{L} \hat{A}^l \,\mathrm{norm}\big([p^m; f_m(x^m)]\big)

    Fusion: a weighted sum of the users' modality vectors, with a learnable weight
    :math:`\alpha_{um}` per user and modality, and the plain sum for the items; then one
    hop over the user–user co-occurrence graph :math:`S_U` (softmax of the co-occurrence
    counts over each user's top-k):

    .. math::
        u = \tilde{u} + S_U \tilde{u}, \quad \tilde{u} = \sum_m \alpha_{um} h^m_u, \qquad
        i = \sum_m h^m_i

    Score :math:`\langle u, i \rangle`. Besides the trainer's BPR, the term ``reg`` is
    :math:`\sum_m \mathrm{mean}\big((p^m_{B})^2\big) + \mathrm{mean}(\alpha^2)` (the batch's
    users' preferences, all fusion weights), weighted λ·ln 2 (MMRec's BPR is in bits; see
    the module docstring).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width, in the fusion's order.
        user_graph: the user–user graph ``[n_users, n_users]`` (sparse, rows sum to 1 or 0),
            or None for none.
        embedding_dim: width of every vector (64).
        mlp_hidden_dim: hidden width of the feature MLPs f_m (256).
        ui_layers: L, hops over the user–item graph (2).
        reg_weight: λ (1e-3; 0 drops the term).
        separation: keyword arguments of :class:`~sea.models.separation.Separation`
            (without ``feature_dims``) for DualGNN+SEA, or None for plain DualGNN: each
            modality's feature is split into [generic; unique] before its MLP, and the
            CLUB and Solosim terms are added.
    """

    name = "dualgnn"
    Config = DualGNNConfig
    uses_features = True
    #: The grid ``tune.spaces.dualgnn`` defaults to (docs/tuning.md).
    search_space = {"train.lr": [0.01, 0.001, 0.0001], "reg_weight": [0.1, 0.01, 0.001, 0.0001]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        user_graph: torch.Tensor | None,
        *,
        embedding_dim: int = 64,
        mlp_hidden_dim: int = 256,
        ui_layers: int = 2,
        reg_weight: float = 1e-3,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.ui_layers, self.reg_weight = ui_layers, reg_weight
        self.init_towers(n_users, feature_dims, embedding_dim, mlp_hidden_dim)
        self.user_graph = FrozenGraph(user_graph) if user_graph is not None else None
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: DualGNNConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> DualGNN:
        modalities = list(modalities or data.features)
        user_graph = optional_user_graph(
            data.train_users, data.train_items, data.n_users, data.n_items, cfg.user_knn_k, data.device
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            user_graph,
            embedding_dim=cfg.embedding_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            ui_layers=cfg.ui_layers,
            reg_weight=cfg.reg_weight,
            separation=separation_settings(cfg, loss, club),
        )

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors (the same in training and eval mode); with the separation,
        ``extras["split"]`` holds each modality's [g; s]."""
        content, extras = self.item_features(data.features)
        h = [self.modality_vectors(data, content, m) for m in self.modalities]
        item = h[0][self.n_users :]
        for hm in h[1:]:
            item = item + hm[self.n_users :]
        if self.fusion is None:
            user = h[0][: self.n_users]
        else:
            user = self.fusion[:, :1] * h[0][: self.n_users]
            for j, hm in enumerate(h[1:], start=1):
                user = user + self.fusion[:, j : j + 1] * hm[: self.n_users]
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
