"""SEA: Separate Learning for multimedia recommendation (SEA.md §1), as one Recommender.

Per modality m, an item's raw feature x_i^m is split into a *generic* part g_i^m and a
*unique* part s_i^m (:class:`~sea.models.separation.Separation`); an MLP of [g; s] gives
the item node, a learnable vector gives the user node, and both are L2-normalised and
propagated without weights over the user–item graph (h = x + Âx + Â²x). Users fuse their
modalities with learnable per-user weights; items concatenate them and take one hop over
an item–item kNN graph built once from the raw features. Scores are dot products. The
separation adds the CLUB (or ℓ2) and Solosim terms and fits the CLUB estimators (the
:class:`~sea.models.separation.Separable` mixin's hooks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Embeddings
from sea.config import Section, require
from sea.losses import ClubConfig, LossConfig
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, item_item_graph
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, SplitFeatures


@dataclass
class SEAConfig(Section):
    """params.yaml [sea]. Feature widths come from the feature files, never from here."""

    embedding_dim: int = 64  # width of each modality's user/item vectors
    generic_fraction: float = 0.5  # share of each modality's split that is generic
    mlp_hidden_dim: int = 256  # hidden width of the item MLP
    gcn_layers: int = 2  # propagation hops: h = x + Âx + Â²x
    knn_k: int = 10  # item–item graph: top-k cosine neighbours per modality
    image_knn_weight: float = 0.1  # item–item graph = w·image kNN + (1 − w)·text kNN
    head_dim: int = 32  # width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(min(self.embedding_dim, self.mlp_hidden_dim, self.head_dim) > 0, section, "sizes must be positive")
        require(0.0 < self.generic_fraction < 1.0, section, "generic_fraction must be in (0, 1)")
        require(self.gcn_layers >= 0 and self.knn_k >= 1, section, "gcn_layers >= 0 and knn_k >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")


class ModalityEncoder(nn.Module):
    """One modality's branch: the item MLP of its split [g; s] and the users' vectors."""

    def __init__(self, n_users: int, feature_dim: int, hidden_dim: int, embedding_dim: int):
        super().__init__()
        self.item_mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, embedding_dim)
        )
        self.user_pref = nn.Embedding(n_users, embedding_dim)
        nn.init.xavier_uniform_(self.user_pref.weight)

    def forward(self, split: SplitFeatures, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (user, item) node vectors from modality ``m``'s split."""
        first, rest = self.item_mlp[0], self.item_mlp[1:]
        return F.normalize(self.user_pref.weight, dim=1), F.normalize(rest(split.apply(m, first)), dim=1)


@register
class SEA(Separable, Recommender):
    """SEA recommender.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name ("image", "text") -> raw feature width, in fusion order.
        item_graph: normalised item–item kNN graph [n_items, n_items], sparse (frozen, and
            not saved in the state dict: :meth:`build` rebuilds it from the features).
        embedding_dim: width of each modality's node vectors (64).
        generic_fraction: share of each modality's split that is generic (0.5).
        mlp_hidden_dim: hidden width of the item MLP (256).
        gcn_layers: propagation hops over the user–item graph (2).
        head_dim: output width of the CLUB projections and Solosim heads (32).
        loss, club: the shared ``loss`` and ``club`` sections (see :class:`Separation`).
    """

    name = "sea"
    Config = SEAConfig
    uses_features = True
    #: The grid ``tune.spaces.sea`` defaults to (docs/tuning.md).
    search_space = {"generic_fraction": [0.25, 0.5, 0.75], "gcn_layers": [1, 2]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graph: torch.Tensor,
        *,
        embedding_dim: int = 64,
        generic_fraction: float = 0.5,
        mlp_hidden_dim: int = 256,
        gcn_layers: int = 2,
        head_dim: int = 32,
        loss: LossConfig,
        club: ClubConfig,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.gcn_layers = gcn_layers
        self.encoders = nn.ModuleDict(
            {m: ModalityEncoder(n_users, d, mlp_hidden_dim, embedding_dim) for m, d in feature_dims.items()}
        )
        # Per-user modality weights (softmax over modalities); absent with one modality,
        # where they could not receive a gradient.
        self.user_modality_logits = (
            nn.Parameter(torch.zeros(n_users, len(feature_dims))) if len(feature_dims) > 1 else None
        )
        self.item_graph = FrozenGraph(item_graph)
        self.separation = Separation(
            feature_dims,
            generic_fraction=generic_fraction,
            head_dim=head_dim,
            head_hidden_dim=embedding_dim,
            loss=loss,
            club=club,
        )

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: SEAConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> SEA:
        modalities = list(modalities or data.features)
        graph = item_item_graph({m: data.features[m].cpu() for m in modalities}, cfg.knn_k, cfg.image_knn_weight)
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graph.to(data.device),
            embedding_dim=cfg.embedding_dim,
            generic_fraction=cfg.generic_fraction,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            gcn_layers=cfg.gcn_layers,
            head_dim=cfg.head_dim,
            loss=loss or LossConfig(),
            club=club or ClubConfig(),
        )

    def forward(self, data: GraphData) -> Embeddings:
        """Embed every user and item; ``extras["split"]`` holds each modality's [g; s]
        (:class:`~sea.models.separation.SplitFeatures`)."""
        split, extras = self.item_features(data.features)
        users, items = [], []
        for m in self.modalities:
            u, i = self.encoders[m](split, m)
            h = propagate(data.adj, torch.cat([u, i]), self.gcn_layers)  # x + Âx + Â²x + …
            users.append(h[: self.n_users])
            items.append(h[self.n_users :])
        if self.user_modality_logits is not None:
            w = torch.softmax(self.user_modality_logits, dim=1)
            users = [w[:, j : j + 1] * u for j, u in enumerate(users)]
        item = torch.cat(items, dim=1)
        item = item + self.item_graph(item)
        return Embeddings(torch.cat(users, dim=1), item, extras)
