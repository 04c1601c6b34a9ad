"""SelfCF (Zhou, Sun, Liu, Zhang & Miao, "SelfCF: A Simple Framework for Self-supervised
Collaborative Filtering", ACM TORS 2023), in MMRec's variant ``selfcfed_lgn``: a LightGCN
trained without negatives, as BYOL.

An online LightGCN makes user and item vectors; a linear *predictor* maps them. Two
augmentations make the views: in training the LightGCN runs over the user–item graph under
*edge dropout* (a fresh rate, uniform in [0, ``edge_dropout``), at every batch; kept entries
scaled by 1/(1 − rate)), and the *targets* are the online vectors of the batch's pairs under
*embedding dropout*, without gradient. The loss is the negative cosine between the predicted
user and its item's target, and between the predicted item and its user's target. Scores
add both directions: ⟨P(h_u), h_i⟩ + ⟨h_u, P(h_i)⟩ (MMRec's ``full_sort_predict``), with the
unperturbed graph and no dropout. No item features. The trainer runs it with
``loss.kind: none`` (its ``preferred_loss``): these terms are the whole objective, and the
batches' negatives are ignored.

Differences from MMRec's ``selfcfed_lgn.py`` (and its ``LightGCN_Encoder``):

- The edge-dropout rate is drawn from torch's generator (MMRec: NumPy's), and the mask over
  the adjacency's entries is drawn in CSR order (MMRec: its COO order): the same
  distribution, other draws. As in MMRec, the two directions of an edge (u→i, i→u) are
  dropped independently, so the dropped matrix is not symmetric; its transpose is made from
  the same mask (through a precomputed map of each entry to its mirror), not by a sort.
- The normalised adjacency is the shared one (no 1e-7 added to the degrees).
- The sums and means go through :mod:`sea.ops` (results independent of the thread count).
- In training mode :meth:`SelfCF.forward` returns the online vectors (the predictor is
  applied to the batch's rows only, in :meth:`SelfCF.extra_losses`); in eval mode it returns
  [P(h_u); h_u] and [h_i; P(h_i)], whose dot product is MMRec's score. A ranking loss
  forced with ``loss.kind: bpr`` would therefore train the online vectors' dot product,
  which is not what is scored; MMRec offers no such combination.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.models.base import GraphData, Recommender, register
from sea.models.propagation import propagate
from sea.ops import full_mean, full_sum


@dataclass
class SelfCFConfig(Section):
    """params.yaml [selfcf]. Defaults: MMRec's first SELFCFED_LGN.yaml (its single point);
    its later grid is {1, 2} layers × {0.1, 0.2, 0.5} dropout × {1e-1, …, 1e-5, 0} reg_weight."""

    embedding_dim: int = 64  # ids and the predictor (MMRec: embedding_size)
    layers: int = 2  # LightGCN layers; grid {1, 2}
    dropout: float = 0.5  # embedding dropout making the targets; grid {0.1, 0.2, 0.5}
    edge_dropout: float = 1.0  # per-batch edge-dropout rate ~ U[0, edge_dropout) (MMRec: drop_ratio, fixed 1.0)
    reg_weight: float = 0.0  # weight of ½‖h‖² of the batch's online vectors; grid {1e-1, …, 1e-5, 0}

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.layers >= 0, section, "layers must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(0.0 <= self.edge_dropout <= 1.0, section, "edge_dropout must be in [0, 1]")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")


def mirror_entries(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of each entry, index of its mirror entry) of a CSR matrix with a symmetric
    sparsity pattern: entry k at (r, c) has its mirror (c, r) at ``mirror[k]``, in the
    same CSR order. A ValueError if some entry has no mirror."""
    crow, col = adj.crow_indices(), adj.col_indices()
    n = adj.shape[0]
    rows = torch.repeat_interleave(torch.arange(n, device=crow.device), crow.diff())
    keys = rows * n + col  # increasing: CSR order is row-major, columns sorted
    mirror = torch.searchsorted(keys, col * n + rows).clamp_max(max(len(keys) - 1, 0))
    if len(keys) and not torch.equal(keys[mirror], col * n + rows):
        raise ValueError("the adjacency's sparsity pattern is not symmetric")
    return rows, mirror


@register
class SelfCF(Recommender):
    r"""SelfCF ("SelfCF: A Simple Framework for Self-supervised Collaborative Filtering",
    X. Zhou, A. Sun, Y. Liu, J. Zhang, C. Miao, ACM Transactions on Recommender Systems 2023),
    MMRec's ``SELFCFED_LGN``.

    Online vectors: :math:`\mathbf{h} = \frac{1}{L+1}\sum_{l=0}^{L}\tilde{A}^l\mathbf{e}^{(0)}`
    over users and items, :math:`\tilde{A}` the normalised adjacency :math:`\hat{A}` with each
    entry kept with probability :math:`1-r` and scaled by :math:`1/(1-r)`,
    :math:`r \sim U[0, \rho)` drawn per batch (eval: :math:`\hat{A}`). Predictor
    :math:`P(\mathbf{h}) = W\mathbf{h} + \mathbf{b}`; targets
    :math:`\bar{\mathbf{h}} = \mathrm{sg}(\mathrm{dropout}_p(\mathbf{h}))`, one mask per row of
    the batch. Over the batch's pairs (u, i):

    .. math::
        \mathcal{L} = -\tfrac12\,\overline{\cos}\big(P(h_u), \bar{h}_i\big)
        - \tfrac12\,\overline{\cos}\big(P(h_i), \bar{h}_u\big)
        + \lambda\,\tfrac12\textstyle\sum_{(u,i)}\big(\lVert h_u\rVert^2 + \lVert h_i\rVert^2\big)

    Score: :math:`P(\mathbf{h}_u)^\top\mathbf{h}_i + \mathbf{h}_u^\top P(\mathbf{h}_i)`.

    Args:
        n_users, n_items: graph sizes.
        adj: the normalised user–item adjacency :math:`\hat{A}` (CSR, ``[U + I, U + I]``)
            whose entries are dropped in training.
        embedding_dim: width of every vector (64).
        layers: LightGCN layers L (2).
        dropout: p, the share of target coordinates zeroed (0.5).
        edge_dropout: :math:`\rho`, the upper bound of the per-batch edge-dropout rate (1.0;
            0 trains on :math:`\hat{A}`).
        reg_weight: :math:`\lambda` (0; 0 drops the term).
    """

    name = "selfcf"
    Config = SelfCFConfig
    uses_features = False
    preferred_loss = "none"
    #: The grid ``tune.spaces.selfcf`` defaults to (docs/tuning.md): MMRec's, reg_weight cut to two values.
    search_space = {"layers": [1, 2], "dropout": [0.1, 0.2, 0.5], "reg_weight": [0.0, 0.001]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        adj: torch.Tensor,
        *,
        embedding_dim: int = 64,
        layers: int = 2,
        dropout: float = 0.5,
        edge_dropout: float = 1.0,
        reg_weight: float = 0.0,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.layers, self.dropout, self.edge_dropout, self.reg_weight = layers, dropout, edge_dropout, reg_weight
        # Created and initialised in MMRec's order: the encoder's ids, then the predictor.
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.predictor = nn.Linear(embedding_dim, embedding_dim)  # torch's default initialisation, as MMRec's
        adj = adj.to_sparse_csr()
        rows, mirror = mirror_entries(adj)
        for name, t in [
            ("crow", adj.crow_indices()),
            ("col", adj.col_indices()),
            ("values", adj.values()),
            ("rows", rows),
            ("mirror", mirror),
        ]:
            self.register_buffer(f"adj_{name}", t, persistent=False)

    @classmethod
    def build(cls, data: GraphData, cfg: SelfCFConfig, *unused) -> SelfCF:
        return cls(
            data.n_users,
            data.n_items,
            data.adj,
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            dropout=cfg.dropout,
            edge_dropout=cfg.edge_dropout,
            reg_weight=cfg.reg_weight,
        )

    def dropped_adjacency(self, keep: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ã, Ãᵀ) as CSR: the adjacency's entries where ``keep`` (a mask over its entries,
        in CSR order), times ``scale``. The transpose has the same pattern as the adjacency
        (a symmetric one): its entry k is the adjacency's entry ``mirror[k]``."""
        n = self.adj_crow.numel() - 1
        out = []
        for kept, values in [(keep, self.adj_values), (keep[self.adj_mirror], self.adj_values[self.adj_mirror])]:
            counts = torch.bincount(self.adj_rows[kept], minlength=n)
            crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            out.append(torch.sparse_csr_tensor(crow, self.adj_col[kept], values[kept] * scale, (n, n)))
        return out[0], out[1]

    def draw_adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's (Ã, Ãᵀ): rate r ~ U[0, edge_dropout), each entry kept with
        probability 1 − r (torch's generator), kept entries scaled by 1 / (1 − r)."""
        rate = torch.rand((), device=self.adj_values.device) * self.edge_dropout
        keep = torch.rand(self.adj_values.shape, device=self.adj_values.device) >= rate
        return self.dropped_adjacency(keep, 1.0 / (1.0 - rate))

    def online(self, adj: torch.Tensor, transpose: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The online (user, item) vectors: the LightGCN layer mean over ``adj``."""
        h = propagate(adj, torch.cat([self.user.weight, self.item.weight]), self.layers, mean=True, transpose=transpose)
        return h[: self.n_users], h[self.n_users :]

    def forward(self, data: GraphData) -> Embeddings:
        """Training mode: the online vectors over this batch's edge-dropped graph (what the
        losses read). Eval mode: users [P(h_u); h_u] and items [h_i; P(h_i)] over
        ``data.adj`` (width 2·embedding_dim), whose dot product is the score."""
        if not self.training:
            user, item = self.online(data.adj)
            return Embeddings(torch.cat([self.predictor(user), user], 1), torch.cat([item, self.predictor(item)], 1))
        if self.edge_dropout > 0 and self.layers > 0:
            return Embeddings(*self.online(*self.draw_adjacency()))
        return Embeddings(*self.online(data.adj))

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` under embedding dropout (torch's generator), without gradient."""
        with torch.no_grad():
            return F.dropout(x.detach(), self.dropout, training=True)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """On the batch's (user, positive item) pairs, with training-mode ``emb``: ``ui``
        (−mean cos(P(h_u), h̄_i)) and ``iu`` (−mean cos(P(h_i), h̄_u)), weight ½ each, and
        ``reg`` (weight ``reg_weight``). One target dropout mask per pair (as MMRec's); the
        negatives are not read."""
        user, item = emb.user[batch.users], emb.item[batch.pos]
        user_target, item_target = self.targets(user), self.targets(item)
        ui = -full_mean(F.cosine_similarity(self.predictor(user), item_target, dim=-1))
        iu = -full_mean(F.cosine_similarity(self.predictor(item), user_target, dim=-1))
        terms = {"ui": Term(ui, 0.5), "iu": Term(iu, 0.5)}
        if self.reg_weight > 0:
            terms["reg"] = Term(0.5 * (full_sum(user.pow(2)) + full_sum(item.pow(2))), self.reg_weight)
        return terms
