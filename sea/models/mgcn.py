"""MGCN (Yu, Tan, Lu & Bao, "Multi-View Graph Convolutional Network for Multimedia
Recommendation", ACM MM 2023), in MMRec's version, optionally with SEA's separation.

Three views of every user and item, then a fuser:

1. *ID view*: a LightGCN over the user–item training graph (``ui_layers``, mean of layers).
2. *Behaviour-guided purifier*: each modality's feature is projected to d
   (``P_m x + b``) and gates the item id embedding element-wise:
   ẽ^m_i = e_i ⊙ σ(W_m (P_m x^m_i + b_m) + c_m).
3. *Item–item view* per modality: ẽ^m takes ``item_layers`` hops over that modality's
   frozen top-k cosine graph S_m; the user's modality vector is R·ẽ^m (R the user–item
   block of the normalised adjacency).
4. *Behaviour-aware fuser*: attention over the modality views (a shared query
   q(x) = w₂ᵀ tanh(W₁ x + b₁), softmax over modalities per node) gives the common part
   c = Σ_m α_m h^m; each modality's specific part h^m − c is gated by the node's ID view,
   σ(G_m e^{id} + g_m); the modality view is (c + Σ_m specific_m) / (M + 1).

Final vectors: ID view + modality view; score = dot product. Loss: BPR + ``reg_weight``·½
(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B on the batch's final vectors + ``cl_weight``·(InfoNCE between
the modality and ID views of the batch's positive items + the same for its users), cosine
/ ``cl_temperature``.

``separation: sea``: each modality's feature is split into [generic; unique] by
:class:`~sea.models.separation.Separation` before P_m, and the CLUB and Solosim terms are
added (the :class:`~sea.models.separation.Separable` mixin); the kNN graphs stay built from
the raw features.

Differences from MMRec's code (``src/models/mgcn.py``):

- MMRec fine-tunes the raw feature tables (trainable embeddings there); here the features
  stay fixed and P_m learns (as this pipeline's FREEDOM).
- MMRec's kNN graphs weight each edge by its cosine and count each item as its own nearest
  neighbour; here they are the shared :func:`~sea.models.graphs.knn_graph` (unweighted,
  self excluded, each entry 1/k), the same graphs as FREEDOM's and SEA's.
- MMRec hard-wires image and text; here any non-empty list of modalities (``model.modalities``)
  is fused, the modality view dividing by M + 1 (3 for two modalities, as MMRec).
- MMRec divides the penalty by the configured batch size, also for the last, shorter
  batch; here by the batch's rows. With N negatives per positive the penalty sums all N.
- The InfoNCE temperature (0.2 in MMRec's code) is the param ``cl_temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import ClubConfig, LossConfig, rows_norm, solosim_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, knn_graph
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.ops import pointwise


@dataclass
class MGCNConfig(Section):
    """params.yaml [mgcn]. MMRec grid-searches cl_weight (its ``cl_loss``) only."""

    embedding_dim: int = 64  # d: id embeddings, feature projections, every view
    ui_layers: int = 2  # LightGCN layers over the user-item graph (MMRec's n_ui_layers)
    item_layers: int = 1  # hops over each modality's item-item graph (MMRec's n_layers)
    knn_k: int = 10  # frozen item-item graphs: top-k cosine neighbours per modality
    reg_weight: float = 1e-4  # weight of ½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B on the final vectors
    cl_weight: float = 0.01  # weight of the InfoNCE between views (MMRec's cl_loss); grid [0.001, 0.01, 0.1]
    cl_temperature: float = 0.2  # InfoNCE temperature (fixed in MMRec's code)
    separation: str = "none"  # none | sea: SEA's split of each modality before P_m, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(self.cl_weight >= 0, section, "cl_weight must be >= 0")
        require(self.cl_temperature > 0, section, "cl_temperature must be > 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


def user_item_block(adj: torch.Tensor, n_users: int) -> torch.Tensor:
    """R: the user rows and item columns of the bipartite adjacency ``adj`` (users
    ``[0, U)`` then items, CSR, no user–user entries), as a ``[U, I]`` CSR tensor."""
    adj = adj.to_sparse_csr()
    crow = adj.crow_indices()[: n_users + 1]
    nnz = int(crow[-1])
    n_items = adj.shape[1] - n_users
    return torch.sparse_csr_tensor(
        crow.clone(), adj.col_indices()[:nnz] - n_users, adj.values()[:nnz].clone(), (n_users, n_items)
    )


@register
class MGCN(Separable, Recommender):
    r"""MGCN ("Multi-View Graph Convolutional Network for Multimedia Recommendation", Yu,
    Tan, Lu & Bao, ACM MM 2023).

    .. math::
        \mathbf{E}^{id} &= \tfrac{1}{L+1} \textstyle\sum_{l=0}^{L} \hat{A}^l [\mathbf{E}_u; \mathbf{E}_i] \\
        \tilde{\mathbf{e}}^m_i &= \mathbf{e}_i \odot \sigma\big(W_m (P_m \mathbf{x}^m_i + b_m) + c_m\big),
        \quad \mathbf{h}^m_{items} = S_m^{K} \tilde{\mathbf{E}}^m, \quad
        \mathbf{h}^m_{users} = R\, \mathbf{h}^m_{items} \\
        \alpha^m &= \mathrm{softmax}_m\big(w_2^\top \tanh(W_1 \mathbf{h}^m + b_1)\big), \quad
        \mathbf{c} = \textstyle\sum_m \alpha^m \mathbf{h}^m \\
        \mathbf{e}^{mm} &= \tfrac{1}{M+1}\big(\mathbf{c} + \textstyle\sum_m
        \sigma(G_m \mathbf{e}^{id} + g_m) \odot (\mathbf{h}^m - \mathbf{c})\big), \qquad
        \mathbf{e} = \mathbf{e}^{id} + \mathbf{e}^{mm}

    Scores are dot products of the final vectors. The model's own terms: ``reg``
    (½ of the squared norms of the batch's final user, positive and negative vectors, per
    row) and ``cl`` (InfoNCE from the modality view to the ID view of the batch's positive
    items, plus that of its users).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (fused in this order).
        item_graphs: modality -> its frozen, normalised item–item graph ``[I, I]`` (sparse).
        user_item: R, the user–item block of the normalised adjacency ``[U, I]`` (sparse).
        embedding_dim: d, the width of every vector (64).
        ui_layers: LightGCN layers L of the ID view (2).
        item_layers: hops K over each item–item graph (1).
        reg_weight: weight of the squared-norm penalty (1e-4; 0 turns it off).
        cl_weight: weight of the InfoNCE between the views (0.01; 0 turns it off).
        cl_temperature: the InfoNCE temperature (0.2).
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``)
            for MGCN+SEA, or None for plain MGCN.
    """

    name = "mgcn"
    Config = MGCNConfig
    uses_features = True
    #: The grid ``tune.spaces.mgcn`` defaults to (docs/tuning.md).
    search_space = {"cl_weight": [0.001, 0.01, 0.1]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graphs: dict[str, torch.Tensor],
        user_item: torch.Tensor,
        *,
        embedding_dim: int = 64,
        ui_layers: int = 2,
        item_layers: int = 1,
        reg_weight: float = 1e-4,
        cl_weight: float = 0.01,
        cl_temperature: float = 0.2,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not feature_dims or set(item_graphs) != set(feature_dims):
            raise ValueError("MGCN needs at least one modality and one item-item graph per modality")
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.ui_layers, self.item_layers = ui_layers, item_layers
        self.reg_weight, self.cl_weight, self.cl_temperature = reg_weight, cl_weight, cl_temperature
        d = embedding_dim
        self.user = nn.Embedding(n_users, d)
        self.item = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(w, d) for m, w in feature_dims.items()})  # P_m, b_m
        self.attention = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))  # q
        self.purifiers = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})  # W_m, c_m
        self.preferences = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})  # G_m, g_m
        self.item_graphs = nn.ModuleDict({m: FrozenGraph(item_graphs[m]) for m in self.modalities})
        self.user_item = FrozenGraph(user_item)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: MGCNConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> MGCN:
        modalities = list(modalities or data.features)
        graphs = {m: knn_graph(data.features[m].cpu(), cfg.knn_k).to(data.device) for m in modalities}
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graphs,
            user_item_block(data.adj.cpu(), data.n_users).to(data.device),
            embedding_dim=cfg.embedding_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            reg_weight=cfg.reg_weight,
            cl_weight=cfg.cl_weight,
            cl_temperature=cfg.cl_temperature,
            separation=separation_settings(cfg, loss, club),
        )

    def modality_views(self, features: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Each modality's view h^m of users and items ``[U + I, d]`` (purified item ids,
        K hops over S_m, users through R), and the separation's extras."""
        content, extras = self.item_features(features)
        items = []
        for m in self.modalities:
            gate = pointwise(torch.sigmoid, self.purifiers[m](content.apply(m, self.projections[m])))
            h = self.item.weight * gate
            for _ in range(self.item_layers):
                h = self.item_graphs[m](h)
            items.append(h)
        users = torch.split(self.user_item(torch.cat(items, dim=1)), self.item.weight.shape[1], dim=1)
        return [torch.cat([u, i]) for u, i in zip(users, items, strict=True)], extras

    def fuse(self, id_view: torch.Tensor, views: list[torch.Tensor]) -> torch.Tensor:
        """The behaviour-aware fuser: (c + Σ_m σ(G_m e^{id}) ⊙ (h^m − c)) / (M + 1)."""
        # [N, M], softmax along its rows (over dim 0 of [M, N, 1], torch's kernel splits by thread count)
        scores = [self.attention[2](pointwise(torch.tanh, self.attention[0](h))) for h in views]
        weights = torch.softmax(torch.cat(scores, dim=1), dim=1)
        common = sum(weights[:, j : j + 1] * h for j, h in enumerate(views))
        out = common
        for m, h in zip(self.modalities, views, strict=True):
            out = out + pointwise(torch.sigmoid, self.preferences[m](id_view)) * (h - common)
        return out / (len(views) + 1)

    def forward(self, data: GraphData) -> Embeddings:
        """Final user and item vectors (ID view + fused modality view); ``extras`` holds
        ``id_view`` and ``modality_view`` (users then items) for the InfoNCE term, and the
        separation's split."""
        id_view = propagate(data.adj, torch.cat([self.user.weight, self.item.weight]), self.ui_layers, mean=True)
        views, extras = self.modality_views(data.features)
        modality_view = self.fuse(id_view, views)
        final = id_view + modality_view
        extras = {"id_view": id_view, "modality_view": modality_view} | extras
        return Embeddings(final[: self.n_users], final[self.n_users :], extras)

    def contrastive(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """InfoNCE(modality view → ID view) over the batch's positive items, plus over its users."""
        mm, ids, pos = emb.extras["modality_view"], emb.extras["id_view"], batch.pos + self.n_users
        tau = self.cl_temperature
        return solosim_loss(mm[pos], ids[pos], tau) + solosim_loss(mm[batch.users], ids[batch.users], tau)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg`` (½ squared norms of the batch's final vectors / B), ``cl`` (the InfoNCE
        between views); with the separation, ``club`` and ``solosim``."""
        terms = {}
        if self.reg_weight > 0:
            squares = sum(
                rows_norm(t, ids).square()
                for t, ids in ((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
            )
            terms["reg"] = Term(squares / (2 * len(batch.users)), self.reg_weight)
        if self.cl_weight > 0:
            terms["cl"] = Term(self.contrastive(emb, batch), self.cl_weight)
        return terms | self.separation_losses(emb, batch)
