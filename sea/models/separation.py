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

A backbone uses it like this (see :mod:`sea.models.vbpr`)::

    split = self.separation(data.features)          # modality -> [n_items, d_m] = [g; s]
    ...                                            # use split[m] where the raw feature was
    Embeddings(user, item, extras={"split": split})
    # auxiliary_step / extra_losses: delegate with torch.unique(batch.pos)
    # main_parameters: leave out self.separation.estimator_parameters()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from torch import nn

from sea.config import ConfigError
from sea.io import DataError
from sea.losses import CLUBEstimator, fit_estimators, l2_distance_loss, solosim_loss
from sea.models.base import Term

if TYPE_CHECKING:
    from sea.config import ClubConfig, LossConfig

SEPARATIONS = ("none", "sea")  # the choices of a backbone's `separation` param


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Solosim's 3-layer MLP with batch norm."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def generic_width(feature_dim: int, generic_fraction: float) -> int:
    """Width of the generic part of a ``feature_dim``-wide split: at least 1, and at least
    1 left for the unique part."""
    if feature_dim < 2:
        raise DataError(f"a feature of width {feature_dim} cannot be split into generic and unique parts")
    return max(1, min(feature_dim - 1, round(generic_fraction * feature_dim)))


def parameters_except(module: nn.Module, excluded: Iterable[nn.Parameter]) -> Iterator[nn.Parameter]:
    """``module``'s parameters, in order, without ``excluded``."""
    skip = {id(p) for p in excluded}
    return (p for p in module.parameters() if id(p) not in skip)


class Separation(nn.Module):
    """SEA's generic/unique split with its CLUB (or ℓ2) and Solosim terms.

    Args:
        feature_dims: modality ("image", "text") -> raw feature width.
        generic_fraction: share of each modality's split that is generic (0.5).
        head_dim: output width of the CLUB projections and Solosim heads (32).
        head_hidden_dim: hidden width of the Solosim heads (the backbone's embedding width).
        loss: ``club_weight``, ``solosim_weight``, ``temperature``, ``distance``.
        club: the estimators' ``steps``, ``lr``, ``hidden_dim`` and ``pairing``.
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
    ):
        super().__init__()
        self.modalities = list(feature_dims)
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
        if self.club_weight > 0:
            self.club_generic = nn.ModuleDict({m: nn.Linear(self.generic_dims[m], head_dim) for m in feature_dims})
            self.club_unique = nn.ModuleDict({m: nn.Linear(self.unique_dims[m], head_dim) for m in feature_dims})
        if self.solosim_weight > 0 and self.has_cross_modal:
            self.solosim_heads = nn.ModuleDict({
                m: projection_head(self.generic_dims[m], head_hidden_dim, head_dim) for m in ("text", "image")
            })
        if use_estimators:
            names = ["shared"] if self.pairing == "reference" else self.modalities
            self.estimators = nn.ModuleDict({n: CLUBEstimator(head_dim, head_dim, club.hidden_dim) for n in names})
        self._estimator_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_setup(cls, feature_dims: dict[str, int], *, generic_fraction: float, head_dim: int,
                   head_hidden_dim: int, setup) -> "Separation":
        """Built from the trainer's shared sections ``setup.loss`` and ``setup.club``."""
        return cls(feature_dims, generic_fraction=generic_fraction, head_dim=head_dim,
                   head_hidden_dim=head_hidden_dim, loss=setup.loss, club=setup.club)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Modality -> its split [n_items, d_m]: generic part first, unique part after."""
        return {m: self.split[m](features[m]) for m in self.modalities}

    def parts(self, split: dict[str, torch.Tensor], m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(generic, unique) parts of modality ``m``'s split."""
        z = split[m]
        return z[..., : self.generic_dims[m]], z[..., self.generic_dims[m] :]

    def club_pairs(self, split: dict[str, torch.Tensor], items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Modality -> (projected generic, projected unique) of ``items``."""
        pairs = {}
        for m in self.modalities:
            g, s = self.parts(split, m)
            pairs[m] = (self.club_generic[m](g[items]), self.club_unique[m](s[items]))
        return pairs

    def solosim_pair(self, split: dict[str, torch.Tensor], items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text generic, image generic) of ``items`` through their Solosim heads."""
        return tuple(self.solosim_heads[m](self.parts(split, m)[0][items]) for m in ("text", "image"))

    def estimator_parameters(self) -> Iterator[nn.Parameter]:
        """The CLUB estimators' parameters: fitted by :meth:`auxiliary_step` only, never by
        the model's optimiser."""
        return iter(()) if self.estimators is None else self.estimators.parameters()

    def auxiliary_step(self, split: dict[str, torch.Tensor], items: torch.Tensor) -> dict[str, float]:
        """Fit the CLUB estimators (``club.steps`` Adam steps) on the current pairs of
        ``items``; return each estimator's last log-likelihood (``club_ll_<name>``)."""
        if self.estimators is None or self.club_steps == 0:
            return {}
        if self._estimator_optimizer is None:  # created on first use: after any .to(device)
            self._estimator_optimizer = torch.optim.Adam(self.estimators.parameters(), lr=self.club_lr)
        with torch.no_grad():
            pairs = self.club_pairs(split, items)
        if self.pairing == "reference":
            (gt, st), (gv, sv) = pairs["text"], pairs["image"]
            jobs = {"shared": (self.estimators["shared"], torch.cat([gt, st]), torch.cat([gv, sv]))}
        else:
            jobs = {m: (self.estimators[m], g, s) for m, (g, s) in pairs.items()}
        lls = fit_estimators(jobs, self._estimator_optimizer, self.club_steps)
        return {f"club_ll_{name}": v for name, v in lls.items()}

    def extra_losses(self, split: dict[str, torch.Tensor], items: torch.Tensor) -> dict[str, Term]:
        """``club`` and ``solosim`` on ``items`` (those with weight 0 are left out)."""
        terms = {}
        if self.club_weight > 0:
            pairs = self.club_pairs(split, items)
            if self.distance == "l2":
                parts = [l2_distance_loss(g, s) for g, s in pairs.values()]
            elif self.pairing == "reference":
                parts = [self.estimators["shared"].bound(g, s).clamp(min=0) for g, s in pairs.values()]
            else:
                parts = [self.estimators[m].bound(g, s) for m, (g, s) in pairs.items()]
            terms["club"] = Term(torch.stack(parts).mean(), self.club_weight)
        if self.solosim_heads is not None:
            if len(items) > 1:
                value = solosim_loss(*self.solosim_pair(split, items), self.temperature)
            else:  # InfoNCE over one item is exactly 0 (and batch norm cannot see one row)
                value = split["text"].new_zeros(())
            terms["solosim"] = Term(value, self.solosim_weight)
        return terms


def check_separation_params(section: str, separation: str, generic_fraction: float, head_dim: int) -> None:
    """Validation shared by the backbones' ``separation``, ``generic_fraction`` and ``head_dim``."""
    if separation not in SEPARATIONS:
        raise ConfigError(f"params.yaml [{section}]: separation must be one of {list(SEPARATIONS)}, got {separation!r}")
    if not 0.0 < generic_fraction < 1.0:
        raise ConfigError(f"params.yaml [{section}]: generic_fraction must be in (0, 1)")
    if head_dim <= 0:
        raise ConfigError(f"params.yaml [{section}]: head_dim must be positive")
