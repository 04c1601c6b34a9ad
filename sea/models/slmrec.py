"""SLMRec (Tao, Liu, Xia, Wang, Yang, Huang & Chua, "Self-supervised Learning for Multimedia
Recommendation", IEEE Transactions on Multimedia 2022), in MMRec's version.

One LightGCN per *view* of an item: its id embedding, and each modality's feature
(L2-normalised per row, then a linear map with bias to d). Every view's graph has the same
user id embeddings on the user side. Each view is propagated over the normalised user–item
graph (mean of layers 0…L); the views are concatenated per node and one linear map for users,
another for items (with bias) gives the final vectors. Score = dot product.

Loss (the trainer runs it with ``loss.kind: none``, its ``preferred_loss``: these terms are
the whole objective, the batches' negatives are not read):

- ``infonce``: in-batch InfoNCE of the batch's users against the batch's positive items
  (cosine / ``temperature``; MMRec's ``infonce``, the main task);
- ``ssl`` (weight ``ssl_alpha``), by ``ssl_task``:
  ``fac`` (fine and coarse, MMRec's default): the propagated id view of the batch's positive
  items is mapped into a "fine" space shared with the first modality's propagated view
  (InfoNCE of dot products / ``ssl_temp``), then on through two more linear maps into a
  "coarse" space (width d/2) shared with the second modality's view (the authors' chain
  id → id+image → id+image+audio → id+image+audio+text, without the audio comparison);
  ``fd`` (feature dropout): two views of the whole graph, each with dropout
  (``dropout_rate``) after every propagation layer, fused and L2-normalised; InfoNCE
  between the two views of the batch's users plus that of its positive items;
  ``fm`` (feature masking): as ``fd`` without dropout, each of the two views with the item
  side of one view (id or a modality; two distinct ones, drawn uniformly) set to zero;
  ``fd+fm``: masking and dropout;
- ``weight_decay``: ½·Σ‖θ‖² over every parameter, the coupled L2 MMRec's trainer applies
  through Adam's ``weight_decay`` (1e-4 in SLMRec's yaml): the same gradient.

The random draws (dropout masks, masked views) come from torch's seeded generator, in
training only; evaluation is deterministic.

Differences from MMRec's ``slmrec.py``:

- ``fd``, ``fm`` and ``fd+fm`` run here; in MMRec they fail (they read an audio projection,
  and a config key, that its version does not have). The masked view is drawn among the id
  view and the modalities present (MMRec's draw counts an audio view too); from torch's
  generator, not numpy's.
- The views are propagated together, concatenated along the feature axis (one sparse
  product per layer instead of one per view): the same function.
- MMRec's grid over ``reg`` is a grid over nothing (its code never reads ``reg``); the
  weight decay is a term here (this trainer's Adam has none), with the same gradient.
- ``mm_fusion_mode: mean`` is not offered (MMRec's fusion layers are sized for ``concat``
  only, so ``mean`` fails there).
- With one modality, ``fac`` keeps its fine stage only; the modalities are taken in the
  order of ``model.modalities`` (MMRec: image then text).
- The adjacency is the shared one (MMRec adds 1e-8 to the degrees).
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
from sea.losses import solosim_loss
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import spmm
from sea.models.propagation import propagate
from sea.ops import full_sum

SSL_TASKS = ("fac", "fd", "fm", "fd+fm")


@dataclass
class SLMRecConfig(Section):
    """params.yaml [slmrec]. Defaults: MMRec's SLMRec.yaml, and the authors' config
    (conf/SLMRec.properties) for the values MMRec only grids."""

    embedding_dim: int = 64  # ids, modality projections, final vectors (MMRec: recdim)
    layers: int = 3  # LightGCN layers of every view (MMRec: layer_num)
    temperature: float = 0.2  # main in-batch InfoNCE (MMRec: temp)
    ssl_task: str = "fac"  # fac | fd | fm | fd+fm (MMRec: FAC)
    ssl_alpha: float = 0.1  # weight of the self-supervised term; MMRec grid [0.01, 0.05, 0.1, 0.5, 1.0]
    ssl_temp: float = 0.2  # its InfoNCE temperature; MMRec grid [0.1, 0.2, 0.5, 1.0]
    dropout_rate: float = 0.3  # fd, fd+fm: dropout after every propagation layer of the two views
    weight_decay: float = 1e-4  # coupled L2 on every parameter (MMRec: Adam weight_decay)

    def validate(self, section: str) -> None:
        require(self.embedding_dim >= 2, section, "embedding_dim must be >= 2 (fac's coarse space is half of it)")
        require(self.layers >= 0, section, "layers must be >= 0")
        require(self.temperature > 0, section, "temperature must be > 0")
        require_choice(self.ssl_task, SSL_TASKS, section, "ssl_task")
        require(self.ssl_alpha >= 0, section, "ssl_alpha must be >= 0")
        require(self.ssl_temp > 0, section, "ssl_temp must be > 0")
        require(0.0 <= self.dropout_rate < 1.0, section, "dropout_rate must be in [0, 1)")
        require(self.weight_decay >= 0, section, "weight_decay must be >= 0")


def dot_infonce(anchor: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE on raw dot products (FAC's; :func:`~sea.losses.solosim_loss` is the cosine
    one): row i of ``anchor`` must pick row i of ``other``, logits ⟨a_i, o_j⟩ / τ."""
    logits = anchor @ other.T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


@register
class SLMRec(Recommender):
    r"""SLMRec ("Self-supervised Learning for Multimedia Recommendation", Z. Tao, X. Liu,
    Y. Xia, X. Wang, L. Yang, X. Huang, T.-S. Chua, IEEE TMM 2022).

    Views :math:`s \in \{\mathrm{id}, m_1, \dots\}`: layer 0 is
    :math:`[\mathbf{E}_U;\ \mathbf{X}^s]` with :math:`\mathbf{X}^{\mathrm{id}} = \mathbf{E}_I`
    and :math:`\mathbf{X}^m = \bar{\mathbf{F}}_m W_m + \mathbf{b}_m` (:math:`\bar{\mathbf{F}}_m`
    the row-normalised features). With
    :math:`\mathbf{H}^s = \frac{1}{L+1}\sum_{l=0}^{L}\hat{A}^l[\mathbf{E}_U;\ \mathbf{X}^s]`:

    .. math::
        \mathbf{u} = P_U\,[\mathbf{h}^{\mathrm{id}}_u \Vert \mathbf{h}^{m_1}_u \Vert \dots] + \mathbf{c}_U,
        \qquad
        \mathbf{i} = P_I\,[\mathbf{h}^{\mathrm{id}}_i \Vert \mathbf{h}^{m_1}_i \Vert \dots] + \mathbf{c}_I

    score :math:`\mathbf{u}^\top\mathbf{i}`;
    :math:`\mathcal{L} = \mathrm{NCE}_{\cos,\tau}(\mathbf{u}_B, \mathbf{i}^+_B)
    + \alpha\,\mathcal{L}_{ssl} + \frac{\lambda}{2}\sum\lVert\theta\rVert^2`, the
    self-supervised term :math:`\mathcal{L}_{ssl}` by ``ssl_task`` (module docstring).

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (in the views' order).
        embedding_dim: d, the width of every view and of the final vectors (64).
        layers: L (3).
        temperature: τ of the main InfoNCE (0.2).
        ssl_task: ``fac``, ``fd``, ``fm`` or ``fd+fm`` (``fac``).
        ssl_alpha: α, the weight of the self-supervised term (0.1; 0 drops it, and FAC's maps).
        ssl_temp: its temperature (0.2).
        dropout_rate: ``fd``, ``fd+fm``: dropout after every layer of the two views (0.3).
        weight_decay: λ (1e-4; 0 drops the term).
    """

    name = "slmrec"
    Config = SLMRecConfig
    uses_features = True
    preferred_loss = "none"
    #: The grid ``tune.spaces.slmrec`` defaults to (docs/tuning.md): MMRec's, cut to 12 points.
    search_space = {"ssl_alpha": [0.01, 0.1, 0.5, 1.0], "ssl_temp": [0.1, 0.2, 0.5]}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        *,
        embedding_dim: int = 64,
        layers: int = 3,
        temperature: float = 0.2,
        ssl_task: str = "fac",
        ssl_alpha: float = 0.1,
        ssl_temp: float = 0.2,
        dropout_rate: float = 0.3,
        weight_decay: float = 1e-4,
    ):
        super().__init__()
        if ssl_task not in SSL_TASKS or not feature_dims:
            raise ValueError(f"SLMRec needs a modality and an ssl_task in {SSL_TASKS}, got {ssl_task!r}")
        self.n_users, self.n_items, self.dim = n_users, n_items, embedding_dim
        self.modalities = list(feature_dims)
        self.layers, self.temperature = layers, temperature
        self.ssl_task, self.ssl_alpha, self.ssl_temp = ssl_task, ssl_alpha, ssl_temp
        self.dropout_rate, self.weight_decay = dropout_rate, weight_decay
        d, width = embedding_dim, embedding_dim * (1 + len(feature_dims))
        # Created and initialised in MMRec's order: ids, projections, fusion (item first).
        self.user = nn.Embedding(n_users, d)
        self.item = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.projections = nn.ModuleDict({m: nn.Linear(f, d) for m, f in feature_dims.items()})
        self.item_fusion = nn.Linear(width, d)
        self.user_fusion = nn.Linear(width, d)
        for layer in (*self.projections.values(), self.item_fusion, self.user_fusion):
            nn.init.xavier_uniform_(layer.weight)
        # FAC: the id view's chain (fine, then on to coarse) and each modality's map into
        # its space: MMRec's g_i_iv, g_v_iv, g_iv_iva, g_iva_ivat, g_t_ivat.
        self.fac_id = self.fac_modality = self.fac_chain = None
        if ssl_task == "fac" and ssl_alpha > 0:
            first, *rest = self.modalities
            self.fac_id = nn.Linear(d, d)
            self.fac_modality = nn.ModuleDict({first: nn.Linear(d, d)})
            layers_ = [self.fac_id, self.fac_modality[first]]
            if rest:
                self.fac_chain = nn.Sequential(nn.Linear(d, d), nn.Linear(d, d // 2))
                self.fac_modality[rest[0]] = nn.Linear(d, d // 2)
                layers_ = [self.fac_id, self.fac_modality[first], *self.fac_chain, self.fac_modality[rest[0]]]
            for layer in layers_:
                nn.init.xavier_uniform_(layer.weight)

    @classmethod
    def build(cls, data: GraphData, cfg: SLMRecConfig, modalities: Sequence[str] | None = None, *unused) -> SLMRec:
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities or data.features},
            embedding_dim=cfg.embedding_dim,
            layers=cfg.layers,
            temperature=cfg.temperature,
            ssl_task=cfg.ssl_task,
            ssl_alpha=cfg.ssl_alpha,
            ssl_temp=cfg.ssl_temp,
            dropout_rate=cfg.dropout_rate,
            weight_decay=cfg.weight_decay,
        )

    @property
    def n_views(self) -> int:
        """The id view and one per modality."""
        return 1 + len(self.modalities)

    def layer0(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Layer 0 of every view side by side, ``[U + I, n_views·d]``: the user id
        embeddings repeated per view over the item ids and each modality's projection."""
        items = [self.item.weight] + [self.projections[m](F.normalize(features[m], dim=1)) for m in self.modalities]
        return torch.cat([self.user.weight.repeat(1, self.n_views), torch.cat(items, dim=1)])

    def fuse(self, h: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The final vectors of rows ``users`` and ``items`` of the propagated views ``h``."""
        return self.user_fusion(h[users]), self.item_fusion(h[self.n_users + items])

    def forward(self, data: GraphData) -> Embeddings:
        """The final user and item vectors; in training ``extras`` holds the views' layer 0
        (``layer0``), their propagated vectors (``views``) and the adjacency (``adj``) for the
        self-supervised term."""
        x = self.layer0(data.features)
        h = propagate(data.adj, x, self.layers, mean=True)
        user, item = self.user_fusion(h[: self.n_users]), self.item_fusion(h[self.n_users :])
        extras: dict[str, Any] = {"layer0": x, "views": h, "adj": data.adj} if self.training else {}
        return Embeddings(user, item, extras)

    # ------------------------------------------------------------------ self-supervised terms

    def fac_loss(self, views: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Fine and coarse: the id view of ``items`` against the first modality's in the
        fine space, then (chained on) against the second modality's in the coarse one."""
        d, h = self.dim, views[self.n_users + items]
        x = self.fac_id(h[:, :d])
        first = self.modalities[0]
        loss = dot_infonce(x, self.fac_modality[first](h[:, d : 2 * d]), self.ssl_temp)
        if self.fac_chain is not None:
            second = self.modalities[1]
            loss = loss + dot_infonce(self.fac_chain(x), self.fac_modality[second](h[:, 2 * d : 3 * d]), self.ssl_temp)
        return loss

    def view_masks(self) -> torch.Tensor:
        """``[2, n_views]``: ones, except one zero per row, in two distinct views drawn
        uniformly (torch's generator)."""
        drawn = torch.randperm(self.n_views)[:2]
        masks = torch.ones(2, self.n_views)
        masks[torch.arange(2), drawn] = 0.0
        return masks

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout at ``dropout_rate`` (torch's generator), scaled by 1 / (1 − rate)."""
        return F.dropout(x, self.dropout_rate, training=True)

    def two_views(self, adj: torch.Tensor, x: torch.Tensor, dropout: bool, mask: bool) -> torch.Tensor:
        """Two augmented copies of the views, side by side, propagated:
        ``[U + I, 2·n_views·d]``. ``mask``: each copy has one view's item side zeroed;
        ``dropout``: dropout after every layer (as MMRec's, fed into the next layer)."""
        x = torch.cat([x, x], dim=1)
        if mask:
            scale = self.view_masks().to(x).repeat_interleave(self.dim, dim=1).reshape(1, -1)
            x = torch.cat([x[: self.n_users], x[self.n_users :] * scale])
        out = x
        for _ in range(self.layers):
            x = spmm(adj, x)
            if dropout:
                x = self.drop(x)
            out = out + x
        return out / (self.layers + 1)

    def augmented_loss(self, adj: torch.Tensor, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``fd`` / ``fm`` / ``fd+fm``: InfoNCE between the two augmented copies' final,
        normalised vectors: the batch's users' plus its positive items'."""
        h = self.two_views(adj, x, dropout=self.ssl_task in ("fd", "fd+fm"), mask=self.ssl_task in ("fm", "fd+fm"))
        width = self.n_views * self.dim
        u1, i1 = self.fuse(h[:, :width], batch.users, batch.pos)
        u2, i2 = self.fuse(h[:, width:], batch.users, batch.pos)
        return solosim_loss(u1, u2, self.ssl_temp) + solosim_loss(i1, i2, self.ssl_temp)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``infonce`` (the main task, weight 1), ``ssl`` (weight ``ssl_alpha``) and
        ``weight_decay`` (weight ``weight_decay``), each left out at weight 0."""
        terms = {"infonce": Term(solosim_loss(emb.user[batch.users], emb.item[batch.pos], self.temperature), 1.0)}
        if self.ssl_alpha > 0 and self.ssl_task == "fac":
            terms["ssl"] = Term(self.fac_loss(emb.extras["views"], batch.pos), self.ssl_alpha)
        elif self.ssl_alpha > 0:
            terms["ssl"] = Term(self.augmented_loss(emb.extras["adj"], emb.extras["layer0"], batch), self.ssl_alpha)
        if self.weight_decay > 0:
            squares = sum(full_sum(p.pow(2)) for p in self.parameters())
            terms["weight_decay"] = Term(0.5 * squares, self.weight_decay)
        return terms
