"""LayerGCN (Zhou, Lin, Liu & Miao, "Layer-refined Graph Convolutional Networks for
Recommendation", ICDE 2023), a general (feature-free) baseline of the MMRec toolbox.

A LightGCN-style propagation of the id embeddings over the user–item graph in which every
layer's output is *refined* before it is propagated further: each node's vector is scaled
by its cosine similarity to the node's own layer-0 (ego) vector, so that layers drifting
away from the ego representation (over-smoothing) are damped. The final vector is the sum
of the refined layers 1…L (the ego layer itself is not added).

During training the user–item graph is pruned every epoch (:meth:`LayerGCN.on_epoch_start`):
a share (1 − ``dropout``) of the training edges is kept and re-normalised. As in MMRec's
code (``pruning: alternate``), the draw alternates between *degree-sensitive* epochs (the
odd ones: probability ∝ 1/√(d_u·d_i), FREEDOM's :meth:`~sea.models.freedom.FREEDOM.kept_edges`,
so that edges between high-degree nodes are pruned more often) and uniform ones (the even
ones). Evaluation uses the whole training graph.

Loss: BPR on the final vectors + ``reg_weight``·½(‖E⁰_u‖² + ‖E⁰_{i⁺}‖² + ‖E⁰_{i⁻}‖²)/B on the
batch's layer-0 vectors.

Differences from MMRec's code (``src/models/layergcn.py``):

- MMRec's loss is a *sum* over the batch (its BPR is summed, its ``L2Loss`` is ½ the summed
  squares); here the BPR is the trainer's batch mean and the penalty is divided by the
  batch size B, i.e. MMRec's loss / B. With Adam (scale-invariant up to its ε) the steps are
  the same, and ``reg_weight`` keeps MMRec's scale, so MMRec's grid applies as it is.
- The kept-edge count is round((1 − dropout)·E) (FREEDOM's), MMRec's ⌊(1 − dropout)·E⌋: at
  most one edge more. Every draw comes from the trainer's seeded generator (MMRec draws the
  degree-sensitive epochs with ``torch.multinomial``, the same law, and the uniform ones
  with Python's ``random``).
- The degrees are counted without MMRec's +1e-7 (a node with no kept edge gets a zero row,
  as there).
- ``pruning: degree`` or ``uniform`` keeps one kind of draw every epoch (not in MMRec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.losses import rows_norm
from sea.models.base import GraphData, Recommender, register
from sea.models.freedom import FREEDOM
from sea.models.graphs import FrozenGraph, spmm, user_item_adjacency

PRUNING = ("alternate", "degree", "uniform")


@dataclass
class LayerGCNConfig(Section):
    """params.yaml [layergcn]. MMRec grid-searches layers ([4]), dropout and reg_weight."""

    embedding_dim: int = 64  # user and item id embeddings (MMRec embedding_size)
    layers: int = 4  # refined propagation layers L (MMRec n_layers); grid [4]
    dropout: float = 0.1  # share of user-item edges pruned each epoch; grid [0.0, 0.1, 0.2]
    reg_weight: float = 1e-4  # ½ squared L2 of the batch's layer-0 vectors / B; grid [1e-2, 1e-3, 1e-4, 1e-5]
    pruning: str = "alternate"  # alternate (MMRec: degree-sensitive and uniform epochs in turn) | degree | uniform

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.layers >= 1, section, "layers must be >= 1 (the output is the sum of layers 1..L)")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require_choice(self.pruning, PRUNING, section, "pruning")


@register
class LayerGCN(Recommender):
    r"""LayerGCN ("Layer-refined Graph Convolutional Networks for Recommendation", Xin Zhou,
    Donghui Lin, Yong Liu, Chunyan Miao, ICDE 2023). With :math:`\hat{A}` the
    symmetric-normalised user–item graph (this epoch's pruned one in training) and
    :math:`\mathbf{e}^{(0)}` the id embeddings of users and items:

    .. math::
        \tilde{\mathbf{e}}^{(l+1)}_v = (\hat{A}\,\mathbf{e}^{(l)})_v, \qquad
        \mathbf{e}^{(l+1)}_v = \cos\big(\tilde{\mathbf{e}}^{(l+1)}_v, \mathbf{e}^{(0)}_v\big)\,
            \tilde{\mathbf{e}}^{(l+1)}_v, \qquad
        \mathbf{e}_v = \sum_{l=1}^{L} \mathbf{e}^{(l)}_v

    Scores are dot products. Edge pruning: each training epoch keeps
    round((1 − dropout)·E) edges, drawn without replacement either with probability
    ∝ 1/√(d_u·d_i) (degree-sensitive) or uniformly, then re-normalised. The regularisation
    term is ``reg_weight``·½(‖E⁰_u‖² + ‖E⁰_{i⁺}‖² + ‖E⁰_{i⁻}‖²)/B on the batch's layer-0
    vectors.

    Args:
        n_users, n_items: graph sizes.
        train_users, train_items: the distinct training (user, item) edges.
        embedding_dim: width of every vector (64).
        layers: refined propagation layers L (4).
        dropout: share of the training edges pruned each epoch (0.1; 0: the whole graph).
        reg_weight: weight of the squared-L2 term (1e-4; 0 drops it).
        pruning: ``alternate`` (MMRec: degree-sensitive at odd epochs, uniform at even
            ones), ``degree`` or ``uniform``.
    """

    name = "layergcn"
    Config = LayerGCNConfig
    uses_features = False
    #: The grid ``tune.spaces.layergcn`` defaults to (docs/tuning.md); MMRec's layers grid is [4].
    search_space = {"dropout": [0.0, 0.1, 0.2], "reg_weight": [0.01, 0.001, 0.0001, 1e-05]}

    # FREEDOM's degree-sensitive draw of the kept edges (reads ``edge_weight`` and ``dropout``).
    kept_edges = FREEDOM.kept_edges

    def __init__(
        self,
        n_users: int,
        n_items: int,
        train_users: torch.Tensor,
        train_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        layers: int = 4,
        dropout: float = 0.1,
        reg_weight: float = 1e-4,
        pruning: str = "alternate",
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.layers, self.dropout, self.reg_weight, self.pruning = layers, dropout, reg_weight, pruning
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.register_buffer("edge_users", train_users, persistent=False)
        self.register_buffer("edge_items", train_items, persistent=False)
        self.register_buffer(
            "edge_weight", FREEDOM.pruning_weights(train_users, train_items, n_users, n_items), persistent=False
        )
        self.pruned: FrozenGraph | None = None  # this epoch's training graph (on_epoch_start)

    @classmethod
    def build(cls, data: GraphData, cfg: LayerGCNConfig, *unused) -> LayerGCN:
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1)
        return cls(
            data.n_users,
            data.n_items,
            edges[0],
            edges[1],
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            dropout=cfg.dropout,
            reg_weight=cfg.reg_weight,
            pruning=cfg.pruning,
        )

    def degree_sensitive(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) draws its edges ∝ 1/√(d_u·d_i) (else uniformly)."""
        return self.pruning == "degree" or (self.pruning == "alternate" and epoch % 2 == 1)

    def uniform_edges(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of as many edges as :meth:`kept_edges` keeps, drawn uniformly without replacement."""
        n_edges = len(self.edge_weight)
        keep = max(1, round((1.0 - self.dropout) * n_edges))
        order = torch.randperm(n_edges, generator=generator, device=generator.device)
        return order[:keep].to(self.edge_weight.device)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Prune the user–item graph for this epoch, drawing from ``generator``."""
        if self.dropout == 0:
            return
        kept = self.kept_edges(generator) if self.degree_sensitive(epoch) else self.uniform_edges(generator)
        kept = kept.sort().values
        users, items = self.edge_users[kept].cpu().numpy(), self.edge_items[kept].cpu().numpy()
        adj = user_item_adjacency(users, items, self.n_users, self.n_items)
        self.pruned = FrozenGraph(adj, symmetric=True).to(self.edge_weight.device)

    def refined_propagation(self, adj: torch.Tensor) -> torch.Tensor:
        """Σ_{l=1}^{L} e^(l) for all nodes, users ``[0, U)`` then items: ``[U + I, d]``.

        Args:
            adj: the normalised adjacency :math:`\\hat{A}`, ``[U + I, U + I]`` (sparse, symmetric).
        """
        ego = torch.cat([self.user.weight, self.item.weight])
        x, out = ego, None
        for _ in range(self.layers):
            x = spmm(adj, x)
            x = F.cosine_similarity(x, ego, dim=-1).unsqueeze(1) * x
            out = x if out is None else out + x
        return out

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors: over this epoch's pruned graph in training mode, over
        ``data.adj`` in eval mode (deterministic)."""
        if not self.training or self.dropout == 0:
            adj = data.adj
        elif self.pruned is None:
            raise RuntimeError("LayerGCN prunes its graph in on_epoch_start(): call it before training")
        else:
            adj = self.pruned.matrix
        h = self.refined_propagation(adj)
        return Embeddings(user=h[: self.n_users], item=h[self.n_users :])

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: ½(‖E⁰_u‖² + ‖E⁰_{i⁺}‖² + ‖E⁰_{i⁻}‖²)/B on the batch's layer-0 vectors."""
        if self.reg_weight == 0:
            return {}
        lookups = ((self.user.weight, batch.users), (self.item.weight, batch.pos), (self.item.weight, batch.neg))
        squares = sum(rows_norm(table, ids).square() for table, ids in lookups)
        return {"reg": Term(squares / (2 * len(batch.users)), self.reg_weight)}
