"""PGL (Yu, Tan, Lu and Bao, "Mind Individual Information! Principal Graph Learning for
Multimedia Recommendation", AAAI 2025), after the authors' code (github.com/demonph10/PGL,
also MMRec's ``src/models/pgl.py``), a baseline of SEA.md §3.

Items have no id embedding: an item's layer-0 vector is the concatenation, over the
modalities, of its L2-normalised projected feature n(W_m·x_i^m + b_m) (``embedding_dim``
each); a user's is the concatenation of one learnt id vector per modality. Two graphs:

1. *Principal graph learning* over the user–item graph: a LightGCN (no weights, mean of
   layers 0…L) whose graph differs between training and inference. Training propagates
   over a *principal subgraph* F(Â); evaluation over the whole normalised training graph Â.
   Two extraction operators (``mode``):

   - ``local`` (the default; the published Baby row): every epoch
     (:meth:`PGL.on_epoch_start`) ⌊``keep_ratio``·E⌋ of the E training edges are drawn
     without replacement with probability ∝ 1/√(d_u·d_i) (low-degree edges, which carry
     the individual information, survive more often) and re-normalised;
   - ``global``: a low-rank reconstruction of Â from its leading singular triplets,
     sparsified (entries below ``svd_threshold`` in absolute value dropped), built once.
     The user–item block B of Â (Â = [[0, B], [Bᵀ, 0]]) has singular triplets (σ_j, p_j,
     q_j); Â's are (σ_j, [p_j; ±q_j]/√2), each σ_j twice. The authors' code takes Â's 64
     leading values s_0 ≥ … ≥ s_63 and rebuilds Σ_{k<16} s_k·s_{48+k}·u_k v_kᵀ (the top
     quarter, each weighted by its partner in the bottom quarter); in B's terms that is
     R = Σ_{j<m} σ_j·σ_{r−m+j}·p_j q_jᵀ with r = ``svd_rank`` = 32, m = ``svd_components``
     = 8, and F(Â) = [[0, R], [Rᵀ, 0]] after the sparsification. R is computed in blocks of
     rows and never held dense.

2. *Latent graph learning* over a frozen item–item graph S (FREEDOM's: cosine top-k
   neighbours per modality, symmetric-normalised, w·image + (1 − w)·text): the layer-0 item
   vectors take ``item_layers`` hops, h = Sᴷ·e_item⁽⁰⁾.

Item vector = LightGCN item vector + h; user vector = LightGCN user vector; score = dot
product. Besides the ranking loss, λ·½(InfoNCE(d(u), d'(u)) + InfoNCE(d(i⁺), d'(i⁺)))
over the batch's user and positive-item vectors, where d, d' are two independent dropout
masks (rate ``dropout``) and InfoNCE is :func:`~sea.losses.solosim_loss` (cosine /
``cl_temperature``, in-batch negatives); λ = ``reg_weight``.

Differences from the authors' code:

- The global subgraph comes from :func:`torch.svd_lowrank` (randomized, with a fixed
  seed, oversampled, power iterations) of the sparse block B, not from SVDLIBC's exact
  ``sparsesvd`` of Â; the pairs of Â's singular values are exact here, only approximate
  there. It is built once, as in their code (it is deterministic: nothing to re-draw).
- Their kNN lists count each item as its own nearest neighbour; here they do not (the
  item–item graph is FREEDOM's and SEA's).
- ``tune_features: false`` keeps the raw feature tables fixed (their code fine-tunes them,
  as does the default here).
- Their per-dataset ``reg_weight`` and ``dropout`` come from their logs (Baby: 0.05 and
  0.2); MMRec's yaml lists ``reg_weight: [0]``, which switches the contrastive term off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.losses import solosim_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.freedom import FREEDOM
from sea.models.graphs import FrozenGraph, item_item_graph, user_item_adjacency
from sea.models.propagation import propagate

MODES = ("local", "global")
#: Extra columns of the randomized SVD beyond the triplets kept, and its power iterations.
SVD_OVERSAMPLE, SVD_NITER = 32, 20
#: Rows of the reconstruction R computed at once (a [rows, n_items] block).
RECONSTRUCTION_ROWS = 2048


@dataclass
class PGLConfig(Section):
    """``pgl:`` in params.yaml (defaults: the authors' Baby run, local mode)."""

    embedding_dim: int = 64  # per modality: user id vectors and item feature projections (MMRec: 64 and 64)
    ui_layers: int = 2  # LightGCN layers over the user-item graph (n_ui_layers)
    item_layers: int = 1  # hops over the frozen item-item graph (n_mm_layers)
    knn_k: int = 10  # item-item graph: top-k cosine neighbours per modality
    image_knn_weight: float = 0.1  # item-item graph = w * image kNN + (1 - w) * text kNN (mm_image_weight)
    mode: str = "local"  # principal subgraph: local (edge sampling each epoch) | global (truncated SVD, once)
    keep_ratio: float = 0.3  # local: share of the training edges kept each epoch (their code: 0.3, fixed)
    svd_rank: int = 32  # global: singular triplets of the user-item block computed (their 64 of the whole graph)
    svd_components: int = 8  # global: leading triplets in the reconstruction (their 16 of the whole graph)
    svd_threshold: float = 1e-3  # global: reconstructed entries below this (absolute) are dropped
    reg_weight: float = 0.05  # lambda of the contrastive term (their Baby log: 0.05; MMRec's yaml: 0)
    dropout: float = 0.2  # dropout rate of the contrastive term's two views
    cl_temperature: float = 0.2  # InfoNCE temperature (their code: 0.2, fixed)
    tune_features: bool = True  # fine-tune the raw feature tables (as their code) or keep them fixed

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require_choice(self.mode, MODES, section, "mode")
        require(0.0 < self.keep_ratio <= 1.0, section, "keep_ratio must be in (0, 1]")
        require(self.svd_rank >= 1, section, "svd_rank must be >= 1")
        require(1 <= self.svd_components <= self.svd_rank, section, "svd_components must be in [1, svd_rank]")
        require(self.svd_threshold >= 0, section, "svd_threshold must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.cl_temperature > 0, section, "cl_temperature must be > 0")


def weighted_draw(weight: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``keep`` entries drawn without replacement with probability ∝ ``weight``
    (the law of ``torch.multinomial(weight, keep)``), from ``generator`` only: the
    ``keep`` largest log(U)/w, U uniform (Efraimidis–Spirakis), in increasing order."""
    u = torch.rand(len(weight), generator=generator, device=generator.device).to(weight.device)
    return (u.log() / weight).topk(keep).indices.sort().values


def principal_reconstruction(
    block: torch.Tensor, rank: int, components: int, threshold: float, seed: int = 0
) -> torch.Tensor:
    """The global-aware principal subgraph of a bipartite graph, from the user–item block
    ``block`` = B (``[U, I]``, sparse) of its normalised adjacency: R = Σ_{j<m}
    σ_j·σ_{r−m+j}·p_j q_jᵀ (r = ``rank``, m = ``components``), entries with
    |R_ui| < ``threshold`` dropped, returned as the symmetric ``[U + I, U + I]`` CSR matrix
    [[0, R], [Rᵀ, 0]].

    The singular triplets come from :func:`torch.svd_lowrank` on the CPU, its random start
    drawn from a generator seeded with ``seed`` (the global one is left untouched); R is
    computed ``RECONSTRUCTION_ROWS`` rows at a time and only its kept entries are stored.
    """
    n_users, n_items = block.shape
    rank = min(rank, n_users, n_items)
    components = min(components, rank)
    q = min(rank + SVD_OVERSAMPLE, n_users, n_items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        p, sigma, qv = torch.svd_lowrank(block.cpu().float(), q=q, niter=SVD_NITER)
    weight = sigma[:components] * sigma[rank - components : rank]
    left, right = p[:, :components] * weight, qv[:, :components]
    rows, cols, vals = [], [], []
    for start in range(0, n_users, RECONSTRUCTION_ROWS):
        chunk = left[start : start + RECONSTRUCTION_ROWS] @ right.T  # [rows, n_items]
        r, c = (chunk.abs() >= threshold).nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        vals.append(chunk[r, c])
    r, c, v = torch.cat(rows), torch.cat(cols) + n_users, torch.cat(vals)
    n = n_users + n_items
    coo = torch.sparse_coo_tensor(torch.stack([torch.cat([r, c]), torch.cat([c, r])]), torch.cat([v, v]), (n, n))
    return coo.coalesce().to_sparse_csr()


@register
class PGL(Recommender):
    r"""PGL recommender (Principal Graph Learning; Yu, Tan, Lu and Bao, AAAI 2025).

    .. math::
        \mathbf{e}^{(0)}_u = \Vert_m \mathbf{w}^m_u, \qquad
        \mathbf{e}^{(0)}_i = \Vert_m \frac{W_m x^m_i + b_m}{\lVert W_m x^m_i + b_m \rVert},
        \qquad
        [\mathbf{e}_u; \mathbf{e}_i] = \frac{1}{L+1}\sum_{l=0}^{L} G^l\,\mathbf{e}^{(0)}

    with G = F(Â) (the principal subgraph) in training and G = Â in evaluation; the item
    vector is :math:`\mathbf{e}_i + (S^K \mathbf{e}^{(0)}_{item})_i` (S the frozen kNN
    item–item graph) and the score :math:`\mathbf{e}_u^\top \hat{\mathbf{e}}_i`. The
    contrastive term is λ·½(InfoNCE(d(e_u), d'(e_u)) + InfoNCE(d(ê_i⁺), d'(ê_i⁺))) on the
    batch (d, d': independent dropout masks).

    Args:
        n_users, n_items: graph sizes.
        features: modality → raw features ``[n_items, d_m]`` (the initial tables when
            ``tune_features``, else the fixed inputs; in this order in the vectors).
        item_graph: the frozen, normalised item–item graph S ``[n_items, n_items]`` (sparse).
        train_users, train_items: the distinct training (user, item) edges.
        embedding_dim: width per modality (64).
        ui_layers: LightGCN layers L (2).
        item_layers: hops K over S (1).
        mode: ``local`` (edge sampling each epoch) or ``global`` (truncated SVD, once).
        keep_ratio: local: share of the edges kept per epoch (0.3).
        principal: global: the principal subgraph F(Â) (:func:`principal_reconstruction`).
        reg_weight: λ, the weight of the contrastive term (0.05; 0 drops it).
        dropout: dropout rate of its two views (0.2).
        cl_temperature: its InfoNCE temperature (0.2).
        tune_features: fine-tune the feature tables (True) or keep them fixed.
    """

    name = "pgl"
    Config = PGLConfig
    uses_features = True
    #: The grid ``tune.spaces.pgl`` defaults to (docs/tuning.md).
    search_space = {"dropout": [0.05, 0.1, 0.2], "reg_weight": [0.05, 0.1, 0.5]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        features: dict[str, torch.Tensor],
        item_graph: torch.Tensor,
        train_users: torch.Tensor,
        train_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        ui_layers: int = 2,
        item_layers: int = 1,
        mode: str = "local",
        keep_ratio: float = 0.3,
        principal: torch.Tensor | None = None,
        reg_weight: float = 0.05,
        dropout: float = 0.2,
        cl_temperature: float = 0.2,
        tune_features: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "global" and principal is None:
            raise ValueError("mode 'global' needs its principal subgraph")
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(features)
        self.ui_layers, self.item_layers, self.mode, self.keep_ratio = ui_layers, item_layers, mode, keep_ratio
        self.reg_weight, self.dropout, self.cl_temperature = reg_weight, dropout, cl_temperature
        self.user = nn.ModuleDict({m: nn.Embedding(n_users, embedding_dim) for m in self.modalities})
        for table in self.user.values():
            nn.init.xavier_uniform_(table.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], embedding_dim) for m, x in features.items()})
        self.tables = (
            nn.ParameterDict({m: nn.Parameter(x.detach().clone().float()) for m, x in features.items()})
            if tune_features
            else None
        )
        self.item_graph = FrozenGraph(item_graph)
        self.register_buffer("edge_users", train_users, persistent=False)
        self.register_buffer("edge_items", train_items, persistent=False)
        self.register_buffer(
            "edge_weight", FREEDOM.pruning_weights(train_users, train_items, n_users, n_items), persistent=False
        )
        # The training graph: this epoch's draw (local, on_epoch_start) or the fixed one (global).
        self.principal = FrozenGraph(principal, symmetric=True) if principal is not None else None

    @classmethod
    def build(cls, data: GraphData, cfg: PGLConfig, modalities: Sequence[str] | None = None, *unused) -> PGL:
        modalities = list(modalities or data.features)
        features = {m: data.features[m] for m in modalities}
        graph = item_item_graph({m: x.cpu() for m, x in features.items()}, cfg.knn_k, cfg.image_knn_weight)
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1)
        principal = None
        if cfg.mode == "global":
            block = data.adj.to_sparse_coo().cpu().index_select(0, torch.arange(data.n_users))
            block = block.index_select(1, torch.arange(data.n_users, data.n_users + data.n_items))
            principal = principal_reconstruction(block, cfg.svd_rank, cfg.svd_components, cfg.svd_threshold)
            principal = principal.to(data.device)
        return cls(
            data.n_users,
            data.n_items,
            features,
            graph.to(data.device),
            edges[0],
            edges[1],
            embedding_dim=cfg.embedding_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            mode=cfg.mode,
            keep_ratio=cfg.keep_ratio,
            principal=principal,
            reg_weight=cfg.reg_weight,
            dropout=cfg.dropout,
            cl_temperature=cfg.cl_temperature,
            tune_features=cfg.tune_features,
        )

    def kept_edges(self, generator: torch.Generator) -> torch.Tensor:
        """Indices (increasing) of the ⌊keep_ratio·E⌋ edges of this epoch's local principal
        subgraph, drawn with probability ∝ 1/√(d_u·d_i) without replacement."""
        keep = max(1, int(self.keep_ratio * len(self.edge_weight)))
        return weighted_draw(self.edge_weight, keep, generator)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """``local``: draw this epoch's principal subgraph from ``generator`` and normalise it."""
        if self.mode != "local":
            return
        kept = self.kept_edges(generator)
        users, items = self.edge_users[kept].cpu().numpy(), self.edge_items[kept].cpu().numpy()
        adj = user_item_adjacency(users, items, self.n_users, self.n_items)
        self.principal = FrozenGraph(adj, symmetric=True).to(self.edge_weight.device)

    def item_inputs(self, data: GraphData) -> torch.Tensor:
        """The layer-0 item vectors: each modality's normalised projection, concatenated."""
        tables = self.tables if self.tables is not None else data.features
        return torch.cat([F.normalize(self.projections[m](tables[m]), dim=1) for m in self.modalities], dim=1)

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors; the LightGCN runs over the principal subgraph in training
        mode and over ``data.adj`` in eval mode."""
        if not self.training:
            adj = data.adj
        elif self.principal is None:
            raise RuntimeError("PGL draws its principal subgraph in on_epoch_start(): call it before training")
        else:
            adj = self.principal.matrix
        items = self.item_inputs(data)
        users = torch.cat([self.user[m].weight for m in self.modalities], dim=1)
        out = propagate(adj, torch.cat([users, items]), self.ui_layers, mean=True)
        latent = items
        for _ in range(self.item_layers):
            latent = self.item_graph(latent)
        return Embeddings(out[: self.n_users], out[self.n_users :] + latent)

    def contrastive(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """½(InfoNCE of two dropout views of the batch's user vectors + the same for its
        positive items' vectors); the masks come from torch's global generator."""
        user, item = emb.user[batch.users], emb.item[batch.pos]
        p, t = self.dropout, self.cl_temperature
        user_views = F.dropout(user, p), F.dropout(user, p)
        item_views = F.dropout(item, p), F.dropout(item, p)
        return (solosim_loss(*user_views, t) + solosim_loss(*item_views, t)) / 2

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``cl``: the contrastive term (weight λ = ``reg_weight``)."""
        if self.reg_weight == 0:
            return {}
        return {"cl": Term(self.contrastive(emb, batch), self.reg_weight)}
