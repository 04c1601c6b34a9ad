"""VBPR (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit
Feedback", AAAI 2016), in MMRec's version, optionally with SEA's separation (SEA.md §4a).

Item i's vector is [γ_i ; E·f_i]: a learnable id embedding γ_i (d) and a linear map E of
its content f_i, the concatenation of its modality features (d); user u's vector is one
learnable 2d-wide embedding [γ_u ; θ_u]. The score is their dot product
γ_u·γ_i + θ_u·E·f_i. Trained with the trainer's ranking loss plus an L2 penalty on the
batch's vectors. (The paper's bias terms β_i and β'·f_i are left out, as in MMRec.)

``separation: sea`` ("VBPR+SEA", SEA's Table 3): each modality's feature is first split
into generic and unique parts by :class:`~sea.models.separation.Separation`, and f_i is the
concatenation of those splits [g^m; s^m]; the CLUB and Solosim terms are added (the
:class:`~sea.models.separation.Separable` mixin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section
from sea.errors import ConfigError
from sea.losses import ClubConfig, LossConfig, embedding_l2
from sea.models.base import GraphData, Recommender, register
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings


@dataclass
class VBPRConfig(Section):
    """params.yaml [vbpr]."""

    embedding_dim: int = 64  # d: width of the id part and of the content part (users: 2d)
    # Weight of the L2 penalty (‖U_B‖ + ‖I⁺_B‖ + ‖I⁻_B‖) / B (MMRec's EmbLoss: Frobenius
    # norms, not squared). MMRec grid: 2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5.
    reg_weight: float = 1e-3
    separation: str = "none"  # none | sea: SEA's split of each modality before E, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        if self.embedding_dim <= 0:
            raise ConfigError(f"params.yaml [{section}]: embedding_dim must be positive")
        if self.reg_weight < 0:
            raise ConfigError(f"params.yaml [{section}]: reg_weight must be >= 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


@register
class VBPR(Separable, Recommender):
    """VBPR recommender.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width; f_i concatenates them in this order.
        embedding_dim: d, the width of the id part and of the content part (64).
        reg_weight: weight of the embedding L2 penalty (:func:`~sea.losses.embedding_l2`,
            as BPR-MF's).
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``)
            for VBPR+SEA, or None for plain VBPR.
    """

    name = "vbpr"
    Config = VBPRConfig
    uses_features = True
    #: The grid ``tune.spaces.vbpr`` defaults to (docs/tuning.md).
    search_space = {"reg_weight": [2.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        *,
        embedding_dim: int = 64,
        reg_weight: float = 1e-3,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.modalities = list(feature_dims)
        self.feature_dims = [feature_dims[m] for m in self.modalities]
        self.reg_weight = reg_weight
        self.user = nn.Parameter(torch.empty(n_users, 2 * embedding_dim))
        self.item_id = nn.Parameter(torch.empty(n_items, embedding_dim))
        self.content = nn.Linear(sum(feature_dims.values()), embedding_dim)  # E (a split keeps the width)
        self.reset_parameters()
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    def reset_parameters(self) -> None:
        """Xavier-uniform id embeddings, Xavier-normal E, zero bias (as MMRec)."""
        nn.init.xavier_uniform_(self.user)
        nn.init.xavier_uniform_(self.item_id)
        nn.init.xavier_normal_(self.content.weight)
        nn.init.zeros_(self.content.bias)

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: VBPRConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> VBPR:
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities or data.features},
            embedding_dim=cfg.embedding_dim,
            reg_weight=cfg.reg_weight,
            separation=separation_settings(cfg, loss, club),
        )

    def forward(self, data: GraphData) -> Embeddings:
        """User vectors [γ_u; θ_u] and item vectors [γ_i; E·f_i]; with the separation,
        ``extras["split"]`` holds each modality's [g; s]."""
        content, extras = self.item_features(data.features)
        # E·[f^1; f^2] = Σ_m E[:, block m]·f^m (a split is read through E, never materialised)
        blocks = torch.split(self.content.weight, self.feature_dims, dim=1)
        projected = sum(content.project(m, w) for m, w in zip(self.modalities, blocks)) + self.content.bias
        item = torch.cat([self.item_id, projected], dim=1)
        return Embeddings(self.user, item, extras)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: the L2 penalty on the batch's user, positive and negative vectors; with
        the separation, its ``club`` and ``solosim`` terms."""
        terms = {}
        if self.reg_weight > 0:
            reg = embedding_l2((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
            terms["reg"] = Term(reg, self.reg_weight)
        return terms | self.separation_losses(emb, batch)
