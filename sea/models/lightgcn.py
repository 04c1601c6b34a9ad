"""LightGCN (He et al., SIGIR 2020): id embeddings propagated over the user–item graph,
a baseline of the MMRec benchmark (SEA.md §4a)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section
from sea.errors import ConfigError
from sea.losses import embedding_l2
from sea.models.base import GraphData, Recommender, register
from sea.models.propagation import propagate


@dataclass
class LightGCNConfig(Section):
    """``lightgcn:`` in params.yaml."""

    embedding_dim: int = 64
    layers: int = 3
    reg_weight: float = 1e-4

    def validate(self, section: str) -> None:
        if self.embedding_dim <= 0 or self.layers < 0:
            raise ConfigError(f"params.yaml [{section}]: embedding_dim must be positive and layers >= 0")
        if self.reg_weight < 0:
            raise ConfigError(f"params.yaml [{section}]: reg_weight must be >= 0")


@register
class LightGCN(Recommender):
    r"""LightGCN ("LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation", He et al., SIGIR 2020). Id embeddings :math:`\mathbf{e}^{(0)}` of
    users and items are propagated over the symmetric-normalised user–item graph
    :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (training edges, no self-loops, no weights, no
    non-linearity), and the final vector is the mean of the layers:

    .. math::
        \mathbf{e}^{(l+1)} = \hat{A}\,\mathbf{e}^{(l)}, \qquad
        \mathbf{e} = \frac{1}{L + 1} \sum_{l=0}^{L} \mathbf{e}^{(l)}

    Scores are dot products. The regularisation term is ``reg_weight`` times
    :func:`~sea.losses.embedding_l2` of the batch's *layer-0* user, positive and
    negative vectors.

    Args:
        n_users, n_items: graph sizes.
        embedding_dim: width of every vector (64).
        layers: propagation layers L (3).
        reg_weight: weight of the regularisation term (1e-4; 0 turns it off).
    """

    name = "lightgcn"
    Config = LightGCNConfig
    uses_features = False
    #: The grid ``tune.spaces.lightgcn`` defaults to (docs/tuning.md).
    search_space = {"layers": [1, 2, 3, 4], "reg_weight": [0.01, 0.001, 0.0001, 1e-05, 1e-06]}

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, layers: int = 3, reg_weight: float = 1e-4):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.layers, self.reg_weight = layers, reg_weight
        self.user_emb = nn.Embedding(n_users, embedding_dim)
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        self.reset_parameters()

    @classmethod
    def build(cls, data: GraphData, cfg: LightGCNConfig, *unused) -> LightGCN:
        return cls(
            data.n_users, data.n_items, embedding_dim=cfg.embedding_dim, layers=cfg.layers, reg_weight=cfg.reg_weight
        )

    def reset_parameters(self) -> None:
        """Xavier-uniform initialisation, as MMRec's and PyG's LightGCN."""
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def get_embedding(self, adj: torch.Tensor) -> torch.Tensor:
        """The propagated vectors of all nodes, users ``[0, U)`` then items, ``[U + I, d]``.

        Args:
            adj: the normalised adjacency :math:`\\hat{A}`, ``[U + I, U + I]`` (sparse).
        """
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        return propagate(adj, x, self.layers, mean=True)

    def forward(self, data: GraphData) -> Embeddings:
        """Propagate over ``data.adj`` and split into user and item vectors."""
        h = self.get_embedding(data.adj)
        return Embeddings(user=h[: self.n_users], item=h[self.n_users :])

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: :func:`~sea.losses.embedding_l2` of the batch's layer-0 vectors."""
        if self.reg_weight == 0:
            return {}
        reg = embedding_l2(
            (self.user_emb.weight, batch.users), (self.item_emb.weight, batch.pos), (self.item_emb.weight, batch.neg)
        )
        return {"reg": Term(reg, self.reg_weight)}
