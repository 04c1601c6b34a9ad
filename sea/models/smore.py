"""SMORE (Ong & Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional
Network for Multimodal Recommendation", WSDM 2025), optionally with SEA's separation.

SMORE is not part of MMRec; it is written from the paper and the authors' public code
(github.com/kennethorq/SMORE, built on MMRec), read, not copied. In short:

1. *Spectrum modality fusion.* Each modality's feature is projected to d
   (``nn.Linear`` with bias), taken to the frequency domain along the embedding dimension
   (real FFT, orthonormal), multiplied by a learnable complex filter per modality (the
   denoised uni-modal spectra) and, for the fusion, the product of all modalities' spectra
   is multiplied by a fusion filter; inverse FFTs bring the three back.
2. *Item–item views.* Per modality a frozen kNN graph from the raw features (top-k
   cosine, the item itself included, weighted by the cosine, symmetric-normalised by row
   degrees), and a fusion graph, the entry-wise maximum of the modality graphs. Each view
   starts from the item id embedding gated by its spectrum (e_i ⊙ σ(W·x̃ + b)), takes
   ``item_layers`` hops over its graph, and gives users the normalised sum of their items'
   vectors (R̂·h, R̂ the user–item block of the normalised adjacency).
3. *Behaviour view.* A LightGCN over the user–item graph (``ui_layers``, mean of layers).
4. *Modality-aware preference.* Each modality view is weighted per dimension by
   softmax(MLP_m(fusion view)); the modality views and the fusion view are gated by
   σ(W·behaviour + b) (with dropout in training) and averaged into the side vector.
   Final vector = behaviour + side; score = dot product.

Loss: the trainer's ranking loss (BPR) + ``reg_weight``·½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B on the
final vectors + ``cl_weight``·(InfoNCE(side, behaviour) over the batch's positive items +
the same over its users), cosine / ``temperature``.

Differences from the authors' code (see docs/models/smore.md):

- The raw feature tables stay fixed (the authors fine-tune them as embeddings); only the
  projections learn, as in this package's FREEDOM.
- Negative cosines in a top-k list are clamped to 0 (the authors keep them; with a
  self-loop of weight 1 and k ≤ 40 they are rare, but they could make a degree ≤ 0).
- The kNN graphs are built chunk-wise (no dense [n_items, n_items] similarity is kept).
- The L2 term divides by the batch's size (the authors by the configured batch size, also
  for the last, smaller batch) and averages over the negatives when there are several.
- No learning-rate schedule (the authors decay it by 0.96 every 50 epochs).
- Any non-empty set of modalities works: the fusion spectrum is the product of all of
  them, the fusion graph their entry-wise maximum.

``separation: sea`` ("SMORE+SEA"): each modality's feature is split into generic and
unique parts by :class:`~sea.models.separation.Separation` before its projection, and the
CLUB and Solosim terms are added (the :class:`~sea.models.separation.Separable` mixin).
The kNN graphs stay built from the raw features.
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
from sea.losses import ClubConfig, LossConfig, solosim_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, sym_normalize
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.ops import Pointwise, full_sum

#: Rows of the cosine-similarity matrix computed at once when building a kNN graph.
KNN_CHUNK = 1024
#: The key of the fusion view beside the modalities' names.
FUSION = "fusion"


@dataclass
class SMOREConfig(Section):
    """params.yaml [smore]. Defaults: the authors' best Baby setting (their README)."""

    embedding_dim: int = 64  # d: id embeddings, feature projections, spectra of d // 2 + 1 bins
    ui_layers: int = 4  # LightGCN layers over the user-item graph (n_ui_layers); grid [3, 4]
    item_layers: int = 1  # hops over each item-item graph (n_layers); fixed at 1
    image_knn_k: int = 40  # image kNN graph's k, the item itself included; grid [10, 15, 20, 40]
    text_knn_k: int = 15  # text kNN graph's k, the item itself included; grid [10, 15, 20, 40]
    cl_weight: float = 0.01  # weight of the InfoNCE term (cl_loss); fixed at 0.01
    temperature: float = 0.2  # InfoNCE temperature; fixed at 0.2
    reg_weight: float = 1e-4  # weight of the squared L2 term on the final vectors; grid [1e-5, 1e-4]
    dropout: float = 0.1  # dropout on the preference gates (dropout_rate); grid [0, 0.1]
    separation: str = "none"  # none | sea: SEA's split of each modality before its projection, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.item_layers >= 0, section, "item_layers must be >= 0")
        require(self.image_knn_k >= 1, section, "image_knn_k must be >= 1")
        require(self.text_knn_k >= 1, section, "text_knn_k must be >= 1")
        require(self.cl_weight >= 0, section, "cl_weight must be >= 0")
        require(self.temperature > 0, section, "temperature must be > 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


def weighted_knn_graph(features: torch.Tensor, k: int, chunk: int = KNN_CHUNK) -> torch.Tensor:
    """SMORE's item–item graph as an (n, n) CSR tensor: each item linked to its top-``k``
    items by cosine similarity (itself included, as the most similar), each link weighted
    by that cosine (clamped at 0), then normalised as w_ij / √(d_i·d_j), d_i the sum of
    row i's weights. The similarities are computed ``chunk`` rows at a time."""
    n = features.shape[0]
    k = min(k, n)
    x = F.normalize(features.float(), dim=1)
    values, cols = [], []
    for start in range(0, n, chunk):
        v, c = (x[start : start + chunk] @ x.T).topk(k, dim=1)
        values.append(v)
        cols.append(c)
    vals = torch.cat(values).reshape(-1).clamp_min(0.0)
    cols = torch.cat(cols).reshape(-1)
    rows = torch.arange(n).repeat_interleave(k)
    keep = vals > 0
    return sym_normalize(rows[keep], cols[keep], vals[keep], n)


def max_graph(graphs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The entry-wise maximum of sparse (n, n) matrices over the union of their entries
    (an entry absent from one matrix takes the others' maximum), as CSR."""
    n = graphs[0].shape[0]
    coos = [g.to_sparse_coo().coalesce() for g in graphs]
    index = torch.cat([c.indices() for c in coos], dim=1)
    values = torch.cat([c.values() for c in coos])
    keys, inverse = torch.unique(index[0] * n + index[1], return_inverse=True)
    out = torch.zeros(len(keys), dtype=values.dtype).scatter_reduce(0, inverse, values, "amax", include_self=False)
    return torch.sparse_coo_tensor(torch.stack([keys // n, keys % n]), out, (n, n)).coalesce().to_sparse_csr()


def user_item_block(adj: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """R̂, the user rows × item columns of the normalised adjacency ``adj``, as (U, I) CSR."""
    coo = adj.cpu().to_sparse_coo().coalesce()
    rows, cols = coo.indices()
    keep = (rows < n_users) & (cols >= n_users)
    index = torch.stack([rows[keep], cols[keep] - n_users])
    return torch.sparse_coo_tensor(index, coo.values()[keep], (n_users, n_items)).coalesce().to_sparse_csr()


def gate(dim: int) -> nn.Sequential:
    """σ(W·x + b), d → d."""
    return nn.Sequential(nn.Linear(dim, dim), Pointwise(torch.sigmoid))


def query(dim: int) -> nn.Sequential:
    """The preference module's attention MLP: W₂·tanh(W₁·x + b₁), d → d."""
    return nn.Sequential(nn.Linear(dim, dim), Pointwise(torch.tanh), nn.Linear(dim, dim, bias=False))


@register
class SMORE(Separable, Recommender):
    r"""SMORE ("Spectrum-based Modality Representation Fusion Graph Convolutional Network
    for Multimodal Recommendation", Rongqing Kenneth Ong and Andy W. H. Khong, WSDM 2025).

    With :math:`\mathcal{F}` the real FFT along the embedding dimension (orthonormal), for
    each modality m with feature :math:`x^m_i` and for the fusion f:

    .. math::
        X^m = \mathcal{F}(W_m x^m + b_m), \quad
        \tilde{x}^m = \mathcal{F}^{-1}(X^m \odot K_m), \quad
        \tilde{x}^f = \mathcal{F}^{-1}\big(\textstyle\prod_m X^m \odot K_f\big)

    (:math:`K` learnable complex filters of :math:`d/2 + 1` bins). Item–item views, for
    v ∈ {modalities, f}, over the frozen kNN graph :math:`S_v` (the fusion graph is the
    entry-wise maximum of the modalities'):

    .. math::
        h^v = S_v^{L_i}\,\big(e \odot \sigma(G_v \tilde{x}^v)\big), \qquad
        H^v = [\hat{R} h^v;\ h^v]

    with :math:`e` the item id embeddings and :math:`\hat{R}` the user–item block of the
    normalised adjacency. The behaviour view :math:`B` is a LightGCN over the user–item
    graph (mean of layers :math:`0 … L_{ui}`). The preference module:

    .. math::
        s = \tfrac{1}{M + 1}\Big(\sum_m \delta(\sigma(P_m B)) \odot
            \mathrm{softmax}(Q_m H^f) \odot H^m + \delta(\sigma(P_f B)) \odot H^f\Big),
        \qquad z = B + s

    (softmax over the d dimensions, δ dropout in training). Scores are :math:`z_u \cdot z_i`.
    Extra terms: ``reg`` = ½(‖z_U‖² + ‖z_{I⁺}‖² + mean over negatives ‖z_{I⁻}‖²) / B and
    ``cl`` = InfoNCE(s, B) over the batch's positive items + InfoNCE(s, B) over its users
    (:func:`~sea.losses.solosim_loss`, cosine / τ).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width.
        item_graphs: modality name -> its frozen normalised kNN graph [n_items, n_items]
            (sparse; :func:`weighted_knn_graph`); the fusion graph is built from them.
        user_items: :math:`\hat{R}` [n_users, n_items] (sparse; :func:`user_item_block`).
        embedding_dim: d (64).
        ui_layers: LightGCN layers over the user–item graph (4).
        item_layers: hops over each item–item graph (1).
        cl_weight: weight of the InfoNCE term (0.01; 0 skips it).
        temperature: τ of the InfoNCE term (0.2).
        reg_weight: weight of the L2 term (1e-4; 0 skips it).
        dropout: dropout rate on the preference gates (0.1).
        separation: keyword arguments of :class:`~sea.models.separation.Separation`
            (without ``feature_dims``) for SMORE+SEA, or None for plain SMORE.
    """

    name = "smore"
    Config = SMOREConfig
    uses_features = True
    #: The grid ``tune.spaces.smore`` defaults to (docs/tuning.md).
    search_space = {"ui_layers": [3, 4], "image_knn_k": [10, 20, 40], "dropout": [0.0, 0.1]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        item_graphs: dict[str, torch.Tensor],
        user_items: torch.Tensor,
        *,
        embedding_dim: int = 64,
        ui_layers: int = 4,
        item_layers: int = 1,
        cl_weight: float = 0.01,
        temperature: float = 0.2,
        reg_weight: float = 1e-4,
        dropout: float = 0.1,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        if set(item_graphs) != set(feature_dims) or FUSION in feature_dims:
            raise ValueError(f"one item graph per modality {sorted(feature_dims)} is needed, got {sorted(item_graphs)}")
        self.n_users, self.n_items, self.dim = n_users, n_items, embedding_dim
        self.modalities = list(feature_dims)
        self.views = self.modalities + [FUSION]
        self.ui_layers, self.item_layers = ui_layers, item_layers
        self.cl_weight, self.temperature = cl_weight, temperature
        self.reg_weight, self.dropout = reg_weight, dropout
        # Created in the authors' order: ids, projections, queries, gates, filters.
        self.user = nn.Embedding(n_users, embedding_dim)
        self.item = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in feature_dims.items()})
        self.queries = nn.ModuleDict({m: query(embedding_dim) for m in self.modalities})
        self.item_gates = nn.ModuleDict({v: gate(embedding_dim) for v in self.views})
        self.preference_gates = nn.ModuleDict({v: gate(embedding_dim) for v in self.views})
        # complex filters as (real, imaginary) pairs, one per frequency bin
        self.filters = nn.ParameterDict({v: nn.Parameter(torch.randn(embedding_dim // 2 + 1, 2)) for v in self.views})
        graphs = {m: item_graphs[m] for m in self.modalities}
        graphs[FUSION] = max_graph([g.cpu() for g in graphs.values()]).to(user_items.device)
        self.item_graphs = nn.ModuleDict({v: FrozenGraph(g) for v, g in graphs.items()})
        self.user_items = FrozenGraph(user_items)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: SMOREConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> SMORE:
        modalities = list(modalities or data.features)
        ks = {"image": cfg.image_knn_k, "text": cfg.text_knn_k}
        graphs = {m: weighted_knn_graph(data.features[m].cpu(), ks[m]).to(data.device) for m in modalities}
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            graphs,
            user_item_block(data.adj, data.n_users, data.n_items).to(data.device),
            embedding_dim=cfg.embedding_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            cl_weight=cfg.cl_weight,
            temperature=cfg.temperature,
            reg_weight=cfg.reg_weight,
            dropout=cfg.dropout,
            separation=separation_settings(cfg, loss, club),
        )

    def spectrum(self, projected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The filtered modality vectors and the fused one, ``{view: [n_items, d]}``."""
        for x in projected.values():
            if x.requires_grad:  # the FFT's backward gives a strided gradient: the Linear's bias
                x.register_hook(torch.Tensor.contiguous)  # sums it the same way at any thread count
        spectra = {m: torch.fft.rfft(x, dim=1, norm="ortho") for m, x in projected.items()}
        product = None
        for m in self.modalities:
            product = spectra[m] if product is None else product * spectra[m]
        spectra[FUSION] = product
        return {
            v: torch.fft.irfft(spectra[v] * torch.view_as_complex(self.filters[v]), n=self.dim, dim=1, norm="ortho")
            for v in self.views
        }

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors z = B + s; in training, ``extras`` holds the behaviour view
        B (``behaviour``) and the side vectors s (``side``) for the InfoNCE term."""
        content, extras = self.item_features(data.features)
        filtered = self.spectrum({m: content.apply(m, self.projections[m]) for m in self.modalities})
        behaviour = propagate(data.adj, torch.cat([self.user.weight, self.item.weight]), self.ui_layers, mean=True)
        views = {}
        for v in self.views:
            h = self.item.weight * self.item_gates[v](filtered[v])
            for _ in range(self.item_layers):
                h = self.item_graphs[v](h)
            views[v] = torch.cat([self.user_items(h), h])
        fusion = views[FUSION]
        prefer = {v: F.dropout(self.preference_gates[v](behaviour), self.dropout, self.training) for v in self.views}
        side = prefer[FUSION] * fusion
        for m in self.modalities:
            side = side + prefer[m] * (torch.softmax(self.queries[m](fusion), dim=-1) * views[m])
        side = side / len(self.views)
        final = behaviour + side
        if self.training:
            extras = extras | {"behaviour": behaviour, "side": side}
        return Embeddings(final[: self.n_users], final[self.n_users :], extras)

    def squared_l2(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """½(‖z_U‖² + ‖z_{I⁺}‖² + ‖z_{I⁻}‖² / N) / B over the batch's B rows and N negatives."""
        users, pos, neg = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
        n_neg = batch.neg.shape[1] if batch.neg.dim() == 2 else 1
        total = full_sum(users.square()) + full_sum(pos.square()) + full_sum(neg.square()) / n_neg
        return 0.5 * total / len(batch.users)

    def contrastive(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """InfoNCE(s, B) over the batch's positive items + InfoNCE(s, B) over its users
        (rows as in the batch, repeats included)."""
        side, behaviour = emb.extras["side"], emb.extras["behaviour"]
        items, users = batch.pos + self.n_users, batch.users
        return solosim_loss(side[items], behaviour[items], self.temperature) + solosim_loss(
            side[users], behaviour[users], self.temperature
        )

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg`` (weight ``reg_weight``), ``cl`` (weight ``cl_weight``); with the
        separation, ``club`` and ``solosim``."""
        terms = {}
        if self.reg_weight > 0:
            terms["reg"] = Term(self.squared_l2(emb, batch), self.reg_weight)
        if self.cl_weight > 0:
            terms["cl"] = Term(self.contrastive(emb, batch), self.cl_weight)
        return terms | self.separation_losses(emb, batch)
