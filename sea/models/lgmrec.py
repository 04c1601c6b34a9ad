"""LGMRec (Guo, Li, Li, Wang, Shi and Ruan, "LGMRec: Local and Global Graph Learning for
Multimodal Recommendation", AAAI 2024), in MMRec's version, optionally with SEA's
separation.

Three parts, summed into one vector per user and item (score = dot product):

1. *Collaborative graph embedding*: id embeddings of users and items through a LightGCN over
   the user–item graph (mean of layers 0…L), or the id embeddings alone (``cf_model: mf``).
2. *Modality graph embedding*, per modality m: items' features projected to d (x_i·W_m,
   no bias), users' the mean of their training items' projections; both take
   ``mm_layers`` hops over the normalised user–item graph (the last hop is kept), and each
   row is L2-normalised. The modalities' vectors are summed.
3. *Global hypergraph embedding*, per modality: ``hyper_num`` learnable hyperedges; an
   item's logits over them are x_i·V_m, a user's the sum of its training items' logits
   (R·X_m·V_m, R the binary interaction matrix). Both are turned into soft assignments
   H_i, H_u by a Gumbel-softmax at temperature τ in training (a softmax at τ, no noise,
   in evaluation), and ``keep_rate`` dropout is applied to them in training. The items'
   collaborative vectors E_i take ``hyper_layers`` rounds of E_i ← H_i·(H_iᵀ·E_i), users
   get H_u·(H_iᵀ·E_i) of the last round. The modalities' results are summed, normalised
   per row and added with weight ``alpha``.

Loss: the trainer's ranking loss (BPR) + ``cl_weight``·(hypergraph contrastive term:
InfoNCE at τ from the first modality's hypergraph vectors to the second's, the batch's
users against all users plus the batch's positive items against all items, cosine
similarities, *summed* over the batch's rows as in MMRec) + ``reg_weight``·(MMRec's
embedding L2 of the batch's final user, positive and negative vectors,
:func:`~sea.losses.embedding_l2`).

``separation: sea`` ("LGMRec+SEA"): each modality's feature is split into generic and
unique parts by :class:`~sea.models.separation.Separation` before W_m and V_m, and the
CLUB and Solosim terms are added (the :class:`~sea.models.separation.Separable` mixin).

Differences from MMRec's ``lgmrec.py`` (besides the separation):

- Evaluation is deterministic: MMRec draws Gumbel noise in evaluation too (its forward pass
  does not check the mode), so its validation and test scores are random; here evaluation
  uses the noise-free softmax at τ.
- τ is a param (``temperature``); MMRec fixes it at 0.2 for both the Gumbel-softmax and
  the contrastive term. Its ``feat_embed_dim`` is ``embedding_dim`` here (MMRec adds the
  two parts, so they must be equal there too).
- With one modality MMRec keeps only the collaborative part (and then fails on an undefined
  name); here that modality's local and global parts are kept, and the contrastive term,
  which needs two modalities, must be off (``cl_weight: 0``).
- The contrastive term is computed as logsumexp − positive logit (the same value as
  MMRec's −log(exp(pos)/Σexp), without overflow); the modalities' products are batched
  (one feature product per modality for W_m and V_m together, one sparse product of R
  for all of them, one propagation for all modalities): the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.errors import ConfigError
from sea.losses import ClubConfig, LossConfig, embedding_l2
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, spmm
from sea.models.propagation import propagate
from sea.models.separation import Separable, Separation, check_separation_params, separation_settings
from sea.ops import full_sum

CF_MODELS = ("lightgcn", "mf")


@dataclass
class LGMRecConfig(Section):
    """params.yaml [lgmrec]. Defaults: MMRec's LGMRec.yaml (its Baby values)."""

    embedding_dim: int = 64  # id embeddings and the modality projections W_m (MMRec: embedding_size = feat_embed_dim)
    cf_model: str = "lightgcn"  # lightgcn | mf: the collaborative part propagated or not
    ui_layers: int = 2  # LightGCN layers of the collaborative part (n_ui_layers)
    mm_layers: int = 2  # hops of the modality part over the user–item graph (n_mm_layers)
    hyper_layers: int = 1  # hypergraph propagation rounds (n_hyper_layer)
    hyper_num: int = 4  # learnable hyperedges per modality
    keep_rate: float = 0.5  # 1 − dropout on the hyperedge assignments (training only)
    alpha: float = 0.3  # weight of the normalised global (hypergraph) part
    cl_weight: float = 1e-4  # weight of the hypergraph contrastive term (a sum over the batch's rows)
    reg_weight: float = 1e-6  # weight of the L2 penalty on the batch's final vectors
    temperature: float = 0.2  # τ of the Gumbel-softmax and of the contrastive term (MMRec: fixed 0.2)
    separation: str = "none"  # none | sea: SEA's split of each modality before W_m and V_m, + CLUB/Solosim
    generic_fraction: float = 0.5  # separation: sea only: share of each split that is generic
    head_dim: int = 32  # separation: sea only: width of the CLUB projections and Solosim heads

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require_choice(self.cf_model, CF_MODELS, section, "cf_model")
        require(self.ui_layers >= 0, section, "ui_layers must be >= 0")
        require(self.mm_layers >= 0, section, "mm_layers must be >= 0")
        require(self.hyper_layers >= 1, section, "hyper_layers must be >= 1")
        require(self.hyper_num >= 1, section, "hyper_num must be >= 1")
        require(0.0 < self.keep_rate <= 1.0, section, "keep_rate must be in (0, 1]")
        require(self.alpha >= 0, section, "alpha must be >= 0")
        require(self.cl_weight >= 0, section, "cl_weight must be >= 0")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")
        require(self.temperature > 0, section, "temperature must be > 0")
        check_separation_params(section, self.separation, self.generic_fraction, self.head_dim)


def hypergraph_contrast(
    anchor: torch.Tensor, candidates: torch.Tensor, rows: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Σ_b −log( exp(cos(a_b, c_{r_b})/τ) / Σ_c exp(cos(a_b, c)/τ) ), c over all ``candidates``
    and r_b = ``rows[b]`` the row of b's positive (MMRec's ``ssl_triple_loss``), as a
    cross-entropy per row (one fused pass over the [B, n] logits and one back).

    Args:
        anchor: ``[B, d]``; candidates: ``[n, d]``; rows: ``[B]`` indices into ``candidates``.
    """
    logits = (F.normalize(anchor, dim=1) / temperature) @ F.normalize(candidates, dim=1).T
    return full_sum(F.cross_entropy(logits, rows, reduction="none"))


@register
class LGMRec(Separable, Recommender):
    r"""LGMRec ("LGMRec: Local and Global Graph Learning for Multimodal Recommendation",
    Guo, Li, Li, Wang, Shi and Ruan, AAAI 2024).

    .. math::
        \mathbf{E}^{c} = \mathrm{LightGCN}(\mathbf{E}^{id}), \qquad
        \mathbf{E}^{m} = \hat{A}^{L_m} \begin{bmatrix} D_u^{-1} R X_m W_m \\ X_m W_m \end{bmatrix},

        H_i^m = \mathrm{GumbelSoftmax}_\tau(X_m V_m), \quad
        H_u^m = \mathrm{GumbelSoftmax}_\tau(R X_m V_m), \quad
        \mathbf{G}^m = \begin{bmatrix} H_u^m \\ H_i^m \end{bmatrix} {H_i^m}^{\top} \mathbf{E}^{c}_{items}
        \;(\text{repeated } L_h \text{ times on the items}),

        \mathbf{E} = \mathbf{E}^{c} + \sum_m \mathrm{norm}(\mathbf{E}^{m})
        + \alpha\, \mathrm{norm}\Big(\sum_m \mathbf{G}^m\Big)

    (R: binary user–item interactions, D_u: user degrees, Â: the normalised user–item
    graph, norm: per-row L2 normalisation; H dropped out with rate 1 − ``keep_rate`` in
    training, and a plain softmax at τ in evaluation). Scores are ⟨e_u, e_i⟩.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (the contrastive term goes from the
            first modality to the second).
        interactions: the binary training interactions R, ``[n_users, n_items]`` (sparse).
        embedding_dim: width of every vector (64).
        cf_model: ``lightgcn`` (the id embeddings propagated) or ``mf`` (not).
        ui_layers: LightGCN layers of the collaborative part (2).
        mm_layers: hops of the modality part (2).
        hyper_layers: hypergraph rounds (1).
        hyper_num: hyperedges per modality (4).
        keep_rate: 1 − dropout rate on the hyperedge assignments (0.5).
        alpha: weight of the global part (0.3).
        cl_weight: weight of the hypergraph contrastive term (1e-4; 0 skips it).
        reg_weight: weight of the L2 penalty on the batch's final vectors (1e-6; 0 skips it).
        temperature: τ (0.2).
        separation: keyword arguments of :class:`Separation` (without ``feature_dims``)
            for LGMRec+SEA, or None for plain LGMRec.
    """

    name = "lgmrec"
    Config = LGMRecConfig
    uses_features = True
    #: The grid ``tune.spaces.lgmrec`` defaults to (docs/tuning.md).
    search_space = {"hyper_num": [4, 64], "keep_rate": [0.2, 0.5], "alpha": [0.2, 0.3, 0.6]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        interactions: torch.Tensor,
        *,
        embedding_dim: int = 64,
        cf_model: str = "lightgcn",
        ui_layers: int = 2,
        mm_layers: int = 2,
        hyper_layers: int = 1,
        hyper_num: int = 4,
        keep_rate: float = 0.5,
        alpha: float = 0.3,
        cl_weight: float = 1e-4,
        reg_weight: float = 1e-6,
        temperature: float = 0.2,
        separation: dict[str, Any] | None = None,
    ):
        super().__init__()
        if cl_weight > 0 and len(feature_dims) < 2:
            raise ValueError("the hypergraph contrastive term needs two modalities (cl_weight > 0)")
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.embedding_dim, self.hyper_num = embedding_dim, hyper_num
        self.ui_layers = ui_layers if cf_model == "lightgcn" else 0
        self.mm_layers, self.hyper_layers = mm_layers, hyper_layers
        self.alpha, self.cl_weight, self.reg_weight, self.temperature = alpha, cl_weight, reg_weight, temperature
        self.user_emb = nn.Embedding(n_users, embedding_dim)
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        # W_m [d_m, d] and V_m [d_m, hyper_num], Xavier-uniform as MMRec's item_*_trs and *_hyper.
        self.projections = nn.ParameterDict()
        self.hyperedges = nn.ParameterDict()
        for m, d in feature_dims.items():
            self.projections[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, embedding_dim)))
            self.hyperedges[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, hyper_num)))
        self.dropout = nn.Dropout(1.0 - keep_rate)
        self.interactions = FrozenGraph(interactions)  # R, with Rᵀ kept for the backward pass
        degree = interactions.to_sparse_csr().crow_indices().diff().float().unsqueeze(1)  # items per user
        self.register_buffer("inv_degree", torch.where(degree > 0, 1.0 / degree.clamp(min=1), 0.0), persistent=False)
        # Created last, so that switching it on leaves the initialisation above unchanged.
        self.separation = Separation(feature_dims, **separation) if separation is not None else None

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: LGMRecConfig,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> LGMRec:
        modalities = list(modalities or data.features)
        if cfg.cl_weight > 0 and len(modalities) < 2:
            raise ConfigError(
                "params.yaml [lgmrec]: cl_weight > 0 needs two modalities in model.modalities "
                f"(got {modalities}); set cl_weight: 0 for one"
            )
        edges = torch.unique(torch.stack([data.train_users, data.train_items]), dim=1).cpu()
        r = torch.sparse_coo_tensor(edges, torch.ones(edges.shape[1]), (data.n_users, data.n_items))
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            r.coalesce().to_sparse_csr().to(data.device),
            embedding_dim=cfg.embedding_dim,
            cf_model=cfg.cf_model,
            ui_layers=cfg.ui_layers,
            mm_layers=cfg.mm_layers,
            hyper_layers=cfg.hyper_layers,
            hyper_num=cfg.hyper_num,
            keep_rate=cfg.keep_rate,
            alpha=cfg.alpha,
            cl_weight=cfg.cl_weight,
            reg_weight=cfg.reg_weight,
            temperature=cfg.temperature,
            separation=separation_settings(cfg, loss, club),
        )

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft hyperedge assignments: Gumbel-softmax at τ in training (noise from torch's
        seeded generator), softmax at τ in evaluation."""
        if self.training:
            return F.gumbel_softmax(logits, tau=self.temperature, hard=False, dim=1)
        return torch.softmax(logits / self.temperature, dim=1)

    def hypergraph(
        self, item_assign: torch.Tensor, user_assign: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) after ``hyper_layers`` rounds of message passing through the
        hyperedges (``items``: the items' collaborative vectors)."""
        for _ in range(self.hyper_layers):
            hyperedges = item_assign.T @ items  # [hyper_num, d]
            items = item_assign @ hyperedges
        return user_assign @ hyperedges, items

    def forward(self, data: GraphData) -> Embeddings:
        """Every user's and item's vector (collaborative + modality + α·global);
        ``extras["hyper"]`` holds each modality's hypergraph (user, item) vectors for the
        contrastive term."""
        d, h, n_users = self.embedding_dim, self.hyper_num, self.n_users
        content, extras = self.item_features(data.features)
        # Per modality, x_i·[W_m | V_m] in one product, then R· of all modalities at once.
        item_parts = [
            content.project(m, torch.cat([self.projections[m], self.hyperedges[m]], 1).T) for m in self.modalities
        ]
        user_parts = self.interactions(torch.cat(item_parts, 1)).split(d + h, dim=1)
        local_users, local_items, assignments = [], [], []
        for item_part, user_part in zip(item_parts, user_parts):
            local_items.append(item_part[:, :d])
            local_users.append(user_part[:, :d] * self.inv_degree)  # mean of the user's items
            assignments.append((self.assign(item_part[:, d:]), self.assign(user_part[:, d:])))

        collaborative = propagate(
            data.adj, torch.cat([self.user_emb.weight, self.item_emb.weight]), self.ui_layers, mean=True
        )

        local = torch.cat([torch.cat(local_users, 1), torch.cat(local_items, 1)])  # [U + I, M·d]
        for _ in range(self.mm_layers):  # the last hop is kept (no layer mean)
            local = spmm(data.adj, local)
        modal = sum(F.normalize(part, dim=1) for part in local.split(d, dim=1))

        hyper, global_ = {}, 0.0
        for m, (item_assign, user_assign) in zip(self.modalities, assignments):
            users, items = self.hypergraph(
                self.dropout(item_assign), self.dropout(user_assign), collaborative[n_users:]
            )
            hyper[m] = (users, items)
            global_ = global_ + torch.cat([users, items])
        out = collaborative + modal + self.alpha * F.normalize(global_, dim=1)
        return Embeddings(out[:n_users], out[n_users:], {"hyper": hyper} | extras)

    def contrastive_loss(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """The hypergraph contrastive term: the batch's users (first modality → second,
        against all users) plus the batch's positive items (against all items)."""
        (u1, i1), (u2, i2) = (emb.extras["hyper"][m] for m in self.modalities[:2])
        return hypergraph_contrast(u1[batch.users], u2, batch.users, self.temperature) + hypergraph_contrast(
            i1[batch.pos], i2, batch.pos, self.temperature
        )

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``hcl`` (weight ``cl_weight``), ``reg`` (weight ``reg_weight``); with the
        separation, ``club`` and ``solosim``."""
        terms = {}
        if self.cl_weight > 0:
            terms["hcl"] = Term(self.contrastive_loss(emb, batch), self.cl_weight)
        if self.reg_weight > 0:
            reg = embedding_l2((emb.user, batch.users), (emb.item, batch.pos), (emb.item, batch.neg))
            terms["reg"] = Term(reg, self.reg_weight)
        return terms | self.separation_losses(emb, batch)
