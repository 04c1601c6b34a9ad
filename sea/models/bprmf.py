"""BPR-MF: matrix factorisation trained with BPR (Rendle et al., UAI 2009), the simplest
baseline of the MMRec benchmark (SEA.md §4a)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sea.config import Section
from sea.errors import ConfigError
from sea.models.base import Batch, Embeddings, GraphData, Recommender, Term, register
from sea.ops import full_sum


def rows_norm(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``table[ids]`` (``ids`` of any shape, repeats allowed).

    With more ids than table rows (e.g. hundreds of negatives per positive) the gathered
    ``[*ids.shape, d]`` tensor is never built: ‖table[ids]‖² = Σᵢ countᵢ·‖tableᵢ‖², the same
    function with the same gradient."""
    if ids.numel() <= table.shape[0]:
        return table[ids].norm(p=2)
    counts = torch.bincount(ids.reshape(-1), minlength=table.shape[0]).to(table.dtype)
    return full_sum(counts * table.pow(2).sum(1)).sqrt()


def embedding_l2(*lookups: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MMRec's "L2" regularisation of a batch's embeddings (its ``EmbLoss``): the sum of
    each lookup's Frobenius norm (not squared), divided by the batch size. Each lookup is a
    ``(table, ids)`` pair, the rows ``table[ids]`` (see :func:`rows_norm`); the batch size is
    the first dimension of the first lookup's ids. MMRec's ``reg_weight`` grids are on this
    scale."""
    return sum(rows_norm(table, ids) for table, ids in lookups) / lookups[0][1].shape[0]


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
    plus ``reg_weight`` times :func:`embedding_l2` of the batch's user, positive and
    negative vectors.

    Args:
        n_users, n_items: graph sizes.
        embedding_dim: width of every vector (64).
        reg_weight: weight of the regularisation term (1e-3; 0 turns it off).
    """

    name = "bprmf"
    Config = BPRMFConfig
    uses_features = False

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, reg_weight: float = 1e-3):
        super().__init__()
        self.reg_weight = reg_weight
        self.user_emb = nn.Embedding(n_users, embedding_dim)
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        self.reset_parameters()

    @classmethod
    def build(cls, data: GraphData, cfg: BPRMFConfig, setup=None) -> "BPRMF":
        return cls(data.n_users, data.n_items, embedding_dim=cfg.embedding_dim, reg_weight=cfg.reg_weight)

    def reset_parameters(self) -> None:
        """Xavier-normal initialisation, as MMRec's BPR."""
        nn.init.xavier_normal_(self.user_emb.weight)
        nn.init.xavier_normal_(self.item_emb.weight)

    def forward(self, data: GraphData) -> Embeddings:
        """The user and item vectors themselves (``data`` is not read)."""
        return Embeddings(user=self.user_emb.weight, item=self.item_emb.weight)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: :func:`embedding_l2` of the batch's user, positive and negative vectors."""
        if self.reg_weight == 0:
            return {}
        reg = embedding_l2((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
        return {"reg": Term(reg, self.reg_weight)}
