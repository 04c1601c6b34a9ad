"""BPR-MF: matrix factorisation trained with BPR (Rendle et al., UAI 2009), the simplest
baseline of the MMRec benchmark (SEA.md §4a)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section
from sea.errors import ConfigError
from sea.losses import embedding_l2
from sea.models.base import GraphData, Recommender, register


@dataclass
class BPRMFConfig(Section):
    """``bprmf:`` in params.yaml."""

    embedding_dim: int = 64
    reg_weight: float = 1e-3

    def validate(self, section: str) -> None:
        if self.embedding_dim <= 0:
            raise ConfigError(f"params.yaml [{section}]: embedding_dim must be positive")
        if self.reg_weight < 0:
            raise ConfigError(f"params.yaml [{section}]: reg_weight must be >= 0")


@register
class BPRMF(Recommender):
    r"""Matrix factorisation: one learnable vector per user and per item, scored by their
    dot product :math:`\hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i`, trained with BPR
    ("BPR: Bayesian Personalized Ranking from Implicit Feedback", Rendle et al., UAI 2009)
    plus ``reg_weight`` times :func:`~sea.losses.embedding_l2` of the batch's user, positive and
    negative vectors.

    Args:
        n_users, n_items: graph sizes.
        embedding_dim: width of every vector (64).
        reg_weight: weight of the regularisation term (1e-3; 0 turns it off).
    """

    name = "bprmf"
    Config = BPRMFConfig
    uses_features = False
    #: The grid ``tune.spaces.bprmf`` defaults to (docs/tuning.md).
    search_space = {"reg_weight": [2.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05]}

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, reg_weight: float = 1e-3):
        super().__init__()
        self.reg_weight = reg_weight
        self.user_emb = nn.Embedding(n_users, embedding_dim)
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        self.reset_parameters()

    @classmethod
    def build(cls, data: GraphData, cfg: BPRMFConfig, *unused) -> BPRMF:
        return cls(data.n_users, data.n_items, embedding_dim=cfg.embedding_dim, reg_weight=cfg.reg_weight)

    def reset_parameters(self) -> None:
        """Xavier-normal initialisation, as MMRec's BPR."""
        nn.init.xavier_normal_(self.user_emb.weight)
        nn.init.xavier_normal_(self.item_emb.weight)

    def forward(self, data: GraphData) -> Embeddings:
        """The user and item vectors themselves (``data`` is not read)."""
        return Embeddings(user=self.user_emb.weight, item=self.item_emb.weight)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: :func:`~sea.losses.embedding_l2` of the batch's user, positive and negative vectors."""
        if self.reg_weight == 0:
            return {}
        reg = embedding_l2((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
        return {"reg": Term(reg, self.reg_weight)}
