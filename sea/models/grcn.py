"""GRCN (Wei, Wang, Nie, He & Chua, "Graph-Refined Convolutional Network for Multimedia
Recommendation with Implicit Feedback", ACM MM 2020), as MMRec runs it.

Two parts over the user–item training graph:

1. A *graph refining* layer per modality m: users carry a learnable preference p^m_u,
   items their feature through a linear layer and a LeakyReLU, f^m_i = LReLU(W_m x^m_i + b_m);
   both rows are L2-normalised. Every training edge (u, i) gets the affinity
   s^m_ui = ⟨p^m_u, f^m_i⟩, turned into two weights: the softmax over the user's items
   (the weight of the edge towards the user) and the softmax over the item's users (towards
   the item). The modality's vectors are one attention hop: user p_u + Σ_i α^u_ui f_i, item
   f_i + Σ_u α^i_ui p_u.
2. A *graph convolution* of the id embeddings over the refined graph: each directed edge's
   weight combines the modalities' attention weights (``weight_mode``: ``confid``, the
   largest over m of α^m times a learnable confidence of the edge's source node and
   modality; ``mean``; ``max``); ``pruning`` clips negative weights to 0. The normalised
   id embeddings take ``id_layers`` weighted-sum hops, and the layers 0…L are added.

The user and item vectors are the concatenation [id; modality 1; modality 2; …]; score =
dot product. Loss: BPR plus λ times MMRec's penalty (mean squares of the batch's id
embeddings and of the batch users' preferences, and of the image preference table).

Every edge weight lives on the distinct training edges only: the aggregations are sparse
products with the fixed edge–node incidence matrices (:func:`~sea.models.graphs.spmm`),
never a dense users × items matrix; softmaxes are taken per node over its edges.

Differences from MMRec's ``grcn.py`` (the published numbers come from that code):

- **Routing.** MMRec's ``n_layers: 3`` routing iterations (the paper's prototypical
  refinement of p_u) send their messages along the user→item edges only, so the users'
  share of the result is zero and p_u never changes: the iterations are a no-op there.
  ``routing: 0`` (the default) reproduces that; ``routing: R > 0`` runs the paper's R
  iterations, p_u ← norm(p_u + Σ_{i∈N(u)} softmax_i(⟨p_u, f_i⟩) f_i).
- MMRec hard-codes two hops of the id convolution (``id_layers``), ``weight_mode:
  confid``, ``pruning: True``, the concatenation fusion, no activation, normalised inputs
  and no edge dropout (``dropout_adj`` with p = 0): here the first three are fields, the
  others fixed as there.
- The penalty's table term (mean square of *all* users' preferences) is there for the
  image modality only, as in MMRec; MMRec's confidence penalty is computed but never added,
  and is left out. With N negatives per positive the id term averages the negatives'
  squares (MMRec: one negative).
- With the text modality alone MMRec fails (a misspelt variable); here one modality works.
- Evaluation re-embeds in eval mode (the same function as in training); MMRec scores with
  the vectors of the last training batch's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, spmm
from sea.ops import full_mean, pointwise

WEIGHT_MODES = ("confid", "mean", "max")


@dataclass
class GRCNConfig(Section):
    """params.yaml [grcn]. MMRec grid-searches reg_weight and the learning rate."""

    embedding_dim: int = 64  # id embeddings (MMRec's embedding_size)
    latent_dim: int = 64  # per modality: user preference and projected item feature (latent_embedding)
    routing: int = 0  # the paper's routing iterations; MMRec's n_layers = 3 of them change nothing (0)
    id_layers: int = 2  # hops of the id embeddings over the refined graph (MMRec: 2, fixed)
    weight_mode: str = "confid"  # confid | mean | max: how the modalities' edge weights combine
    pruning: bool = True  # clip negative edge weights to 0 (MMRec: on)
    reg_weight: float = 1e-3  # lambda; MMRec grid [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.latent_dim > 0, section, "latent_dim must be positive")
        require(self.routing >= 0, section, "routing must be >= 0")
        require(self.id_layers >= 0, section, "id_layers must be >= 0")
        require_choice(self.weight_mode, WEIGHT_MODES, section, "weight_mode")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")


def incidence(nodes: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """The ``[n_nodes, n_edges]`` CSR matrix with a 1 at (nodes[e], e): row v sums the
    edges of node v, its transpose gathers each edge's node."""
    n_edges = len(nodes)
    index = torch.stack([nodes.cpu(), torch.arange(n_edges)])
    return torch.sparse_coo_tensor(index, torch.ones(n_edges), (n_nodes, n_edges)).coalesce().to_sparse_csr()


@register
class GRCN(Recommender):
    r"""GRCN ("Graph-Refined Convolutional Network for Multimedia Recommendation with
    Implicit Feedback", Wei, Wang, Nie, He & Chua, ACM MM 2020).

    Per modality m, with :math:`p_u = \mathrm{norm}(P^m_u)` and
    :math:`f_i = \mathrm{norm}(\mathrm{LReLU}(W_m x^m_i + b_m))`, each training edge's
    affinity :math:`s_{ui} = \langle p_u, f_i\rangle` gives the attention weights
    :math:`\alpha^u_{ui} = \mathrm{softmax}_{i \in N(u)} s_{ui}` and
    :math:`\alpha^i_{ui} = \mathrm{softmax}_{u \in N(i)} s_{ui}`, and the modality's vectors

    .. math::
        h^m_u = p_u + \sum_{i \in N(u)} \alpha^u_{ui} f_i, \qquad
        h^m_i = f_i + \sum_{u \in N(i)} \alpha^i_{ui} p_u

    (before that, ``routing`` iterations :math:`p_u \leftarrow \mathrm{norm}(p_u +
    \sum_i \alpha^u_{ui} f_i)`). The refined weight of the edge towards the user is, with
    ``weight_mode: confid``, :math:`w_{i \to u} = \max_m \alpha^{u,m}_{ui} c_{im}` (c: a
    learnable confidence per node and modality, of the edge's source), towards the item
    :math:`w_{u \to i} = \max_m \alpha^{i,m}_{ui} c_{um}`; ``mean`` and ``max`` combine the
    α over m without c; ``pruning`` takes :math:`\max(w, 0)`. The id embeddings
    :math:`e^{(0)} = \mathrm{norm}(E)` take L weighted-sum hops over the refined graph,
    :math:`e^{(l+1)}_v = \sum_{v' \to v} w_{v' \to v} e^{(l)}_{v'}`, and

    .. math::
        u = [\textstyle\sum_{l=0}^{L} e^{(l)}_u;\; h^1_u;\; h^2_u], \qquad
        i = [\textstyle\sum_{l=0}^{L} e^{(l)}_i;\; h^1_i;\; h^2_i]

    Score :math:`\langle u, i\rangle`. Besides the trainer's BPR, the term ``reg`` is
    MMRec's: mean(E_B²) over the batch's user and item rows (user rows counted once per
    pair, items averaged over positive and negatives), plus Σ_m mean((P^m_B)²) over the
    batch's users, plus mean((P^image)²) over all users, weight λ.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width, in the concatenation's order.
        train_users, train_items: the distinct training edges.
        embedding_dim: width of the id embeddings (64).
        latent_dim: width of each modality's vectors (64).
        routing: the paper's routing iterations (0: MMRec's code, where they are a no-op).
        id_layers: L, hops of the id embeddings (2).
        weight_mode: ``confid``, ``mean`` or ``max``.
        pruning: clip negative edge weights to 0 (True).
        reg_weight: λ (1e-3; 0 drops the term).
    """

    name = "grcn"
    Config = GRCNConfig
    uses_features = True
    #: The grid ``tune.spaces.grcn`` defaults to (docs/tuning.md).
    search_space = {"train.lr": [0.01, 0.001, 0.0001], "reg_weight": [0.1, 0.01, 0.001, 0.0001]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        train_users: torch.Tensor,
        train_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        latent_dim: int = 64,
        routing: int = 0,
        id_layers: int = 2,
        weight_mode: str = "confid",
        pruning: bool = True,
        reg_weight: float = 1e-3,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.routing, self.id_layers = routing, id_layers
        self.weight_mode, self.pruning, self.reg_weight = weight_mode, pruning, reg_weight
        # MMRec's initialisation: xavier-normal tables, xavier-normal projection weights
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, embedding_dim)))
        self.preference = nn.ParameterDict()
        self.projection = nn.ModuleDict()
        for m, d in feature_dims.items():
            self.preference[m] = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, latent_dim)))
            self.projection[m] = nn.Linear(d, latent_dim)
            nn.init.xavier_normal_(self.projection[m].weight)
        # c: one confidence per node (users, then items) and modality
        self.confidence = (
            nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, len(feature_dims))))
            if weight_mode == "confid"
            else None
        )
        self.register_buffer("edge_users", train_users, persistent=False)
        self.register_buffer("edge_items", train_items, persistent=False)
        self.user_edges = FrozenGraph(incidence(train_users, n_users).to(train_users.device))
        self.item_edges = FrozenGraph(incidence(train_items, n_items).to(train_items.device))

    @classmethod
    def build(cls, data: GraphData, cfg: GRCNConfig, modalities: Sequence[str] | None = None, *unused) -> GRCN:
        modalities = list(modalities or data.features)
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1)
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            edges[0],
            edges[1],
            embedding_dim=cfg.embedding_dim,
            latent_dim=cfg.latent_dim,
            routing=cfg.routing,
            id_layers=cfg.id_layers,
            weight_mode=cfg.weight_mode,
            pruning=cfg.pruning,
            reg_weight=cfg.reg_weight,
        )

    # ------------------------------------------------------------------ sparse pieces

    @staticmethod
    def gather(graph: FrozenGraph, x: torch.Tensor) -> torch.Tensor:
        """Each edge's row of the node vectors ``x``: ``[n_edges, d]``."""
        return spmm(graph.transpose, x, graph.matrix)

    def segment_softmax(self, scores: torch.Tensor, nodes: torch.Tensor, graph: FrozenGraph) -> torch.Tensor:
        """Softmax of ``scores`` ``[n_edges, M]`` over each node's edges (the edges' nodes:
        ``nodes``; ``graph``: that side's incidence), per column."""
        n = graph.shape[0]
        index = nodes.unsqueeze(1).expand_as(scores)
        top = torch.zeros(n, scores.shape[1], device=scores.device)
        top = top.scatter_reduce(0, index, scores.detach(), "amax", include_self=False)
        e = pointwise(torch.exp, scores - top[nodes])
        return e / self.gather(graph, graph(e))

    def modality(self, features: torch.Tensor, m: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Modality m's refining layer: (user vectors, item vectors, α towards the user,
        α towards the item), the weights one per edge."""
        p = F.normalize(self.preference[m], dim=1)
        f = F.normalize(F.leaky_relu(self.projection[m](features)), dim=1)
        f_edge = self.gather(self.item_edges, f)
        for _ in range(self.routing):
            a = self.segment_softmax(
                (self.gather(self.user_edges, p) * f_edge).sum(1, keepdim=True), self.edge_users, self.user_edges
            )
            p = F.normalize(p + self.user_edges(a * f_edge), dim=1)
        p_edge = self.gather(self.user_edges, p)
        s = (p_edge * f_edge).sum(1, keepdim=True)
        to_user = self.segment_softmax(s, self.edge_users, self.user_edges)
        to_item = self.segment_softmax(s, self.edge_items, self.item_edges)
        return p + self.user_edges(to_user * f_edge), f + self.item_edges(to_item * p_edge), to_user, to_item

    def edge_weights(self, to_user: torch.Tensor, to_item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined weights ``[n_edges, 1]`` of each edge towards its user and its item,
        from the modalities' attention weights ``[n_edges, M]``."""
        if self.weight_mode == "confid":
            conf_user, conf_item = self.confidence[: self.n_users], self.confidence[self.n_users :]
            w_user = (to_user * self.gather(self.item_edges, conf_item)).amax(1, keepdim=True)
            w_item = (to_item * self.gather(self.user_edges, conf_user)).amax(1, keepdim=True)
        elif self.weight_mode == "mean":
            w_user, w_item = to_user.mean(1, keepdim=True), to_item.mean(1, keepdim=True)
        else:
            w_user, w_item = to_user.amax(1, keepdim=True), to_item.amax(1, keepdim=True)
        if self.pruning:
            w_user, w_item = F.relu(w_user), F.relu(w_item)
        return w_user, w_item

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors [id; modality 1; …] (the same in training and eval mode)."""
        parts = [self.modality(data.features[m], m) for m in self.modalities]
        w_user, w_item = self.edge_weights(torch.cat([p[2] for p in parts], 1), torch.cat([p[3] for p in parts], 1))
        x = F.normalize(self.id_embedding, dim=1)
        user, item = x[: self.n_users], x[self.n_users :]
        sum_user, sum_item = user, item
        for _ in range(self.id_layers):
            user, item = (
                self.user_edges(w_user * self.gather(self.item_edges, item)),
                self.item_edges(w_item * self.gather(self.user_edges, user)),
            )
            sum_user, sum_item = sum_user + user, sum_item + item
        return Embeddings(
            torch.cat([sum_user] + [p[0] for p in parts], 1), torch.cat([sum_item] + [p[1] for p in parts], 1)
        )

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: MMRec's penalty (see the class docstring), weight λ."""
        if self.reg_weight == 0:
            return {}
        items = self.id_embedding[self.n_users :]
        reg = full_mean(self.id_embedding[batch.users].pow(2)) + 0.5 * (
            full_mean(items[batch.pos].pow(2)) + full_mean(items[batch.neg].pow(2))
        )
        for m in self.modalities:
            reg = reg + full_mean(self.preference[m][batch.users].pow(2))
        if "image" in self.preference:
            reg = reg + full_mean(self.preference["image"].pow(2))
        return {"reg": Term(reg, self.reg_weight)}
