"""GUME (Lin, Meng, Wang, Long, Zhou & Xiao, "GUME: Graphs and User Modalities Enhancement
for Long-Tail Multimodal Recommendation", CIKM 2024), from the paper and the authors' code
(github.com/NanGongNingYi/GUME, ``src/models/gume.py``, built on MMRec and on MGCN).

GUME is MGCN (:mod:`sea.models.mgcn`: purified item modality vectors over per-modality kNN
graphs, an attention fuser with behaviour gates) with four additions:

1. *Enhanced user–item graph*: item i is linked to each item j ≠ i that is among its top-k
   cosine neighbours in *every* modality (the intersection of its kNN lists), with weight 1.
   These item–item links join the user–item edges in one adjacency A = [[0, R], [Rᵀ, C]],
   normalised D^-1/2 A D^-1/2 with D its row sums (C is not symmetric: i → j does not imply
   j → i). It replaces the training graph everywhere: the ID view, R (its user rows) and
   the extended views. Sparse, built chunk-wise (never an items × items matrix).
2. *Extended interest features*: each modality m has its own user table Ê^m_u; it and the
   modality's explicit item vectors h^m_i (MGCN's item view) take a LightGCN over the
   enhanced graph; their mean over modalities is the extended view x̂.
3. *User modality enhancement* (``um_weight``): InfoNCE(x̂_u → fused modality view of u,
   ``um_temperature``) plus, for each of those two user vectors, InfoNCE between two
   noisy copies x + sign(x) ⊙ ε·normalize(U[0, 1)) (SimGCL-style, ε = ``noise_eps``).
4. *Alignment*: internal (``vt_weight``), |var(H^a) − var(H^b)| + |mean(H^a) − mean(H^b)|
   over all entries of two modalities' explicit views (users and items); external
   (``bm_weight``), MGCN's InfoNCE from the fused modality view to the ID view of the
   batch's users and positive items (``bm_temperature``).

Loss: BPR + ``reg_weight``·½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B on the final vectors + the terms above
+ ``extended_reg_weight``·½‖x̂_{i⁺}‖²/B.

Differences from the authors' code:

- Their raw feature tables are trainable embeddings; here the features stay fixed and the
  projections learn (as this pipeline's MGCN and FREEDOM).
- Their modality kNN graphs weight each edge by its cosine and count each item as its own
  nearest neighbour (so an item's intersection holds at most k − 1 others); here the
  graphs are MGCN's (unweighted, self excluded, entries 1/k) and the intersection is of
  k-lists without the item itself. The lists are searched chunk-wise here.
- Their code hard-wires image and text. Here any modalities: the enhancement links are
  the intersection of every modality's list (one modality: its list); the internal
  alignment sums the term over every pair of modalities (none for one modality).
- Their noise is drawn for the whole user table and the batch's rows then gathered; here
  it is drawn for the batch's rows only (a user twice in a batch gets two draws), from
  torch's generator.
- Their penalties divide by the configured batch size (also for the last, shorter batch);
  here by the batch's rows. With N negatives per positive the penalty sums all N.
- Their learning-rate schedule (×0.96 every 50 epochs) is not applied: the trainer's
  ``train`` section decides the optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import rows_norm, solosim_loss
from sea.models.base import GraphData, register
from sea.models.graphs import FrozenGraph, sym_normalize
from sea.models.mgcn import MGCN, user_item_block
from sea.models.propagation import propagate
from sea.ops import full_mean, full_sum

#: Similarities held at once while searching the kNN lists: rows per chunk = this // n_items
#: (a function of n alone, so the lists are too).
CHUNK_ELEMENTS = 1 << 24


@dataclass
class GUMEConfig(Section):
    """params.yaml [gume]. Defaults: the authors' GUME.yaml (its Baby block)."""

    embedding_dim: int = 64  # d: id embeddings, feature projections, every view
    ui_layers: int = 3  # LightGCN layers over the enhanced graph (authors' n_ui_layers)
    item_layers: int = 2  # hops over each modality's kNN graph (authors' n_layers: Baby 2, others 1)
    knn_k: int = 10  # top-k cosine neighbours per modality (graphs and enhancement links)
    reg_weight: float = 1e-5  # ½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B on the final vectors (authors' reg_weight_1)
    extended_reg_weight: float = 0.1  # ½‖x̂_{i⁺}‖²/B on the extended item vectors (authors' reg_weight_2)
    bm_weight: float = 0.01  # external alignment: InfoNCE modality view → ID view (authors' bm_loss)
    bm_temperature: float = 0.4  # its temperature (authors' bm_temp: Baby 0.4, others 0.2)
    um_weight: float = 0.01  # user modality enhancement (authors' um_loss: Baby/Sports 0.01, others 0.1)
    um_temperature: float = 0.1  # its temperature (authors' um_temp: 0.1 or 0.2)
    vt_weight: float = 0.1  # internal alignment of the modalities' statistics (authors' vt_loss)
    noise_eps: float = 0.1  # size of the perturbation in the enhancement term (fixed in the code)

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        for name in ("reg_weight", "extended_reg_weight", "bm_weight", "um_weight", "vt_weight", "noise_eps"):
            require(getattr(self, name) >= 0, section, f"{name} must be >= 0")
        require(self.bm_temperature > 0, section, "bm_temperature must be > 0")
        require(self.um_temperature > 0, section, "um_temperature must be > 0")


def neighbour_lists(x: torch.Tensor, k: int, rows_per_chunk: int | None = None) -> torch.Tensor:
    """``[n, k]``: each row's ``k`` most cosine-similar *other* rows of ``x``, searched a
    chunk of rows at a time (never the whole n × n similarity). No gradient."""
    n = x.shape[0]
    k = min(k, n - 1)
    step = rows_per_chunk or max(1, CHUNK_ELEMENTS // max(n, 1))
    with torch.no_grad():
        x = F.normalize(x.float(), dim=1)
        parts = []
        for start in range(0, n, step):
            sim = x[start : start + step] @ x.T
            own = torch.arange(sim.shape[0], device=sim.device)
            sim[own, own + start] = -float("inf")
            parts.append(sim.topk(k, dim=1).indices)
    return torch.cat(parts)


def knn_from_lists(lists: torch.Tensor) -> torch.Tensor:
    """The normalised kNN graph of neighbour ``lists`` (``[n, k]``): D^-1/2 A D^-1/2 with A
    the 0/1 list matrix (every row degree k), as CSR; the same graph as
    :func:`~sea.models.graphs.knn_graph`."""
    n, k = lists.shape
    rows = torch.arange(n).repeat_interleave(k)
    return sym_normalize(rows, lists.reshape(-1).cpu(), torch.ones(n * k), n)


def common_neighbours(lists: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the links i → j for j in every one of i's lists (the first list's
    order); with one list, that list."""
    first = lists[0].cpu()
    keep = torch.ones_like(first, dtype=torch.bool)
    for other in lists[1:]:
        keep &= (first.unsqueeze(2) == other.cpu().unsqueeze(1)).any(2)
    rows = torch.arange(first.shape[0]).unsqueeze(1).expand_as(first)
    return rows[keep], first[keep]


def enhanced_adjacency(
    users: np.ndarray, items: np.ndarray, links: tuple[torch.Tensor, torch.Tensor], n_users: int, n_items: int
) -> torch.Tensor:
    """D^-1/2 A D^-1/2 over users then items, A = [[0, R], [Rᵀ, C]]: the distinct training
    edges both ways plus the item links C (``links``: rows, cols; not symmetric), D the row
    sums of A; ``[U + I, U + I]`` CSR."""
    pairs = np.unique(np.stack([users, items + n_users]), axis=1)
    u, i = torch.as_tensor(pairs[0], dtype=torch.long), torch.as_tensor(pairs[1], dtype=torch.long)
    rows = torch.cat([u, i, links[0] + n_users])
    cols = torch.cat([i, u, links[1] + n_users])
    return sym_normalize(rows, cols, torch.ones(len(rows)), n_users + n_items)


@register
class GUME(MGCN):
    r"""GUME ("GUME: Graphs and User Modalities Enhancement for Long-Tail Multimodal
    Recommendation", Lin, Meng, Wang, Long, Zhou & Xiao, CIKM 2024).

    With :math:`\hat{A}` the enhanced graph (user–item edges plus items linked to their
    common kNN neighbours), :math:`R` its user rows and :math:`S_m` the modality kNN graphs:

    .. math::
        \mathbf{E}^{id} &= \tfrac{1}{L+1} \textstyle\sum_{l=0}^{L} \hat{A}^l [\mathbf{E}_u; \mathbf{E}_i], \quad
        \mathbf{h}^m_{items} = S_m^{K} \big(\mathbf{E}_i \odot \sigma(W_m (P_m \mathbf{X}^m + b_m) + c_m)\big),
        \quad \mathbf{h}^m_{users} = R\, \mathbf{h}^m_{items} \\
        \mathbf{e}^{mm} &= \mathrm{MGCN\ fuser}(\mathbf{E}^{id}, \{\mathbf{h}^m\}), \qquad
        \mathbf{e} = \mathbf{e}^{id} + \mathbf{e}^{mm} \\
        \hat{\mathbf{x}} &= \tfrac{1}{M} \textstyle\sum_m \tfrac{1}{L+1} \sum_{l=0}^{L}
        \hat{A}^l [\hat{\mathbf{E}}^m_u; \mathbf{h}^m_{items}]

    Scores are dot products of :math:`\mathbf{e}`. Terms besides the ranking loss: ``reg``
    (½ squared norms of the batch's final vectors / B), ``bm`` (InfoNCE
    :math:`\mathbf{e}^{mm} \to \mathbf{e}^{id}` over the batch's users and positives),
    ``vt`` (|var(h^a) − var(h^b)| + |mean(h^a) − mean(h^b)| per pair of modalities),
    ``um`` (InfoNCE :math:`\hat{\mathbf{x}}_u \to \mathbf{e}^{mm}_u` plus the noisy-copy
    InfoNCE of each) and ``extended_reg`` (½‖x̂ of the positives‖² / B).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (fused in this order).
        item_graphs: modality -> its frozen, normalised kNN graph ``[I, I]`` (sparse).
        adjacency: the normalised enhanced graph ``[U + I, U + I]`` (sparse, not symmetric).
        embedding_dim: d (64).
        ui_layers: LightGCN layers L over the enhanced graph (3).
        item_layers: hops K over each kNN graph (2).
        reg_weight, extended_reg_weight: weights of the two penalties (1e-5, 0.1).
        bm_weight, bm_temperature: external alignment (0.01, 0.4).
        um_weight, um_temperature: user modality enhancement (0.01, 0.1).
        vt_weight: internal alignment (0.1).
        noise_eps: ε of the noisy copies (0.1).
    """

    name = "gume"
    Config = GUMEConfig
    uses_features = True
    #: The grid ``tune.spaces.gume`` defaults to (docs/tuning.md).
    search_space = {"item_layers": [1, 2], "um_weight": [0.01, 0.1], "vt_weight": [0.001, 0.01, 0.1]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graphs: dict[str, torch.Tensor],
        adjacency: torch.Tensor,
        *,
        embedding_dim: int = 64,
        ui_layers: int = 3,
        item_layers: int = 2,
        reg_weight: float = 1e-5,
        extended_reg_weight: float = 0.1,
        bm_weight: float = 0.01,
        bm_temperature: float = 0.4,
        um_weight: float = 0.01,
        um_temperature: float = 0.1,
        vt_weight: float = 0.1,
        noise_eps: float = 0.1,
    ):
        super().__init__(
            n_users,
            n_items,
            feature_dims,
            item_graphs,
            user_item_block(adjacency.cpu(), n_users).to(adjacency.device),
            embedding_dim=embedding_dim,
            ui_layers=ui_layers,
            item_layers=item_layers,
            reg_weight=reg_weight,
            cl_weight=bm_weight,
            cl_temperature=bm_temperature,
        )
        self.adjacency = FrozenGraph(adjacency)
        self.extended_reg_weight, self.um_weight, self.um_temperature = extended_reg_weight, um_weight, um_temperature
        self.vt_weight, self.noise_eps = vt_weight, noise_eps
        # Ê^m_u: each modality's user table of the extended views
        self.extended_users = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embedding_dim))) for m in self.modalities}
        )

    @classmethod
    def build(cls, data: GraphData, cfg: GUMEConfig, modalities: Sequence[str] | None = None, *unused) -> GUME:
        modalities = list(modalities or data.features)
        lists = [neighbour_lists(data.features[m].cpu(), cfg.knn_k) for m in modalities]
        adjacency = enhanced_adjacency(
            data.train_users.cpu().numpy(),
            data.train_items.cpu().numpy(),
            common_neighbours(lists),
            data.n_users,
            data.n_items,
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            {m: knn_from_lists(x).to(data.device) for m, x in zip(modalities, lists, strict=True)},
            adjacency.to(data.device),
            embedding_dim=cfg.embedding_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            reg_weight=cfg.reg_weight,
            extended_reg_weight=cfg.extended_reg_weight,
            bm_weight=cfg.bm_weight,
            bm_temperature=cfg.bm_temperature,
            um_weight=cfg.um_weight,
            um_temperature=cfg.um_temperature,
            vt_weight=cfg.vt_weight,
            noise_eps=cfg.noise_eps,
        )

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """The LightGCN layer mean of ``x`` (``[U + I, w]``) over the enhanced graph."""
        return propagate(self.adjacency.matrix, x, self.ui_layers, mean=True, transpose=self.adjacency.transpose)

    def forward(self, data: GraphData) -> Embeddings:
        """Final user and item vectors. ``extras``: ``id_view``, ``modality_view`` and the
        explicit ``views`` (users then items); in training with ``um_weight`` or
        ``extended_reg_weight`` set, also the ``extended`` view x̂."""
        d = self.item.weight.shape[1]
        x = torch.cat([self.user.weight, self.item.weight])
        views, _ = self.modality_views(data.features)
        extended = None
        if self.training and (self.um_weight > 0 or self.extended_reg_weight > 0):
            # the ID view and every extended view in one propagation, side by side
            parts = [torch.cat([self.extended_users[m], h[self.n_users :]]) for m, h in zip(self.modalities, views)]
            out = self.propagate(torch.cat([x, *parts], dim=1))
            id_view = out[:, :d]
            extended = sum(out[:, d * (j + 1) : d * (j + 2)] for j in range(len(parts))) / len(parts)
        else:
            id_view = self.propagate(x)
        modality_view = self.fuse(id_view, views)
        final = id_view + modality_view
        extras = {"id_view": id_view, "modality_view": modality_view, "views": views}
        if extended is not None:
            extras["extended"] = extended
        return Embeddings(final[: self.n_users], final[self.n_users :], extras)

    @staticmethod
    def statistics_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """|var(a) − var(b)| + |mean(a) − mean(b)| over all entries (unbiased variance)."""

        def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = full_mean(x)
            return full_sum((x - mean).square()) / max(x.numel() - 1, 1), mean

        (va, ma), (vb, mb) = stats(a), stats(b)
        return (va - vb).abs() + (ma - mb).abs()

    def perturbed(self, x: torch.Tensor) -> torch.Tensor:
        """x + sign(x) ⊙ ε·normalize(U[0, 1)) per row (torch's generator)."""
        return x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1) * self.noise_eps

    def enhancement(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """InfoNCE(x̂_u → e^mm_u) + the noisy-copy InfoNCE of e^mm_u and of x̂_u, over the batch's users."""
        mm, ext = emb.extras["modality_view"][batch.users], emb.extras["extended"][batch.users]
        tau = self.um_temperature
        total = solosim_loss(ext, mm, tau)
        for x in (mm, ext):
            total = total + solosim_loss(self.perturbed(x), self.perturbed(x), tau)
        return total

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``, ``bm``, ``vt``, ``um`` and ``extended_reg`` (each skipped at weight 0)."""
        terms = {}
        if self.reg_weight > 0:
            squares = sum(
                rows_norm(t, ids).square()
                for t, ids in ((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
            )
            terms["reg"] = Term(squares / (2 * len(batch.users)), self.reg_weight)
        if self.cl_weight > 0:
            terms["bm"] = Term(self.contrastive(emb, batch), self.cl_weight)
        if self.vt_weight > 0 and len(self.modalities) > 1:
            views = emb.extras["views"]
            terms["vt"] = Term(sum(self.statistics_gap(a, b) for a, b in combinations(views, 2)), self.vt_weight)
        if self.um_weight > 0:
            terms["um"] = Term(self.enhancement(emb, batch), self.um_weight)
        if self.extended_reg_weight > 0:
            items = emb.extras["extended"][self.n_users :]
            terms["extended_reg"] = Term(
                rows_norm(items, batch.pos).square() / (2 * len(batch.users)), self.extended_reg_weight
            )
        return terms
