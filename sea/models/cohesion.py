"""COHESION (Xu, Chen, Wang, Hu, Kim & Ngai, "COHESION: Composite Graph Convolutional Network
with Dual-Stage Fusion for Multimodal Recommendation", SIGIR 2025), as the authors' code
(github.com/Jinfeng-Xu/COHESION, built on MMRec) runs it.

Three modalities: the behaviour (item id) modality and each feature modality m.

1. **Early fusion** (the behaviour modality refines every modality): item i's vector in
   modality m is the element-wise quadratic mean of its id embedding e_i and its projected
   feature f_m(x_i^m) = W_2 LeakyReLU(W_1 x_i^m + b_1) + b_2,
   ẽ^m_i = √((e_i² + f_m(x^m_i)²)/2 + 1e-8); for the id modality itself the same with an MLP
   g of the id embedding, ẽ^id_i = √((e_i² + g(e_i)²)/2 + 1e-8).
2. **Composite graph convolution**, heterogeneous part: per modality, users carry a
   preference vector p^m_u; the L2-normalised rows x = norm([p^m; ẽ^m]) are propagated over
   the user–item graph Â with LayerGCN's refinement (each layer scaled row-wise by its cosine
   to the ego layer), h^m = Σ_{l=0..L} x_l, x_{l+1} = cos(Âx_l, x_0)·Âx_l.
3. **Late fusion**: concatenation, u = [h^id_u; h^1_u; …], i = [h^id_i; h^1_i; …].
4. Composite graph convolution, homogeneous part: items add ``item_layers`` hops over the
   frozen item–item kNN graph S_I (per modality, the top-``knn_k`` cosine neighbours, itself
   included, weights 1/k; w·image + (1 − w)·text), users one hop over the user–user
   co-occurrence graph S_U (softmax of the common-item counts over each user's top
   ``user_knn_k``, :func:`sea.models.graphs.user_user_graph`):
   u ← u + S_U u, i ← i + S_I^{L_I} i.
5. **Adaptive optimisation** (training only): per modality block, s^m = ⟨u^m, i^m⟩; the
   BPR margin is Σ_m w_m (s^m_+ − s^m_−) with w = 1 − softmax_m(s^m_+ − s^m_−), detached: a
   modality that already ranks the pair well weighs less. Scoring (evaluation) is the plain
   dot product ⟨u, i⟩.

Loss (``loss.kind: auto`` is ``none``, the model's own terms are its whole objective):
``bpr``, the adaptive BPR above (−mean ln σ, over every negative of the batch), plus ``reg``,
λ·Σ_{m≠id} mean((p^m of the batch's users)²).

Differences from the authors' code (deliberate; the published numbers come from that code):

- Their BPR is −mean log₂ σ(·); here −mean ln σ(·), with ``reg`` weighted λ·ln 2: the whole
  loss is theirs times ln 2 (Adam is invariant to that, up to its ε), so ``reg_weight``
  keeps their scale and grid.
- Their id branch enters through ``id_rep.data``: detached, so its user preference p^id is
  never trained (it stays at its random initialisation), nor is the id branch's MLP g, and
  the id embedding e is trained through the feature branches' early fusion only.
  ``detach_id: true`` (the default) keeps that, with p^id and g fixed buffers;
  ``detach_id: false`` lets the gradient through (p^id and g are then parameters).
- The user–user graph: theirs is read from a precomputed file (DualGNN's co-occurrence
  lists) and a user with fewer than k co-occurring users is padded by re-drawing random
  neighbours at each epoch; here it is built from the training edges at build time, chunk by
  chunk, and such a user keeps its real neighbours only (as DRAGON's here). Their k = 40 is
  hard-coded; here ``user_knn_k``.
- The item–item graph is built ``chunk`` rows of similarities at a time (theirs: a dense
  n_items × n_items matrix); the same top-k lists and 1/k weights (ties aside).
- Their dead code is left out: ``weight_u`` (only penalised, never read by the forward
  pass: its penalty moves nothing else), ``result_embed``'s initial table, the unused
  ``n_layers``/``feat_embed_dim``/``drop_rate``; their edge ``dropout`` (grid [0], i.e. off)
  is not implemented. Their widths 64 and 4 × 64 are ``embedding_dim``/``mlp_hidden_dim``.
- Any subset of the feature modalities works (theirs needs both image and text); with one,
  its kNN graph is the item–item graph.
- Evaluation re-embeds in eval mode (the same function as in training); theirs scores with
  the vectors of the last training batch's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.losses import LN2
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, knn_lists, optional_user_graph, spmm
from sea.ops import full_mean

#: Rows of the item–item similarity computed at a time when building the kNN graph.
KNN_CHUNK = 1024


@dataclass
class COHESIONConfig(Section):
    """params.yaml [cohesion]. The authors grid-search ui_layers (their num_layer)."""

    embedding_dim: int = 64  # width of each modality's vectors (users, items: (1 + modalities) x 64)
    mlp_hidden_dim: int = 256  # hidden width of the item feature MLPs (authors: 4 x 64)
    ui_layers: int = 2  # refined hops over the user-item graph (authors' num_layer, grid [1, 2])
    item_layers: int = 1  # hops over the frozen item-item graph (authors' n_mm_layers)
    knn_k: int = 10  # item-item graph: top-k cosine neighbours per modality (itself included)
    image_knn_weight: float = 0.1  # item-item graph = w * image kNN + (1 - w) * text kNN
    user_knn_k: int = 40  # user-user graph: each user's k users with the most common items (0: none)
    reg_weight: float = 1e-4  # lambda of the preference penalty (authors' grid [1e-4])
    detach_id: bool = True  # the authors' detached id branch: p^id fixed, e trained via early fusion only

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.mlp_hidden_dim > 0, section, "mlp_hidden_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.knn_k > 0, section, "knn_k must be positive")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require(self.user_knn_k >= 0, section, "user_knn_k must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")


def knn_mean_graph(x: torch.Tensor, k: int, chunk: int = KNN_CHUNK) -> torch.Tensor:
    """The item–item graph of one modality as an (n, n) sparse COO tensor: row i holds 1/k at
    each of its top-``k`` cosine neighbours (itself included), computed ``chunk`` rows of
    similarities at a time (:func:`sea.models.graphs.knn_lists`)."""
    n = x.shape[0]
    nbrs, _ = knn_lists(x, k, chunk)
    k = nbrs.shape[1]
    rows = torch.arange(n).repeat_interleave(k)
    vals = torch.full((n * k,), 1.0 / k)
    return torch.sparse_coo_tensor(torch.stack([rows, nbrs.reshape(-1)]), vals, (n, n)).coalesce()


def item_graph(features: dict[str, torch.Tensor], k: int, image_weight: float) -> torch.Tensor:
    """w·image + (1 − w)·text of :func:`knn_mean_graph`, as CSR (one modality: its graph)."""
    graphs = {m: knn_mean_graph(x, k) for m, x in features.items()}
    if len(graphs) == 1:
        return next(iter(graphs.values())).to_sparse_csr()
    weights = {"image": image_weight, "text": 1.0 - image_weight}
    combined = weights["image"] * graphs["image"] + weights["text"] * graphs["text"]
    return combined.coalesce().to_sparse_csr()


def refined_propagate(adj: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    """Σ_{l=0}^{L} x_l with x_0 = ``x`` and x_{l+1} = cos(Âx_l, x_0) · Âx_l (row-wise)."""
    out, h = x, x
    for _ in range(layers):
        h = spmm(adj, h)
        h = F.cosine_similarity(h, x, dim=-1).unsqueeze(1) * h
        out = out + h
    return out


@register
class COHESION(Recommender):
    r"""COHESION ("COHESION: Composite Graph Convolutional Network with Dual-Stage Fusion for
    Multimodal Recommendation", Xu, Chen, Wang, Hu, Kim & Ngai, SIGIR 2025).

    Early fusion: each item's id embedding :math:`e_i` refines every modality,
    :math:`\tilde e^m_i = \sqrt{(e_i^2 + f_m(x^m_i)^2)/2 + 10^{-8}}` (element-wise;
    :math:`f_m` a two-layer MLP; for the id modality the same with an MLP :math:`g(e_i)` in
    place of :math:`f_m(x^m_i)`). Per modality
    (id included) the rows :math:`x_0 = \mathrm{norm}([p^m; \tilde e^m])` take layer-refined
    hops over the user–item graph :math:`\hat A`:

    .. math::
        h^m = \sum_{l=0}^{L} x_l, \qquad x_{l+1} = \cos(\hat A x_l, x_0)\,\hat A x_l

    Late fusion by concatenation, then the homogeneous graphs (user–user :math:`S_U`,
    frozen item–item :math:`S_I`):

    .. math::
        u = \tilde u + S_U \tilde u,\quad \tilde u = [h^{id}_u; h^1_u; \dots], \qquad
        i = \tilde i + S_I^{L_I} \tilde i,\quad \tilde i = [h^{id}_i; h^1_i; \dots]

    Score :math:`\langle u, i\rangle`. Training loss (its own; ``loss.kind: auto`` is
    ``none``): the adaptive BPR :math:`-\mathrm{mean}\,\ln\sigma\big(\sum_m w_m (s^m_+ - s^m_-)\big)`
    with :math:`s^m = \langle u^m, i^m\rangle` per modality block and
    :math:`w = 1 - \mathrm{softmax}_m(s^m_+ - s^m_-)` (no gradient through w), plus ``reg``
    :math:`\sum_{m \ne id} \mathrm{mean}\big((p^m_B)^2\big)` weighted λ·ln 2 (the authors'
    BPR is in bits; see the module docstring).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width, in the fusion's order (after id).
        item_graph: the frozen item–item graph ``[n_items, n_items]`` (sparse).
        user_graph: the user–user graph ``[n_users, n_users]`` (sparse, rows sum to 1 or 0),
            or None for none.
        embedding_dim: width of each modality's vectors (64).
        mlp_hidden_dim: hidden width of the feature MLPs f_m (256).
        ui_layers: L, refined hops over the user–item graph (2).
        item_layers: L_I, hops over the item–item graph (1; 0: none).
        reg_weight: λ (1e-4; 0 drops the term).
        detach_id: the authors' detached id branch (True): p^id and g are fixed buffers and
            the id branch passes no gradient (e is trained through the early fusion only).
    """

    name = "cohesion"
    Config = COHESIONConfig
    uses_features = True
    preferred_loss = "none"
    #: The grid ``tune.spaces.cohesion`` defaults to (docs/tuning.md): the authors'.
    search_space = {"train.lr": [0.001], "reg_weight": [0.0001], "ui_layers": [1, 2]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graph: torch.Tensor,
        user_graph: torch.Tensor | None,
        *,
        embedding_dim: int = 64,
        mlp_hidden_dim: int = 256,
        ui_layers: int = 2,
        item_layers: int = 1,
        reg_weight: float = 1e-4,
        detach_id: bool = True,
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, embedding_dim
        self.modalities = list(feature_dims)
        self.ui_layers, self.item_layers = ui_layers, item_layers
        self.reg_weight, self.detach_id = reg_weight, detach_id
        self.item_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_items, embedding_dim)))
        id_pref = nn.init.xavier_normal_(torch.empty(n_users, embedding_dim))
        if detach_id:
            self.register_buffer("id_preference", id_pref)
        else:
            self.id_preference = nn.Parameter(id_pref)
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, embedding_dim))) for m in self.modalities}
        )
        self.mlp = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, mlp_hidden_dim), nn.LeakyReLU(), nn.Linear(mlp_hidden_dim, embedding_dim))
                for m, d in feature_dims.items()
            }
        )
        # the id branch's own MLP g, applied to the id embedding (fixed buffers when detached)
        self.id_mlp = nn.Sequential(
            nn.Linear(embedding_dim, mlp_hidden_dim), nn.LeakyReLU(), nn.Linear(mlp_hidden_dim, embedding_dim)
        )
        if detach_id:
            for layer in (self.id_mlp[0], self.id_mlp[2]):
                for key in ("weight", "bias"):
                    value = getattr(layer, key).detach()
                    delattr(layer, key)
                    layer.register_buffer(key, value)
        self.item_graph = FrozenGraph(item_graph)
        self.user_graph = FrozenGraph(user_graph) if user_graph is not None else None

    @classmethod
    def build(cls, data: GraphData, cfg: COHESIONConfig, modalities: Sequence[str] | None = None, *unused) -> COHESION:
        modalities = list(modalities or data.features)
        graph = item_graph({m: data.features[m].cpu() for m in modalities}, cfg.knn_k, cfg.image_knn_weight)
        users = optional_user_graph(
            data.train_users, data.train_items, data.n_users, data.n_items, cfg.user_knn_k, data.device
        )
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graph.to(data.device),
            users,
            embedding_dim=cfg.embedding_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            reg_weight=cfg.reg_weight,
            detach_id=cfg.detach_id,
        )

    def branch(self, adj: torch.Tensor, preference: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """h^m: the refined propagation of norm([p^m; ẽ^m]), ``[n_users + n_items, d]``."""
        return refined_propagate(adj, F.normalize(torch.cat([preference, items]), dim=1), self.ui_layers)

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors ``[·, (1 + modalities)·d]``, blocks id then the modalities
        (the same in training and eval mode)."""
        e2 = self.item_id.pow(2)
        id_items = ((e2 + self.id_mlp(self.item_id).pow(2)) / 2 + 1e-8).sqrt()
        h_id = self.branch(data.adj, self.id_preference, id_items)
        if self.detach_id:
            h_id = h_id.detach()
        h = [h_id]
        for m in self.modalities:
            f = self.mlp[m](data.features[m])
            h.append(self.branch(data.adj, self.preference[m], ((e2 + f.pow(2)) / 2 + 1e-8).sqrt()))
        user = torch.cat([hm[: self.n_users] for hm in h], dim=1)
        item = torch.cat([hm[self.n_users :] for hm in h], dim=1)
        if self.item_layers > 0:
            hop = item
            for _ in range(self.item_layers):
                hop = self.item_graph(hop)
            item = item + hop
        if self.user_graph is not None:
            user = user + self.user_graph(user)
        return Embeddings(user, item)

    def adaptive_bpr(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """−mean over rows and negatives of ln σ(Σ_m w_m (s^m_+ − s^m_−)),
        w = 1 − softmax_m(s^m_+ − s^m_−) without gradient."""
        n_blocks = emb.user.shape[1] // self.dim
        u = emb.user[batch.users].view(-1, 1, n_blocks, self.dim)  # [B, 1, M, d]
        pos = emb.item[batch.pos].view(-1, 1, n_blocks, self.dim)
        neg = emb.item[batch.neg].view(*batch.neg.shape, n_blocks, self.dim)  # [B, N, M, d]
        diff = (u * pos).sum(-1) - (u * neg).sum(-1)  # [B, N, M]
        weight = 1.0 - torch.softmax(diff.detach(), dim=-1)
        return -full_mean(F.logsigmoid((weight * diff).sum(-1)))

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``bpr``: the adaptive BPR (weight 1); ``reg``: Σ_m mean((p^m of the batch's
        users)²) over the feature modalities, weight λ·ln 2."""
        terms = {"bpr": Term(self.adaptive_bpr(emb, batch), 1.0)}
        if self.reg_weight > 0:
            reg = sum(full_mean(self.preference[m][batch.users].pow(2)) for m in self.modalities)
            terms["reg"] = Term(reg, self.reg_weight * LN2)
        return terms
