"""BM3 (Zhou, Zhou, Liu, Zeng, Miao, Wang, You & Jiang, "Bootstrap Latent Representations
for Multi-modal Recommendation", WWW 2023), optionally with SEA's separation.

No negative sampling: the model learns by *bootstrapping*. An online network makes user and
item vectors (a LightGCN over the user–item graph, the item's id embedding added to its
layer mean) and each modality's item vector (a linear projection of its feature); a shared
linear *predictor* maps every one of them. The targets are the online vectors themselves
under latent-embedding dropout, without gradient. Three cosine losses pull predictions
towards targets: the graph reconstruction (user ↔ item of each training pair), the
inter-modality alignment (each modality's prediction → the item's id target) and the
intra-modality masked feature loss (each modality's prediction → its own dropped-out
vector). Scores are dot products of the *predicted* user and item vectors (MMRec's
``full_sort_predict``). The trainer runs it with ``loss.kind: none`` (its
``preferred_loss``): these terms are the whole objective, and the batches' negatives are
ignored.

``separation: sea``: each modality's feature is split into generic and unique parts by
:class:`~sea.models.separation.Separation` before its projection, and the CLUB and
Solosim terms are added (the :class:`~sea.models.separation.Separable` mixin).

Differences from MMRec's ``bm3.py``:

- The raw feature tables stay fixed; MMRec also fine-tunes them (``from_pretrained(...,
  freeze=False)``). Only the projections (and the split) learn, as in this project's
  FREEDOM.
- The targets are dropped out, and the modalities projected, on the batch's distinct users
  and items only, not on whole tables: the same values, gradients and mask distribution
  (one mask per distinct user or item, as MMRec's), far less work; the generator is
  consumed differently, so the masks themselves differ.
- The normalised adjacency is the shared one (no 1e-7 added to the degrees).
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
from sea.losses import ClubConfig, LossConfig
from sea.models.base import GraphData, Recommender, register
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.ops import full_mean, full_sum


@dataclass
class BM3Config(Section):
    """params.yaml [bm3]. Defaults: the BM3 authors' best on Baby (their README); MMRec
    grid-searches layers, dropout and reg_weight."""

    embedding_dim: int = 64  # ids, modality projections and the predictor (MMRec: embedding_size = feat_embed_dim)
    layers: int = 1  # LightGCN layers over the user–item graph; grid {1, 2}
    dropout: float = 0.5  # latent-embedding dropout making the targets; grid {0.3, 0.5}
    reg_weight: float = 0.1  # weight of the L2 term on the online vectors; grid {0.1, 0.01}
    cl_weight: float = 2.0  # weight of the alignment and masked feature losses (MMRec: fixed 2.0)
    separation: str = "none"  # none | sea: SEA's split of each modality before its projection, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.layers >= 0, section, "layers must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(self.cl_weight >= 0, section, "cl_weight must be >= 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


def cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − the mean over rows of cos(online_b, target_b); no gradient reaches ``target``."""
    return 1.0 - full_mean(F.cosine_similarity(online, target.detach(), dim=-1))


@register
class BM3(Separable, Recommender):
    r"""BM3 ("Bootstrap Latent Representations for Multi-modal Recommendation", X. Zhou,
    H. Zhou, Y. Liu, Z. Zeng, C. Miao, P. Wang, Y. You, F. Jiang, WWW 2023).

    Online vectors: :math:`\mathbf{h} = \frac{1}{L+1}\sum_{l=0}^{L}\hat{A}^l\mathbf{e}^{(0)}`
    over users and items (LightGCN), :math:`\mathbf{h}_u` for users and
    :math:`\mathbf{h}_i + \mathbf{e}^{(0)}_i` for items; per modality m,
    :math:`\mathbf{h}^m_i = W_m\mathbf{x}^m_i + \mathbf{b}_m`. Predictions
    :math:`\tilde{\mathbf{h}} = P\mathbf{h} + \mathbf{c}` (one linear predictor for all);
    targets :math:`\bar{\mathbf{h}} = \mathrm{sg}(\mathrm{dropout}_p(\mathbf{h}))`.
    With :math:`\ell(a, b) = 1 - \overline{\cos}(a, b)` (mean over the batch's pairs (u, i)):

    .. math::
        \mathcal{L} = \ell(\tilde{h}_u, \bar{h}_i) + \ell(\tilde{h}_i, \bar{h}_u)
        + \lambda_{cl}\sum_m\big[\ell(\tilde{h}^m_i, \bar{h}_i) + \ell(\tilde{h}^m_i, \bar{h}^m_i)\big]
        + \lambda_{reg}\,\frac{\lVert H_U\rVert_F + \lVert H_I\rVert_F}{|I|}

    the last term over the online vectors of *all* users and items (MMRec's ``EmbLoss``).
    Score: :math:`\tilde{\mathbf{h}}_u^\top\tilde{\mathbf{h}}_i`.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width.
        embedding_dim: width of every vector (64).
        layers: LightGCN layers L (1).
        dropout: p, the share of target coordinates zeroed (0.5).
        reg_weight: :math:`\lambda_{reg}` (0.1; 0 drops the term).
        cl_weight: :math:`\lambda_{cl}` (2.0; 0 drops both modality terms and the projections).
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``)
            for BM3+SEA, or None for plain BM3.
    """

    name = "bm3"
    Config = BM3Config
    uses_features = True
    preferred_loss = "none"
    #: The grid ``tune.spaces.bm3`` defaults to (docs/tuning.md).
    search_space = {"layers": [1, 2], "dropout": [0.3, 0.5], "reg_weight": [0.1, 0.01]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        *,
        embedding_dim: int = 64,
        layers: int = 1,
        dropout: float = 0.5,
        reg_weight: float = 0.1,
        cl_weight: float = 2.0,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.layers, self.dropout = layers, dropout
        self.reg_weight, self.cl_weight = reg_weight, cl_weight
        # Created and initialised in MMRec's order (ids, predictor, then image and text).
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.predictor = nn.Linear(embedding_dim, embedding_dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.projections = None
        if cl_weight > 0:
            self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in feature_dims.items()})
            for layer in self.projections.values():
                nn.init.xavier_normal_(layer.weight)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: BM3Config,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> BM3:
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities or data.features},
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            dropout=cfg.dropout,
            reg_weight=cfg.reg_weight,
            cl_weight=cfg.cl_weight,
            separation=separation_settings(cfg, loss, club),
        )

    def online(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The online (user, item) vectors: the LightGCN layer mean, plus the item's id
        embedding for items."""
        h = propagate(adj, torch.cat([self.user.weight, self.item.weight]), self.layers, mean=True)
        return h[: self.n_users], h[self.n_users :] + self.item.weight

    def forward(self, data: GraphData) -> Embeddings:
        """The predicted user and item vectors (what the scores compare). In training mode
        ``extras`` holds the online vectors (``online_user``, ``online_item``) and the item
        features as the projections read them (``content``; with the separation, ``split``)."""
        user, item = self.online(data.adj)
        extras: dict[str, Any] = {}
        if self.training:
            extras = {"online_user": user, "online_item": item}
            if self.projections is not None or self.separation is not None:
                content, separation_extras = self.item_features(data.features)
                extras |= {"content": content} | separation_extras
        return Embeddings(self.predictor(user), self.predictor(item), extras)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` under latent-embedding dropout (torch's generator), without gradient."""
        with torch.no_grad():
            return F.dropout(x.detach(), self.dropout, training=True)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """On the batch's (user, positive item) pairs: ``graph`` (ℓ(ũ, ī) + ℓ(ĩ, ū)),
        ``align`` and ``mask`` (the modality terms, weight ``cl_weight``), ``reg`` (weight
        ``reg_weight``); with the separation, its ``club`` and ``solosim``. The negatives
        are not read. Targets and projections are made once per distinct user and item of
        the batch (one dropout mask each, as MMRec's), then spread over its pairs."""
        users, user_row = torch.unique(batch.users, return_inverse=True)
        items, item_row = torch.unique(batch.pos, return_inverse=True)
        user_target = self.targets(emb.extras["online_user"][users])[user_row]
        item_target = self.targets(emb.extras["online_item"][items])[item_row]
        graph = cosine_loss(emb.user[batch.users], item_target) + cosine_loss(emb.item[batch.pos], user_target)
        terms = {"graph": Term(graph, 1.0)}
        if self.projections is not None:
            content, align, mask = emb.extras["content"], 0.0, 0.0
            for m in self.modalities:
                h = content.apply(m, self.projections[m], rows=items)
                predicted = self.predictor(h)[item_row]
                align = align + cosine_loss(predicted, item_target)
                mask = mask + cosine_loss(predicted, self.targets(h)[item_row])
            terms["align"] = Term(align, self.cl_weight)
            terms["mask"] = Term(mask, self.cl_weight)
        if self.reg_weight > 0:
            u, i = emb.extras["online_user"], emb.extras["online_item"]
            reg = (full_sum(u.pow(2)).sqrt() + full_sum(i.pow(2)).sqrt()) / self.n_items
            terms["reg"] = Term(reg, self.reg_weight)
        return terms | self.separation_losses(emb, batch)
