"""MMGCN (Wei, Wang, Nie, He, Hong & Chua, "MMGCN: Multi-modal Graph Convolution Network for
Personalized Recommendation of Micro-video", ACM MM 2019), as MMRec runs it.

One graph convolution network per modality m over the user–item training graph. Its user
nodes carry a preference vector p^m_u, its item nodes the item's feature x^m_i (through a
linear projection to ``image_latent_dim`` / ``text_latent_dim`` where that is > 0, as
MMRec does for the image features). The rows are L2-normalised, then each of the
``layers`` layers computes, with an id embedding e (one per user and item, shared by the
modalities):

- aggregation: h = LeakyReLU(mean over the node's neighbours of W_l x_j);
- the node's own part: x̂ = LeakyReLU(V_l x + b) + e;
- combination: x ← LeakyReLU(G_l [h; x̂] + c) (``combination: concat``) or
  LeakyReLU(G_l h + c + x̂) (``element``).

The user and item vectors are the mean (``fusion: mean``) or the sum of the modalities'
last layers; score = dot product. Loss: the trainer's BPR plus λ times MMRec's penalty,
the mean square of the batch's id embeddings (users; and the mean of the positives' and
negatives') plus, per modality, the mean square of all preference vectors.

The neighbour mean is D⁻¹A·(xW) with A the 0/1 pattern of the training graph
(``data.adj``'s non-zeros) and D its degrees: one sparse product (:func:`spmm`) per layer,
never a dense matrix.

Differences from MMRec's ``mmgcn.py`` (the published numbers come from that code):

- **Trained embeddings.** MMRec creates the id embeddings and the preference vectors as
  plain tensors (``xavier_normal_(torch.rand(..., requires_grad=True)).to(device)``), not
  parameters: its optimiser never updates them, they stay at their random initialisation
  and its penalty on them is a constant. Here they are parameters, as in the paper (and in
  MMRec's commented-out line); ``frozen_embeddings: true`` keeps them fixed as MMRec does
  (and then λ changes nothing, as there).
- **Layers.** MMRec's code runs three layers whatever its ``n_layers`` (its yaml's 2 is
  read and unused); here ``layers`` sets them, default 3, what MMRec runs.
- **Combination.** MMRec sets ``concate = 'False'``, a non-empty string, hence true: it
  runs the concatenation; that is the default here, ``element`` the paper's other choice.
- **Penalty.** MMRec penalises the image preference vectors only (``v_gcn.preference``);
  here every modality's (the same with image alone; a constant in MMRec anyway). With N
  negatives per positive, the item part is the mean of the positives' mean square and all
  negatives' (MMRec's, for N = 1).
- **Sizes.** MMRec hard-codes the image projection (256) and none for text; here they are
  ``image_latent_dim`` and ``text_latent_dim`` (0: none), defaults MMRec's.
- **Aggregation.** MMRec's ``aggr_mode`` is ``mean`` (PyG divides the sum by the count;
  here the sum is multiplied by 1/degree, an ulp apart); ``sum`` is offered too.
- MMRec's BPR is −mean ln σ(s⁺ − s⁻), the trainer's for N = 1 (``bpr_loss``). Its unused
  ``batch_size``, ``result`` and ``has_id`` (always true) are left out.
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
from sea.models.graphs import spmm
from sea.ops import full_mean


@dataclass
class MMGCNConfig(Section):
    """params.yaml [mmgcn]. MMRec grid-searches reg_weight and the learning rate."""

    embedding_dim: int = 64  # id embeddings and every layer's output (MMRec's embedding_size)
    layers: int = 3  # graph convolution layers per modality (MMRec's code: 3, whatever its n_layers)
    image_latent_dim: int = 256  # image features projected to this width first; 0: raw (MMRec: 256)
    text_latent_dim: int = 0  # text features projected to this width first; 0: raw (MMRec: raw)
    aggregation: str = "mean"  # mean | sum of the neighbours' messages (MMRec: mean)
    combination: str = "concat"  # concat | element: how a layer combines h and x-hat (MMRec: concat)
    fusion: str = "mean"  # mean | sum of the modalities' vectors (MMRec: mean)
    reg_weight: float = 1e-4  # λ; MMRec grid [0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    frozen_embeddings: bool = False  # true: ids and preferences stay random, as MMRec's code

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.layers >= 1, section, "layers must be >= 1")
        require(self.image_latent_dim >= 0, section, "image_latent_dim must be >= 0 (0: no projection)")
        require(self.text_latent_dim >= 0, section, "text_latent_dim must be >= 0 (0: no projection)")
        require_choice(self.aggregation, ("mean", "sum"), section, "aggregation")
        require_choice(self.combination, ("concat", "element"), section, "combination")
        require_choice(self.fusion, ("mean", "sum"), section, "fusion")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")


def xavier_normal(*shape: int) -> torch.Tensor:
    """A ``shape`` tensor drawn as :func:`torch.nn.init.xavier_normal_` draws it."""
    return nn.init.xavier_normal_(torch.empty(*shape))


class ModalityGCN(nn.Module):
    """One modality's graph convolution network (MMRec's ``GCN``): the user preferences,
    the optional feature projection and, per layer, the aggregation weight W_l, the
    node's own map V_l and the combination G_l.

    Args:
        n_users: users (one preference vector each).
        feature_dim: width of the modality's raw item feature.
        latent_dim: width the feature is projected to first; 0: no projection.
        embedding_dim: d, every layer's output width.
        layers: L.
        combination: ``concat`` or ``element``.
        frozen: the preferences as a fixed buffer rather than a parameter.
    """

    def __init__(
        self,
        n_users: int,
        feature_dim: int,
        latent_dim: int,
        embedding_dim: int,
        layers: int,
        combination: str,
        frozen: bool = False,
    ):
        super().__init__()
        width = latent_dim or feature_dim  # of layer 0
        self.concat = combination == "concat"
        self.projection = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        preference = xavier_normal(n_users, width)
        if frozen:
            self.register_buffer("preference", preference)
        else:
            self.preference = nn.Parameter(preference)
        ins = [width] + [embedding_dim] * (layers - 1)
        # W_l: [in, in], no bias, as MMRec's BaseModel (xavier-normal, as its GCN re-draws it)
        self.aggregate = nn.ParameterList([nn.Parameter(xavier_normal(n, n)) for n in ins])
        self.own = nn.ModuleList([nn.Linear(n, embedding_dim) for n in ins])
        self.combine = nn.ModuleList([nn.Linear(n + embedding_dim if self.concat else n, embedding_dim) for n in ins])
        for lin in self.own:
            nn.init.xavier_normal_(lin.weight)
        # MMRec re-draws the first combination layer's weight only; the others keep nn.Linear's
        nn.init.xavier_normal_(self.combine[0].weight)

    def forward(self, features: torch.Tensor, ids: torch.Tensor, neighbour_mean) -> torch.Tensor:
        """The last layer's vectors, users then items, ``[n_users + n_items, d]``.

        Args:
            features: the items' raw features ``[n_items, feature_dim]``.
            ids: the id embeddings ``[n_users + n_items, d]``.
            neighbour_mean: ``y -> D⁻¹A·y`` (or ``A·y``), the aggregation over the graph.
        """
        content = self.projection(features) if self.projection is not None else features
        x = F.normalize(torch.cat([self.preference, content]), dim=1)
        for w, own, combine in zip(self.aggregate, self.own, self.combine, strict=True):
            h = F.leaky_relu(neighbour_mean(x @ w))
            x_hat = F.leaky_relu(own(x)) + ids
            x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1))) if self.concat else F.leaky_relu(combine(h) + x_hat)
        return x


@register
class MMGCN(Recommender):
    r"""MMGCN ("MMGCN: Multi-modal Graph Convolution Network for Personalized
    Recommendation of Micro-video", Wei, Wang, Nie, He, Hong & Chua, ACM MM 2019).

    Per modality m, layer 0 is :math:`x^{(0)} = \mathrm{norm}([p^m; P_m x^m])` (user
    preferences; item features, projected or not), and layer l + 1 is, with
    :math:`\sigma` = LeakyReLU (slope 0.01), :math:`\mathcal{N}(v)` the neighbours of node v
    in the training graph and :math:`e_v` its id embedding:

    .. math::
        h_v = \sigma\Big(\frac{1}{|\mathcal{N}(v)|} \sum_{j \in \mathcal{N}(v)} W_l^\top x^{(l)}_j\Big),
        \quad \hat{x}_v = \sigma(V_l x^{(l)}_v + b_l) + e_v, \quad
        x^{(l+1)}_v = \sigma\big(G_l [h_v; \hat{x}_v] + c_l\big)

    (``combination: element``: :math:`\sigma(G_l h_v + c_l + \hat{x}_v)`; ``aggregation:
    sum``: the neighbours' sum). The vectors of user u and item i are the mean (or sum)
    over the modalities of :math:`x^{(L)}`; score :math:`\langle u, i \rangle`. Besides the
    trainer's BPR, the term ``reg`` is

    .. math::
        \mathrm{ms}(e_{u_B}) + \tfrac{1}{2}\big(\mathrm{ms}(e_{i^+_B}) + \mathrm{ms}(e_{i^-_B})\big)
        + \sum_m \mathrm{ms}(p^m)

    (ms: the mean square of all elements; the batch's users, positives and negatives, and
    all preference vectors), weighted λ.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width.
        latent_dims: modality name -> projected width (0: no projection).
        embedding_dim: d, the id embeddings' and every layer's width (64).
        layers: L, layers per modality (3).
        aggregation: ``mean`` or ``sum`` of the neighbours' messages.
        combination: ``concat`` or ``element``.
        fusion: ``mean`` or ``sum`` of the modalities.
        reg_weight: λ (1e-4; 0 drops the term).
        frozen_embeddings: keep the id embeddings and preferences at their random draw
            (buffers, not parameters), as MMRec's code does.
    """

    name = "mmgcn"
    Config = MMGCNConfig
    uses_features = True
    #: The grid ``tune.spaces.mmgcn`` defaults to (docs/tuning.md).
    search_space = {"reg_weight": [0.0, 0.0001, 0.01], "train.lr": [0.0005, 0.001, 0.005, 0.01]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        latent_dims: dict[str, int] | None = None,
        *,
        embedding_dim: int = 64,
        layers: int = 3,
        aggregation: str = "mean",
        combination: str = "concat",
        fusion: str = "mean",
        reg_weight: float = 1e-4,
        frozen_embeddings: bool = False,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.aggregation, self.fusion, self.reg_weight = aggregation, fusion, reg_weight
        latent_dims = latent_dims or {}
        self.gcn = nn.ModuleDict(
            {
                m: ModalityGCN(n_users, d, latent_dims.get(m, 0), embedding_dim, layers, combination, frozen_embeddings)
                for m, d in feature_dims.items()
            }
        )
        ids = xavier_normal(n_users + n_items, embedding_dim)  # users, then items, as MMRec's
        if frozen_embeddings:
            self.register_buffer("id_embedding", ids)
        else:
            self.id_embedding = nn.Parameter(ids)

    @classmethod
    def build(cls, data: GraphData, cfg: MMGCNConfig, modalities: Sequence[str] | None = None, *unused) -> MMGCN:
        modalities = list(modalities or data.features)
        latent = {"image": cfg.image_latent_dim, "text": cfg.text_latent_dim}
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            {m: latent.get(m, 0) for m in modalities},
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            aggregation=cfg.aggregation,
            combination=cfg.combination,
            fusion=cfg.fusion,
            reg_weight=cfg.reg_weight,
            frozen_embeddings=cfg.frozen_embeddings,
        )

    def neighbour_aggregation(self, adj: torch.Tensor):
        """``y -> D⁻¹A·y`` (``aggregation: mean``) or ``A·y`` (``sum``), A the 0/1 pattern
        of the normalised adjacency ``adj`` (CSR, symmetric) and D its degrees (an
        isolated node gets 0)."""
        crow, col = adj.crow_indices(), adj.col_indices()
        pattern = torch.sparse_csr_tensor(crow, col, torch.ones_like(adj.values()), adj.shape)
        if self.aggregation == "sum":
            return lambda y: spmm(pattern, y)
        degree = (crow[1:] - crow[:-1]).to(adj.values().dtype)
        inverse = torch.where(degree > 0, 1.0 / degree.clamp(min=1), 0.0).unsqueeze(1)
        return lambda y: spmm(pattern, y) * inverse

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors over ``data.adj`` (the same in training and eval mode)."""
        aggregate = self.neighbour_aggregation(data.adj)
        out = None
        for m in self.modalities:
            x = self.gcn[m](data.features[m], self.id_embedding, aggregate)
            out = x if out is None else out + x
        if self.fusion == "mean":
            out = out / len(self.modalities)
        return Embeddings(user=out[: self.n_users], item=out[self.n_users :])

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: MMRec's mean squares of the batch's id embeddings and of every
        preference vector, weight λ (left out when λ is 0 or nothing it reads learns)."""
        if self.reg_weight == 0 or not isinstance(self.id_embedding, nn.Parameter):
            return {}
        ids = self.id_embedding
        reg = full_mean(ids[batch.users].pow(2)) + 0.5 * (
            full_mean(ids[self.n_users + batch.pos].pow(2)) + full_mean(ids[self.n_users + batch.neg].pow(2))
        )
        for m in self.modalities:
            reg = reg + full_mean(self.gcn[m].preference.pow(2))
        return {"reg": Term(reg, self.reg_weight)}
