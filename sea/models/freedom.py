"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures
for Multimodal Recommendation", ACM MM 2023), optionally with SEA's separation (SEA.md §4a).

Two graphs:

1. A *frozen* item–item graph, built once from the raw features: cosine top-k neighbours
   per modality, each graph symmetric-normalised, combined as w·image + (1 − w)·text.
   The item id embeddings take one hop over it: h_i = (S·E_item)_i.
2. The user–item training graph, *denoised* every epoch (:meth:`FREEDOM.on_epoch_start`):
   a share (1 − dropout) of its edges is kept, drawn without replacement with probability
   ∝ 1/√(d_u·d_i) (low-degree edges survive more often), and re-normalised. A LightGCN
   over it (no weights, mean of layers 0…L) gives the user vectors and the items' graph
   vectors. Evaluation uses the whole training graph.

Item vector = LightGCN item vector + h_i; score = dot product. Besides the ranking loss,
λ·Σ_m BPR(user vectors, P_m(x^m_pos), P_m(x^m_neg)) ties the user vectors to a linear
projection P_m of each modality's raw feature (λ = ``reg_weight``).

``separation: sea`` ("FREEDOM+SEA", SEA's Table 3): each modality's feature is split into
generic and unique parts by :class:`~sea.models.separation.Separation` before P_m, and
the CLUB and Solosim terms are added (the :class:`~sea.models.separation.Separable` mixin).

Not implemented: MMRec's FREEDOM also fine-tunes the raw feature tables through that term
(its features are trainable embeddings); here the features stay fixed and only P_m (and the
split) learn. Its kNN lists count each item as its own nearest neighbour; here they do not
(the same graph as SEA's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import ClubConfig, LossConfig, bpr_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, item_item_graph, user_item_adjacency
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings


@dataclass
class FREEDOMConfig(Section):
    """params.yaml [freedom]. MMRec grid-searches dropout and reg_weight."""

    embedding_dim: int = 64  # user and item id embeddings, and the feature projections
    layers: int = 2  # LightGCN layers over the (pruned) user–item graph
    knn_k: int = 10  # frozen item–item graph: top-k cosine neighbours per modality
    image_knn_weight: float = 0.1  # item–item graph = w·image kNN + (1 − w)·text kNN
    dropout: float = 0.8  # share of user–item edges pruned each epoch; grid {0.8, 0.9}
    reg_weight: float = 1e-3  # λ of the feature BPR terms; grid {0, 1e-5, 1e-4, 1e-3}
    separation: str = "none"  # none | sea: SEA's split of each modality before P_m, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.layers >= 0 and self.knn_k >= 1, section, "layers >= 0 and knn_k >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


@register
class FREEDOM(Separable, Recommender):
    """FREEDOM recommender.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width.
        item_graph: the frozen, normalised item–item graph [n_items, n_items] (sparse).
        train_users, train_items: the distinct training (user, item) edges.
        embedding_dim: width of every vector (64).
        layers: LightGCN layers over the user–item graph (2).
        dropout: share of user–item edges pruned at each epoch (0.8).
        reg_weight: λ, the weight of the feature BPR terms (1e-3); 0 drops them and their
            projections.
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``)
            for FREEDOM+SEA, or None for plain FREEDOM.
    """

    name = "freedom"
    Config = FREEDOMConfig
    uses_features = True
    #: The grid ``tune.spaces.freedom`` defaults to (docs/tuning.md).
    search_space = {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-05, 0.0001, 0.001]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graph: torch.Tensor,
        train_users: torch.Tensor,
        train_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        layers: int = 2,
        dropout: float = 0.8,
        reg_weight: float = 1e-3,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.layers, self.dropout, self.reg_weight = layers, dropout, reg_weight
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        # P_m. No bias: it would cancel in the BPR difference and never learn.
        self.projections = (
            nn.ModuleDict({m: nn.Linear(d, embedding_dim, bias=False) for m, d in feature_dims.items()})
            if reg_weight > 0
            else None
        )
        self.item_graph = FrozenGraph(item_graph)
        self.register_buffer("edge_users", train_users, persistent=False)
        self.register_buffer("edge_items", train_items, persistent=False)
        self.register_buffer(
            "edge_weight", self.pruning_weights(train_users, train_items, n_users, n_items), persistent=False
        )
        self.pruned: FrozenGraph | None = None  # this epoch's training graph (on_epoch_start)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: FREEDOMConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> FREEDOM:
        modalities = list(modalities or data.features)
        graph = item_item_graph({m: data.features[m].cpu() for m in modalities}, cfg.knn_k, cfg.image_knn_weight)
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1)
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graph.to(data.device),
            edges[0],
            edges[1],
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            dropout=cfg.dropout,
            reg_weight=cfg.reg_weight,
            separation=separation_settings(cfg, loss, club),
        )

    @staticmethod
    def pruning_weights(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
        """1/√(d_u·d_i) per edge, degrees counted over the given edges."""
        du = torch.bincount(users, minlength=n_users).float()
        di = torch.bincount(items, minlength=n_items).float()
        return (du[users] * di[items]).rsqrt()

    def kept_edges(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of the round((1 − dropout)·E) edges kept this epoch: a weighted draw
        without replacement, probability ∝ :attr:`edge_weight` (Efraimidis–Spirakis: keep
        the largest log(U)/w, U uniform)."""
        n_edges = len(self.edge_weight)
        keep = max(1, round((1.0 - self.dropout) * n_edges))
        u = torch.rand(n_edges, generator=generator, device=generator.device).to(self.edge_weight.device)
        return (u.log() / self.edge_weight).topk(keep).indices

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Prune the user–item graph for this epoch, drawing from ``generator``."""
        if self.dropout == 0:
            return
        kept = self.kept_edges(generator).sort().values
        users, items = self.edge_users[kept].cpu().numpy(), self.edge_items[kept].cpu().numpy()
        adj = user_item_adjacency(users, items, self.n_users, self.n_items)
        self.pruned = FrozenGraph(adj, symmetric=True).to(self.edge_weight.device)

    def lightgcn(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) vectors: the mean of layers 0…L of Âᵏ·[E_user; E_item]."""
        out = propagate(adj, torch.cat([self.user.weight, self.item.weight]), self.layers, mean=True)
        return out[: self.n_users], out[self.n_users :]

    def forward(self, data: GraphData) -> Embeddings:
        """User vectors and item vectors (LightGCN item vector + its item–item hop). In
        training mode the LightGCN runs over this epoch's pruned graph, in eval mode over
        ``data.adj``; ``extras["content"]`` holds what the feature terms project."""
        if not self.training or self.dropout == 0:
            adj = data.adj
        elif self.pruned is None:
            raise RuntimeError("FREEDOM prunes its graph in on_epoch_start(): call it before training")
        else:
            adj = self.pruned.matrix
        user, item = self.lightgcn(adj)
        item = item + self.item_graph(self.item.weight)
        extras = {}
        if self.training and (self.projections is not None or self.separation is not None):
            content, extras = self.item_features(data.features)
            extras = {"content": content} | extras
        return Embeddings(user, item, extras)

    def feature_bpr(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """Σ_m BPR(user vectors, P_m(x^m_pos), P_m(x^m_neg)) on the batch."""
        user = emb.user[batch.users]
        total = 0.0
        for m in self.modalities:
            content, p = emb.extras["content"], self.projections[m]
            total = total + bpr_loss(user, content.apply(m, p, rows=batch.pos), content.apply(m, p, rows=batch.neg))
        return total

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``feature_bpr`` (weight λ); with the separation, ``club`` and ``solosim``."""
        terms = {}
        if self.projections is not None:
            terms["feature_bpr"] = Term(self.feature_bpr(emb, batch), self.reg_weight)
        return terms | self.separation_losses(emb, batch)
