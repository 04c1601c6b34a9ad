"""LATTICE (Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM
2021), a baseline of the MMRec benchmark (SEA.md §3).

Per modality m two item–item kNN graphs, both kept as top-k neighbour lists (never a dense
[n_items, n_items] matrix; the similarities are computed ``knn_chunk`` rows at a time):

1. the *initial* graph S̃^m, frozen, from the raw features: each item's top-k cosine
   neighbours, weighted by their cosine, symmetric-normalised D^-1/2 S D^-1/2 (D: row sums);
2. the *learned* graph, from the projected features z^m = W_m·x^m + b_m: top-k cosine
   neighbours of the z's, weighted by their cosine. Only the kept edges' cosines are
   differentiable (recomputed from the z's of each kept pair), so gradients reach W_m, b_m
   and the modality weights through them.

With α = softmax(modality weights) the item graph is

    A = (1 − λ)·norm(Σ_m α_m·Ŝ^m) + λ·Σ_m α_m·S̃^m          (λ = ``lambda_coeff``)

and the item id embeddings take ``n_layers`` hops over it: h = Aᴸ·E_item. A LightGCN
(``cf_layers`` layers, mean of the layers) over the user–item graph gives the user vectors
and the items' CF vectors; item vector = CF vector + h / ‖h‖. Score = dot product; loss =
BPR + ``reg_weight``·½(‖U_B‖² + ‖I⁺_B‖² + ‖I⁻_B‖²)/B on the batch's final vectors.

When the learned graph is rebuilt, as MMRec and the authors' code do: at the first training
batch of each epoch (:meth:`LATTICE.on_epoch_start` marks it), with gradients; the other
batches of the epoch reuse that A frozen, as one sparse matrix (no gradient into W_m, b_m
or α, as MMRec's ``item_adj.detach()``), and every evaluation rebuilds it from the current
weights without gradients (deterministic). Rebuilding at every batch would cost a top-k
search over all item pairs per batch (about 15× a cached batch at Baby's size on the CPU).

Differences from MMRec's code (``src/models/lattice.py``):

- No dense [n, n] similarity: each graph is its top-k lists; the learned graph's top-k is
  searched chunk-wise without gradients and only the kept pairs' cosines are recomputed
  with them (the same values and the same gradients as MMRec's dense top-k, whose
  gradient also reaches only the kept entries).
- The CF backbone is the LightGCN of this package (``data.adj``, symmetric-normalised, no
  self-loops); MMRec's LATTICE propagates over D^-1(A + I) (row-normalised, self-loops).
- The raw features are fixed; MMRec fine-tunes them (trainable embedding tables) through
  the learned graph. Its initial graph is built once from the raw features either way.
- MMRec's learning-rate schedule (×0.96 every 50 epochs, smoothly) is not applied: the
  trainer's Adam has a constant rate.
- With several negatives per positive the regulariser counts every negative.
- A row whose weights sum to ≤ 0 (only possible with negative cosines among the kept
  neighbours) gets degree factor 0 where MMRec's would be NaN.

``separation: sea`` ("LATTICE+SEA", not in SEA's paper): W_m reads each modality's split
[g^m; s^m] from :class:`~sea.models.separation.Separation` instead of its raw feature, and
the CLUB and Solosim terms are added (the :class:`~sea.models.separation.Separable`
mixin). The split's CLUB and Solosim terms train it at every batch; it shapes the learned
graph at each rebuild. The initial graphs stay built from the raw features.

As in MMRec and unlike FREEDOM here, each item is among its own k neighbours (its cosine
with itself is the largest).

The paper combines the modalities after mixing each modality's normalised learned graph
with its initial one (A = Σ_m α_m[(1 − λ)·norm(Ŝ^m) + λ·S̃^m]); MMRec and the authors'
code normalise the α-weighted sum of the learned graphs instead, which is followed here
(the published numbers come from that code).
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
from sea.losses import ClubConfig, LossConfig, rows_norm
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, knn_lists, lists_mm, normalise_lists, spmm
from sea.models.propagation import propagate
from sea.models.separation import Features, Separable, Separation, check_separation_params, separation_settings


@dataclass
class LATTICEConfig(Section):
    """params.yaml [lattice]. MMRec grid-searches reg_weight and the learning rate."""

    embedding_dim: int = 64  # user and item id embeddings (MMRec embedding_size)
    feat_embed_dim: int = 64  # width of the projected features the learned graph is built from
    cf_layers: int = 2  # LightGCN layers over the user–item graph (MMRec: len(weight_size) = 2)
    n_layers: int = 1  # hops of the item id embeddings over the item–item graph
    knn_k: int = 10  # top-k cosine neighbours per item, in both graphs
    lambda_coeff: float = 0.9  # λ: item graph = (1 − λ)·learned + λ·initial
    reg_weight: float = 1e-5  # ½ squared L2 of the batch's vectors; grid {0, 1e-5, 1e-4, 1e-3}
    knn_chunk: int = 1024  # rows of the item–item similarity computed at a time (memory only)
    separation: str = "none"  # none | sea: SEA's split of each modality before W_m, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.feat_embed_dim > 0, section, "feat_embed_dim must be positive")
        require(self.cf_layers >= 0, section, "cf_layers must be >= 0")
        require(self.n_layers >= 1, section, "n_layers must be >= 1 (the item graph is the model)")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(0.0 <= self.lambda_coeff <= 1.0, section, "lambda_coeff must be in [0, 1]")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(self.knn_chunk >= 1, section, "knn_chunk must be >= 1")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


def pair_cosines(z: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """cos(z_i, z_j) for each row i and each j in ``neighbours[i]`` (``[n, k]``),
    differentiable in ``z``: the kept edges' weights of the learned graph."""
    z = F.normalize(z, dim=1)
    return (z.unsqueeze(1) * z[neighbours]).sum(-1)


def initial_graph(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """The frozen graph S̃ of one modality: top-``k`` cosine neighbours of the raw features,
    weighted by their cosine, symmetric-normalised, as an ``[n, n]`` CSR tensor."""
    neighbours, cosines = knn_lists(features, k, chunk)
    n, k = neighbours.shape
    rows = torch.arange(n, device=neighbours.device).repeat_interleave(k)
    values = normalise_lists(neighbours, cosines).reshape(-1)
    coo = torch.sparse_coo_tensor(torch.stack([rows, neighbours.reshape(-1)]), values, (n, n))
    return coo.coalesce().to_sparse_csr()


@register
class LATTICE(Separable, Recommender):
    r"""LATTICE ("Mining Latent Structures for Multimedia Recommendation", Jinghao Zhang,
    Yanqiao Zhu, Qiang Liu, Shu Wu, Shuhui Wang and Liang Wang, ACM MM 2021).

    Per modality m: a frozen kNN graph :math:`\tilde S^m` from the raw features and a
    learned one :math:`\hat S^m` from :math:`z^m = W_m x^m + b_m` (top-k cosine
    neighbours weighted by their cosine); with :math:`\alpha = \mathrm{softmax}(w)`

    .. math::
        A = (1-\lambda)\,\mathrm{norm}\Big(\sum_m \alpha_m \hat S^m\Big)
            + \lambda \sum_m \alpha_m \tilde S^m, \qquad
        h = A^{L} E_{item}, \qquad
        e_i = e_i^{CF} + h_i / \lVert h_i \rVert

    with :math:`\mathrm{norm}(S) = D^{-1/2} S D^{-1/2}` and :math:`e^{CF}` a LightGCN's
    vectors (mean of layers) over the user–item graph. Score = dot product; trained with
    BPR plus ``reg_weight``·½(‖U_B‖² + ‖I⁺_B‖² + ‖I⁻_B‖²)/B on the final vectors.

    The learned graph is rebuilt, with gradients, at the first training forward after
    :meth:`on_epoch_start`, and A is reused frozen for the rest of the epoch; in eval mode
    it is rebuilt from the current weights at every forward, without being kept.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (the order of α).
        initial_graphs: modality -> its frozen normalised graph :math:`\tilde S^m`
            ``[n_items, n_items]`` (sparse; :func:`initial_graph`).
        embedding_dim: width of the id embeddings (64).
        feat_embed_dim: width of :math:`z^m` (64).
        cf_layers: LightGCN layers over the user–item graph (2).
        n_layers: L, hops over the item graph (1).
        knn_k: neighbours per item in the learned graph (10; the initial graphs come built).
        lambda_coeff: λ, the initial graph's share (0.9).
        reg_weight: weight of the squared-L2 term (1e-5; 0 drops it).
        knn_chunk: rows of the similarity computed at a time (1024).
        separation: keyword arguments of :class:`~sea.models.separation.Separation`
            (without ``feature_dims``) for LATTICE+SEA: W_m reads each modality's split
            [g; s] instead of its raw feature, and the CLUB and Solosim terms are added; or
            None for plain LATTICE.
    """

    name = "lattice"
    Config = LATTICEConfig
    uses_features = True
    #: The grid ``tune.spaces.lattice`` defaults to (docs/tuning.md).
    search_space = {"reg_weight": [0.0, 1e-05, 0.0001, 0.001], "train.lr": [0.0005, 0.001, 0.005]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        initial_graphs: dict[str, torch.Tensor],
        *,
        embedding_dim: int = 64,
        feat_embed_dim: int = 64,
        cf_layers: int = 2,
        n_layers: int = 1,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        reg_weight: float = 1e-5,
        knn_chunk: int = 1024,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        if set(initial_graphs) != set(self.modalities):
            raise ValueError(f"initial graphs for {sorted(initial_graphs)}, features for {sorted(self.modalities)}")
        self.cf_layers, self.n_layers, self.knn_k = cf_layers, n_layers, knn_k
        self.lambda_coeff, self.reg_weight, self.knn_chunk = lambda_coeff, reg_weight, knn_chunk
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(d, feat_embed_dim) for m, d in feature_dims.items()})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        self.initial = nn.ModuleDict({m: FrozenGraph(initial_graphs[m]) for m in self.modalities})
        self.rebuild = True  # set by on_epoch_start: the next training forward rebuilds the learned graph
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None  # this epoch's A and Aᵀ, frozen
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: LATTICEConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> LATTICE:
        modalities = list(modalities or data.features)
        graphs = {m: initial_graph(data.features[m], cfg.knn_k, cfg.knn_chunk) for m in modalities}
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graphs,
            embedding_dim=cfg.embedding_dim,
            feat_embed_dim=cfg.feat_embed_dim,
            cf_layers=cfg.cf_layers,
            n_layers=cfg.n_layers,
            knn_k=cfg.knn_k,
            lambda_coeff=cfg.lambda_coeff,
            reg_weight=cfg.reg_weight,
            knn_chunk=cfg.knn_chunk,
            separation=separation_settings(cfg, loss, club),
        )

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Mark the learned graph for rebuilding at this epoch's first batch (MMRec's
        ``pre_epoch_processing``)."""
        self.rebuild = True

    def learned_graph(self, content: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(neighbours ``[n, M·k]``, weights ``[n, M·k]`` of norm(Σ_m α_m Ŝ^m), α ``[M]``):
        the modalities' top-k lists side by side, differentiable in the projections and α.
        ``content``: the item features as W_m reads them (raw, or SEA's split)."""
        alpha = torch.softmax(self.modal_weight, dim=0)
        lists, weights = [], []
        for j, m in enumerate(self.modalities):
            z = content.apply(m, self.projections[m])
            neighbours, _ = knn_lists(z, self.knn_k, self.knn_chunk)
            lists.append(neighbours)
            weights.append(alpha[j] * pair_cosines(z, neighbours))
        neighbours = torch.cat(lists, dim=1)
        return neighbours, normalise_lists(neighbours, torch.cat(weights, dim=1)), alpha

    def item_graph_vectors(self, content: Features) -> torch.Tensor:
        """h = Aᴸ·E_item, ``[n_items, d]``: through this epoch's frozen copy of A in training
        after its first batch, else through A rebuilt with gradients (kept frozen in training)."""
        h = self.item.weight
        if self.training and not self.rebuild and self.cached is not None:
            matrix, transpose = self.cached
            for _ in range(self.n_layers):
                h = spmm(matrix, h, transpose)
            return h
        lam = self.lambda_coeff
        if lam < 1.0:
            neighbours, weights, alpha = self.learned_graph(content)
        else:  # the learned graph has no share: it is never built
            alpha = torch.softmax(self.modal_weight, dim=0)
        for _ in range(self.n_layers):
            initial = sum(alpha[j] * self.initial[m](h) for j, m in enumerate(self.modalities))
            h = lam * initial if lam == 1.0 else (1.0 - lam) * lists_mm(neighbours, weights, h) + lam * initial
        if self.training:  # this epoch's A, frozen: one sparse product per hop for the other batches
            self.cached = self.frozen_item_graph(
                neighbours if lam < 1.0 else None, weights if lam < 1.0 else None, alpha
            )
            self.rebuild = False
        return h

    def frozen_item_graph(
        self, neighbours: torch.Tensor | None, weights: torch.Tensor | None, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Aᵀ) as CSR tensors without gradients, from the learned graph's lists (None when
        λ = 1) and α."""
        lam, n = self.lambda_coeff, self.n_items
        indices, values = [], []
        for j, m in enumerate(self.modalities):
            coo = self.initial[m].matrix.to_sparse_coo()
            indices.append(coo.indices())
            values.append(lam * alpha[j].detach() * coo.values())
        if neighbours is not None:
            rows = torch.arange(n, device=neighbours.device).repeat_interleave(neighbours.shape[1])
            indices.append(torch.stack([rows, neighbours.reshape(-1)]))
            values.append((1.0 - lam) * weights.detach().reshape(-1))
        coo = torch.sparse_coo_tensor(torch.cat(indices, dim=1), torch.cat(values), (n, n)).coalesce()
        return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()

    def forward(self, data: GraphData) -> Embeddings:
        """User vectors and item vectors (LightGCN item vector + normalised item-graph
        vector); with the separation, ``extras["split"]`` holds each modality's [g; s]."""
        out = propagate(data.adj, torch.cat([self.user.weight, self.item.weight]), self.cf_layers, mean=True)
        user, item = out[: self.n_users], out[self.n_users :]
        content, extras = self.item_features(data.features)
        item = item + F.normalize(self.item_graph_vectors(content), dim=1)
        return Embeddings(user, item, extras)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: ½(‖U_B‖² + ‖I⁺_B‖² + ‖I⁻_B‖²)/B on the batch's final vectors; with the
        separation, its ``club`` and ``solosim`` terms."""
        terms = {}
        if self.reg_weight > 0:
            squares = sum(
                rows_norm(table, ids).pow(2)
                for table, ids in ((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
            )
            terms["reg"] = Term(squares / (2 * len(batch.users)), self.reg_weight)
        return terms | self.separation_losses(emb, batch)
