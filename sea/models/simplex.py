"""SimpleX (Mao, Zhu, Wang, Dai, Dong, Xiao and He, "SimpleX: A Simple and Strong Baseline
for Collaborative Filtering", CIKM 2021): matrix factorisation whose user vector also
aggregates the embeddings of the user's history, scored by cosine similarity and trained,
by default, with the cosine contrastive loss (``loss.kind: auto`` → CCL, see
:mod:`sea.losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Embeddings
from sea.config import Section, require
from sea.errors import shown
from sea.models.base import GraphData, Recommender, register
from sea.ops import matvec

AGGREGATORS = ("mean", "self_attention", "user_attention")


@dataclass
class SimpleXConfig(Section):
    """``simplex:`` in params.yaml."""

    embedding_dim: int = 64
    aggregator: str = "mean"  # mean | self_attention | user_attention
    gamma: float = 0.5  # user vector = γ · own embedding + (1 − γ) · V · aggregate of history
    dropout: float = 0.1  # dropout on the fused user vector (training only)

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(
            self.aggregator in AGGREGATORS,
            section,
            f"aggregator must be one of {list(AGGREGATORS)}, got {shown(self.aggregator)}",
        )
        require(0.0 <= self.gamma <= 1.0, section, "gamma must be in [0, 1]")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")


def history_edges(indptr: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) of every distinct training pair, from the user → items CSR lists."""
    users = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    n_items = int(indices.max()) + 1 if len(indices) else 1
    keys = np.unique(users * n_items + indices)
    return torch.as_tensor(keys // n_items), torch.as_tensor(keys % n_items)


@register
class SimpleX(Recommender):
    r"""SimpleX: user vector :math:`h_u = \gamma\, e_u + (1 - \gamma)\, V p_u`, where
    :math:`p_u = \sum_{j \in H_u} \alpha_{uj}\, e_j` aggregates the embeddings of the user's
    training items :math:`H_u`:

    - ``mean``: :math:`\alpha_{uj} = 1 / |H_u|`;
    - ``self_attention``: :math:`\alpha_{uj} = \mathrm{softmax}_{j \in H_u}(q^\top \tanh(W e_j + b))`
      with a learned global query :math:`q`;
    - ``user_attention``: :math:`\alpha_{uj} = \mathrm{softmax}_{j \in H_u}(e_u^\top \tanh(W e_j + b))`.

    Dropout applies to :math:`h_u` in training. Both user and item vectors are returned
    L2-normalised, so the dot-product score is the cosine similarity. The aggregate is
    computed for all users at once, over the list of training pairs (no Python loop).

    Args:
        n_users, n_items: graph sizes.
        history_users, history_items: the distinct training pairs ``(u, j)``, ``[n_pairs]``.
        embedding_dim: width of every vector (64).
        aggregator: ``mean``, ``self_attention`` or ``user_attention``.
        gamma: weight of the user's own embedding (0.5).
        dropout: dropout rate on :math:`h_u` (0.1).
    """

    name = "simplex"
    Config = SimpleXConfig
    uses_features = False
    #: The grid ``tune.spaces.simplex`` defaults to (docs/tuning.md).
    search_space = {"gamma": [0.3, 0.5, 0.7], "loss.ccl_margin": [0.8, 0.9]}
    #: The ranking loss ``loss.kind: auto`` resolves to for this model.
    preferred_loss: ClassVar[str] = "ccl"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        history_users: torch.Tensor,
        history_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        aggregator: str = "mean",
        gamma: float = 0.5,
        dropout: float = 0.1,
    ):
        super().__init__()
        if aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
        self.n_users, self.n_items = n_users, n_items
        self.aggregator, self.gamma = aggregator, gamma
        self.user_emb = nn.Embedding(n_users, embedding_dim)
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        self.value = nn.Linear(embedding_dim, embedding_dim, bias=False)  # V
        self.key = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.Tanh()) if aggregator != "mean" else None
        self.query = nn.Parameter(torch.empty(embedding_dim)) if aggregator == "self_attention" else None
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("history_users", history_users, persistent=False)
        self.register_buffer("history_items", history_items, persistent=False)
        degree = torch.bincount(history_users, minlength=n_users).clamp(min=1).float()
        self.register_buffer("inv_degree", 1.0 / degree, persistent=False)
        self.reset_parameters()

    @classmethod
    def build(cls, data: GraphData, cfg: SimpleXConfig, *unused) -> SimpleX:
        users, items = history_edges(*data.csr["train"])
        return cls(
            data.n_users,
            data.n_items,
            users.to(data.device),
            items.to(data.device),
            embedding_dim=cfg.embedding_dim,
            aggregator=cfg.aggregator,
            gamma=cfg.gamma,
            dropout=cfg.dropout,
        )

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, 1e-4²) as in the SimpleX code; Xavier for the query."""
        nn.init.normal_(self.user_emb.weight, std=1e-4)
        nn.init.normal_(self.item_emb.weight, std=1e-4)
        if self.query is not None:
            nn.init.xavier_normal_(self.query.unsqueeze(0))

    def history_weights(self) -> torch.Tensor:
        """α of every training pair, ``[n_pairs]`` (sums to 1 over each user's pairs)."""
        if self.key is None:
            return self.inv_degree[self.history_users]
        keys = self.key(self.item_emb(self.history_items))  # [n_pairs, d]
        if self.query is not None:
            logits = matvec(keys, self.query)
        else:
            logits = (keys * self.user_emb(self.history_users)).sum(-1)
        # imported here: importing torch_geometric (a heavy optional dependency, no import
        # circle) takes about 2 s, which every stage that imports the model registry would pay
        from torch_geometric.utils import softmax as segment_softmax

        return segment_softmax(logits, self.history_users, num_nodes=self.n_users)

    def aggregate(self) -> torch.Tensor:
        """:math:`V p_u` for every user, ``[n_users, d]`` (zero for a user without history)."""
        alpha = self.history_weights().unsqueeze(1)
        pooled = torch.zeros_like(self.user_emb.weight).index_add(
            0, self.history_users, alpha * self.item_emb(self.history_items)
        )
        return self.value(pooled)

    def forward(self, data: GraphData) -> Embeddings:
        """L2-normalised :math:`h_u` for every user and :math:`e_i` for every item."""
        user = self.gamma * self.user_emb.weight + (1.0 - self.gamma) * self.aggregate()
        return Embeddings(user=F.normalize(self.dropout(user), dim=1), item=F.normalize(self.item_emb.weight, dim=1))
