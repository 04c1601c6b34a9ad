"""SEA's separation as a component any model with per-modality item features can use.

Per modality m, a linear map turns the raw feature x_i^m (d_m dims) into [g_i^m; s_i^m]
(d_m dims again): the first ``round(generic_fraction · d_m)`` are the *generic* part, the
rest the *unique* part (SEA.md §1.1). Two training terms act on these parts:

- ``club``: pushes each modality's generic and unique parts apart. With
  ``loss.distance: club`` it is the CLUB upper bound of their mutual information (Cheng et
  al., 2020) after linear projections to ``head_dim``, ½ the sum over modalities; its
  variational estimators q(s|g) are fitted here with their own Adam (``club.steps`` steps
  per model step, on the very pairs they measure). ``club.pairing: reference`` reproduces
  the reference code instead (one estimator shared by the modalities, fitted text → image,
  used within each modality, clamped at 0), for comparison only. With
  ``loss.distance: l2`` it is minus the mean squared distance of the normalised parts.
- ``solosim``: InfoNCE from the text generic part to the image generic part, each through
  a 3-layer MLP head with batch norm, cosine similarity / ``loss.temperature`` (needs both
  modalities).

Both are evaluated on the batch's distinct positive items. A term whose weight is 0 is
never computed and its networks are not even created; the backbone's own parameters are
created before these heads, so switching a term on or off does not change their
initialisation.

A backbone gains it through the :class:`Separable` mixin, which brings auxiliary_step
(the estimators' fit), main_parameters (without the estimators) and the separation's loss
terms (see :mod:`sea.models.vbpr`)::

    class VBPR(Separable, Recommender):
        def __init__(self, ..., separation=None):
            ...                                      # the backbone's own parameters first
            self.separation = Separation(feature_dims, **separation) if separation is not None else None

        # build(): separation=separation_settings(cfg, loss, club)

        def forward(self, data):
            content, extras = self.item_features(data.features)  # [g; s] per modality, or raw
            ...                                      # read content where the raw feature was
            return Embeddings(user, item, extras)

        def extra_losses(self, emb, batch):
            return own_terms | self.separation_losses(emb, batch)

and its section declares ``separation``, ``generic_fraction`` and ``head_dim``, checked by
:func:`check_separation_params`.

Every reader of a split applies a linear map to it first (an MLP's first layer, a CLUB
projection, a Solosim head's first layer, VBPR's E, FREEDOM's P_m). So the split is never
materialised: :class:`SplitFeatures` composes each reader's map A with the split's W (one
[out, d]·[d, d] product per step) and applies A·W to the raw features of the rows it reads.
That is the same function of the same parameters, hence the same gradients, with far fewer
operations: at d = 4096 and 7,050 items, materialising W·x alone costs 118 GFLOP per step,
the composed maps about 12. ``compose=False`` materialises the split instead (the plain
formulation, kept for the equivalence tests and ``bench/train_speed.py --plain``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.errors import ConfigError, DataError, shown
from sea.losses import ClubConfig, CLUBEstimator, LossConfig, l2_distance_loss, solosim_loss
from sea.models.base import adam, parameters_except
from sea.ops import BatchNorm1d, matvec

SEPARATIONS = ("none", "sea")  # the choices of a backbone's `separation` param


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Solosim's 3-layer MLP with batch norm."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def generic_width(feature_dim: int, generic_fraction: float) -> int:
    """Width of the generic part of a ``feature_dim``-wide split: at least 1, and at least
    1 left for the unique part."""
    if feature_dim < 2:
        raise DataError(f"a feature of width {feature_dim} cannot be split into generic and unique parts")
    return max(1, min(feature_dim - 1, round(generic_fraction * feature_dim)))


PARTS = ("all", "generic", "unique")


class Features:
    """Each modality's item features as their readers see them: through a linear map, on
    the rows they read. This base class holds the raw features; :class:`SplitFeatures` is
    the separated view."""

    def __init__(self, features: dict[str, torch.Tensor]):
        self.features = features

    def apply(self, m: str, layer: nn.Linear, part: str = "all", rows: torch.Tensor | None = None) -> torch.Tensor:
        """``layer`` applied to modality ``m``'s rows ``rows`` (all when ``None``; any index
        shape); ``part`` is ``all`` for raw features."""
        return self.project(m, layer.weight, layer.bias, part, rows)

    def project(
        self,
        m: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        part: str = "all",
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x·weightᵀ + bias on modality ``m``'s rows (see :meth:`apply`)."""
        x = self.features[m]
        return F.linear(x if rows is None else x[rows], weight, bias)


class SplitFeatures(Features):
    """Each modality's split z = W·x + b = [g; s], read through linear maps (see the module
    docstring): ``project(m, A, c, part, rows)`` is A·z[rows, part] + c, computed as
    (A·W[part])·x[rows] + (A·b[part] + c) when ``compose`` is true, and from the
    materialised split (computed once per instance) when it is false.

    Args:
        features: modality -> raw features ``[n_items, d_m]``.
        layers: modality -> the split's ``nn.Linear(d_m, d_m)``.
        generic_dims: modality -> width of the generic part (the first rows of W).
        compose: the composed formulation (True) or the plain one.
    """

    def __init__(
        self,
        features: dict[str, torch.Tensor],
        layers: nn.ModuleDict,
        generic_dims: dict[str, int],
        compose: bool = True,
    ):
        super().__init__(features)
        self.layers, self.generic_dims, self.compose = layers, generic_dims, compose
        self._materialised: dict[str, torch.Tensor] = {}
        self._split_blocks: dict[tuple[str, bool], tuple] = {}
        self.memo: dict[str, object] = {}  # computed once per split: batch_items, club_pairs

    def _part_index(self, part: str) -> int | None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return {"all": None, "generic": 0, "unique": 1}[part]

    def _blocks(self, m: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((W_g, b_g), (W_s, b_s)): the split's rows, split once per modality and grad mode
        (one split in the backward pass, not a zero-filled [d, d] gradient per reader)."""
        key = (m, torch.is_grad_enabled())
        if key not in self._split_blocks:
            layer, g = self.layers[m], self.generic_dims[m]
            d = layer.weight.shape[0]
            w_g, w_s = torch.split(layer.weight, [g, d - g])
            b_g, b_s = torch.split(layer.bias, [g, d - g])
            self._split_blocks[key] = ((w_g, b_g), (w_s, b_s))
        return self._split_blocks[key]

    def full(self, m: str) -> torch.Tensor:
        """The materialised split ``[n_items, d_m]`` (the plain formulation's one big product,
        computed once per modality; a copy made under ``no_grad`` is recomputed for a reader
        that needs gradients, and one with gradients serves ``no_grad`` readers too)."""
        z = self._materialised.get(m)
        if z is None or (torch.is_grad_enabled() and not z.requires_grad):
            z = self._materialised[m] = self.layers[m](self.features[m])
        return z

    def parts(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(generic, unique) parts of the materialised split, for inspection and tests."""
        z = self.full(m)
        return z[..., : self.generic_dims[m]], z[..., self.generic_dims[m] :]

    def project(
        self,
        m: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        part: str = "all",
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        index = self._part_index(part)
        if not self.compose:
            z = self.full(m) if index is None else self.parts(m)[index]
            return F.linear(z if rows is None else z[rows], weight, bias)
        if index is None:
            w, b = self.layers[m].weight, self.layers[m].bias
        else:
            w, b = self._blocks(m)[index]
        composed, composed_bias = weight @ w, matvec(weight, b)
        if bias is not None:
            composed_bias = composed_bias + bias
        x = self.features[m]
        return F.linear(x if rows is None else x[rows], composed, composed_bias)


class Separation(nn.Module):
    """SEA's generic/unique split with its CLUB (or ℓ2) and Solosim terms.

    Args:
        feature_dims: modality ("image", "text") -> raw feature width.
        generic_fraction: share of each modality's split that is generic (0.5).
        head_dim: output width of the CLUB projections and Solosim heads (32).
        head_hidden_dim: hidden width of the Solosim heads (the backbone's embedding width).
        loss: ``club_weight``, ``solosim_weight``, ``temperature``, ``distance``.
        club: the estimators' ``steps``, ``lr``, ``hidden_dim`` and ``pairing``.
        compose: read the split through composed linear maps (True, the fast formulation)
            or materialise it (False, the plain one); see :class:`SplitFeatures`.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        *,
        generic_fraction: float,
        head_dim: int,
        head_hidden_dim: int,
        loss: LossConfig,
        club: ClubConfig,
        compose: bool = True,
    ):
        super().__init__()
        self.modalities = list(feature_dims)
        self.compose = compose
        self.generic_dims = {m: generic_width(d, generic_fraction) for m, d in feature_dims.items()}
        self.unique_dims = {m: d - self.generic_dims[m] for m, d in feature_dims.items()}
        self.split = nn.ModuleDict({m: nn.Linear(d, d) for m, d in feature_dims.items()})

        self.club_weight, self.solosim_weight = loss.club_weight, loss.solosim_weight
        self.temperature, self.distance = loss.temperature, loss.distance
        self.club_steps, self.club_lr, self.pairing = club.steps, club.lr, club.pairing
        self.has_cross_modal = {"image", "text"} <= set(feature_dims)
        use_estimators = self.club_weight > 0 and self.distance == "club"
        if use_estimators and self.pairing == "reference" and not self.has_cross_modal:
            raise ConfigError("params.yaml [club]: pairing: reference pairs text with image: it needs both modalities")

        # The heads exist only where their term is computed (created after the split).
        self.club_generic = self.club_unique = self.estimators = self.solosim_heads = None
        self.estimator_names: list[str] = []
        if self.club_weight > 0:
            self.club_generic = nn.ModuleDict({m: nn.Linear(self.generic_dims[m], head_dim) for m in feature_dims})
            self.club_unique = nn.ModuleDict({m: nn.Linear(self.unique_dims[m], head_dim) for m in feature_dims})
        if self.solosim_weight > 0 and self.has_cross_modal:
            self.solosim_heads = nn.ModuleDict(
                {m: projection_head(self.generic_dims[m], head_hidden_dim, head_dim) for m in ("text", "image")}
            )
        if use_estimators:
            # one estimator per modality (paper), fitted as one batched module, or one shared
            self.estimator_names = ["shared"] if self.pairing == "reference" else list(self.modalities)
            self.estimators = CLUBEstimator(head_dim, head_dim, club.hidden_dim, count=len(self.estimator_names))
        self._estimator_optimizer: torch.optim.Optimizer | None = None

    def forward(self, features: dict[str, torch.Tensor]) -> SplitFeatures:
        """Each modality's split [g; s] (generic part first), as :class:`SplitFeatures`."""
        return SplitFeatures({m: features[m] for m in self.modalities}, self.split, self.generic_dims, self.compose)

    @staticmethod
    def batch_items(split: SplitFeatures, positives: torch.Tensor) -> torch.Tensor:
        """The batch's distinct positive items, ``torch.unique(positives)``, taken once per
        split and batch (:meth:`auxiliary_step` and :meth:`extra_losses` read the same)."""
        cached = split.memo.get("items")
        if cached is None or cached[0] is not positives:
            cached = split.memo["items"] = (positives, torch.unique(positives))
        return cached[1]

    def club_pairs(self, split: SplitFeatures, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Modality -> (projected generic, projected unique) of ``items``; computed once per
        split and items (the estimator fit and the CLUB term read the same pairs: the same
        tensor from :meth:`batch_items`, so no comparison of contents, no host sync)."""
        cached = split.memo.get("club_pairs")
        if cached is not None and cached[0] is items:
            return cached[1]
        pairs = {
            m: (
                split.apply(m, self.club_generic[m], "generic", items),
                split.apply(m, self.club_unique[m], "unique", items),
            )
            for m in self.modalities
        }
        split.memo["club_pairs"] = (items if torch.is_grad_enabled() else None, pairs)
        return pairs

    def solosim_pair(self, split: SplitFeatures, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text generic, image generic) of ``items`` through their Solosim heads."""
        out = []
        for m in ("text", "image"):
            head = self.solosim_heads[m]
            out.append(head[1:](split.apply(m, head[0], "generic", items)))
        return tuple(out)

    def estimator_parameters(self) -> Iterator[nn.Parameter]:
        """The CLUB estimators' parameters: fitted by :meth:`auxiliary_step` only, never by
        the model's optimiser."""
        return iter(()) if self.estimators is None else self.estimators.parameters()

    def auxiliary_step(self, split: SplitFeatures, positives: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fit the CLUB estimators (``club.steps`` Adam steps) on the current pairs of the
        batch's distinct ``positives``; return each estimator's last log-likelihood
        (``club_ll_<name>``)."""
        if self.estimators is None or self.club_steps == 0:
            return {}
        items = self.batch_items(split, positives)
        if self._estimator_optimizer is None:  # created on first use: after any .to(device)
            self._estimator_optimizer = adam(self.estimators.parameters(), self.club_lr)
        pairs = self.club_pairs(split, items)  # with gradients: extra_losses reuses them (the fit detaches)
        if self.pairing == "reference":
            (gt, st), (gv, sv) = pairs["text"], pairs["image"]
            x, y = torch.cat([gt, st]).unsqueeze(0), torch.cat([gv, sv]).unsqueeze(0)
        else:  # [modalities, n, head_dim]: every modality's estimator in one batched fit
            x = torch.stack([g for g, _ in pairs.values()])
            y = torch.stack([s for _, s in pairs.values()])
        lls = self.estimators.fit(x, y, self._estimator_optimizer, self.club_steps)
        return {f"club_ll_{name}": ll for name, ll in zip(self.estimator_names, lls)}

    def extra_losses(self, split: SplitFeatures, positives: torch.Tensor) -> dict[str, Term]:
        """``club`` and ``solosim`` on the batch's distinct ``positives`` (those with weight
        0 are left out)."""
        items = self.batch_items(split, positives)
        terms = {}
        if self.club_weight > 0:
            pairs = self.club_pairs(split, items)
            if self.distance == "l2":
                parts = [l2_distance_loss(g, s) for g, s in pairs.values()]
            elif self.pairing == "reference":
                parts = [self.estimators.bound(g, s).clamp(min=0) for g, s in pairs.values()]
            else:
                parts = self.estimators.bound(
                    torch.stack([g for g, _ in pairs.values()]), torch.stack([s for _, s in pairs.values()])
                )
            terms["club"] = Term(torch.stack(list(parts)).mean(), self.club_weight)
        if self.solosim_heads is not None:
            if len(items) > 1:
                value = solosim_loss(*self.solosim_pair(split, items), self.temperature)
            else:  # InfoNCE over one item is exactly 0 (and batch norm cannot see one row)
                value = split.features["text"].new_zeros(())
            terms["solosim"] = Term(value, self.solosim_weight)
        return terms


class Separable:
    """Mixin of a backbone that may split its item features with SEA's separation:
    ``class VBPR(Separable, Recommender)``. The backbone sets ``self.separation`` (a
    :class:`Separation`, or None for ``separation: none``) last in its ``__init__``, so
    that switching it on leaves the backbone's initialisation unchanged, and reads its
    features through :meth:`item_features`. The mixin supplies the rest of the
    :class:`~sea.models.base.Recommender` hooks: the separation's terms
    (:meth:`separation_losses`; :meth:`extra_losses` is only those unless the backbone adds
    its own), the estimators' fit (:meth:`auxiliary_step`) and the main optimiser's
    parameters without the estimators (:meth:`main_parameters`)."""

    separation: Separation | None

    def item_features(self, features: dict[str, torch.Tensor]) -> tuple[Features, dict[str, Any]]:
        """(the item features as the backbone reads them: each modality split into [g; s],
        or raw without the separation; the extras the separation's hooks need:
        ``{"split": …}``, or none)."""
        if self.separation is None:
            return Features(features), {}
        split = self.separation(features)
        return split, {"split": split}

    def separation_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``club`` and ``solosim`` on the batch's distinct positives (none without the separation)."""
        if self.separation is None:
            return {}
        return self.separation.extra_losses(emb.extras["split"], batch.pos)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        return self.separation_losses(emb, batch)

    def auxiliary_step(self, emb: Embeddings, batch: Batch) -> dict[str, torch.Tensor]:
        if self.separation is None:
            return {}
        return self.separation.auxiliary_step(emb.extras["split"], batch.pos)

    def main_parameters(self) -> Iterator[nn.Parameter]:
        if self.separation is None:
            return self.parameters()
        return parameters_except(self, self.separation.estimator_parameters())


def separation_settings(cfg: Any, loss: LossConfig | None, club: ClubConfig | None) -> dict[str, Any] | None:
    """The keyword arguments of :class:`Separation` (besides the feature widths) for a
    backbone section ``cfg`` with ``separation: sea`` (its ``generic_fraction`` and
    ``head_dim``; its ``embedding_dim`` as the Solosim heads' hidden width) and the shared
    ``loss`` and ``club`` sections (None: their defaults); None for ``separation: none``."""
    if cfg.separation != "sea":
        return None
    return dict(
        generic_fraction=cfg.generic_fraction,
        head_dim=cfg.head_dim,
        head_hidden_dim=cfg.embedding_dim,
        loss=loss or LossConfig(),
        club=club or ClubConfig(),
    )


def set_composed(model: nn.Module, compose: bool) -> int:
    """Switch every :class:`Separation` inside ``model`` to the composed (True) or plain
    (False) formulation; return how many were switched."""
    found = [m for m in model.modules() if isinstance(m, Separation)]
    for module in found:
        module.compose = compose
    return len(found)


def check_separation_params(section: str, separation: str, generic_fraction: float, head_dim: int) -> None:
    """Validation shared by the backbones' ``separation``, ``generic_fraction`` and ``head_dim``."""
    if separation not in SEPARATIONS:
        raise ConfigError(
            f"params.yaml [{section}]: separation must be one of {list(SEPARATIONS)}, got {shown(separation)}"
        )
    if not 0.0 < generic_fraction < 1.0:
        raise ConfigError(f"params.yaml [{section}]: generic_fraction must be in (0, 1)")
    if head_dim <= 0:
        raise ConfigError(f"params.yaml [{section}]: head_dim must be positive")
