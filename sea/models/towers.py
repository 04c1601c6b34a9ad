"""Per-modality towers shared by DRAGON, DualGNN (as MMRec builds both) and MENTOR.

Per modality m, user nodes carry a preference vector :math:`p^m_u` and item nodes the
projection :math:`f_m(x^m_i) = W_2\\,\\mathrm{LeakyReLU}(W_1 x^m_i + b_1) + b_2` of their
feature; the rows are L2-normalised and propagated over the user–item graph :math:`\\hat{A}`:

.. math::
    h^m = \\sum_{l=0}^{L} \\hat{A}^l \\,\\mathrm{norm}\\big([p^m; f_m(x^m)]\\big)

With two or more modalities each user also has fusion weights :math:`\\alpha_{um}`
(xavier-normal draws over ``[users, modalities]``, as MMRec, then a softmax over the
modalities). The penalty is :math:`\\sum_m \\mathrm{mean}\\big((p^m_{B})^2\\big) +
\\mathrm{mean}(\\alpha^2)` over a batch's users B and all fusion weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sea.models.base import GraphData
from sea.models.propagation import propagate
from sea.models.separation import Features
from sea.ops import full_mean


class ModalityTowers:
    """Mixin for a model (an ``nn.Module``) with the towers above: call
    :meth:`init_towers` in ``__init__`` (it sets ``modalities``, ``preference``, ``mlp``
    and ``fusion``, drawing in that order) and set ``ui_layers`` (L)."""

    ui_layers: int

    def init_towers(
        self,
        n_users: int,
        tower_dims: dict[str, int],
        embedding_dim: int,
        mlp_hidden_dim: int,
        fused: Sequence[str] | None = None,
    ) -> None:
        """A tower (preference table, MLP from its input width) for each key of
        ``tower_dims``, and fusion weights over ``fused`` (default: those keys; none below
        two). ``modalities`` is set to the fused keys. MENTOR adds an ID tower that is not
        fused."""
        self.modalities = list(tower_dims if fused is None else fused)
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, embedding_dim))) for m in tower_dims}
        )
        self.mlp = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, mlp_hidden_dim), nn.LeakyReLU(), nn.Linear(mlp_hidden_dim, embedding_dim))
                for m, d in tower_dims.items()
            }
        )
        n_mod = len(self.modalities)
        self.fusion = (
            nn.Parameter(torch.softmax(torch.randn(n_users, n_mod) * math.sqrt(2.0 / (n_users + n_mod)), dim=1))
            if n_mod > 1
            else None
        )

    def modality_vectors(self, data: GraphData, content: Features, m: str) -> torch.Tensor:
        """h^m: the propagated, normalised [p^m; f_m(x^m)], ``[n_users + n_items, d]``;
        ``content`` is the item features as read (raw, or split by the separation)."""
        first, act, second = self.mlp[m]
        x = torch.cat([self.preference[m], second(act(content.apply(m, first)))])
        return propagate(data.adj, F.normalize(x, dim=1), self.ui_layers)

    def tower_penalty(self, users: torch.Tensor) -> torch.Tensor:
        """Σ_m mean((p^m of ``users``)²) + mean(α²)."""
        reg = sum(full_mean(self.preference[m][users].pow(2)) for m in self.modalities)
        if self.fusion is not None:
            reg = reg + full_mean(self.fusion.pow(2))
        return reg
