"""The contract between the trainer and every model, and the registry of models.

A model is one file in ``sea/models/`` holding one :class:`Recommender` subclass, decorated
with :func:`register`, plus one ``params.yaml`` section named after it (its ``Config``).
The trainer never looks inside a model: per epoch it calls :meth:`Recommender.on_epoch_start`;
per batch :meth:`~Recommender.forward` (all users and items),
:meth:`~Recommender.auxiliary_step` (separately optimised parts, e.g. SEA's CLUB
estimators), the ranking loss chosen by ``loss.kind`` on the batch's rows of
``emb.user`` / ``emb.item``, plus :meth:`~Recommender.extra_losses`; then one optimiser
step over :meth:`~Recommender.main_parameters`. Evaluation calls ``forward`` in eval mode
and :meth:`~Recommender.score`.

:class:`GraphData` is what every model may read: sizes, the training edges, the
normalised user–item adjacency, item features (only for models with ``uses_features``)
and the per-split user → items lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require, require_choice
from sea.errors import ConfigError, shown
from sea.losses import ClubConfig, LossConfig
from sea.metrics import to_csr
from sea.models.graphs import user_item_adjacency


@dataclass
class GraphData:
    """Everything training and evaluation read, as tensors on one device.

    ``adj`` is the symmetric-normalised bipartite adjacency of the *training* edges over
    users ``[0, U)`` then items ``[U, U + I)`` (no self-loops), as CSR. ``features`` holds
    the modalities of ``model.modalities`` (empty for models without features), each
    ``[n_items, dim]`` float32. ``csr[split]`` is (indptr, indices) of each user's items in
    that split, on the CPU.
    """

    n_users: int
    n_items: int
    train_users: torch.Tensor  # [n_train] long
    train_items: torch.Tensor  # [n_train] long
    adj: torch.Tensor  # [(U + I), (U + I)] CSR
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    csr: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.train_users.device

    @classmethod
    def build(
        cls,
        interactions: pd.DataFrame,
        n_items: int,
        features: dict[str, np.ndarray] | None = None,
        device: torch.device | str = "cpu",
    ) -> GraphData:
        """From the interactions table (user, item, split) and optional feature matrices."""
        features = features or {}
        n_users = int(interactions["user"].max()) + 1
        for m, x in features.items():
            if x.shape[0] != n_items:
                raise ValueError(f"{m} features have {x.shape[0]} rows for {n_items} items")
        if int(interactions["item"].max()) >= n_items:
            raise ValueError(
                f"interactions reference item {int(interactions['item'].max())} but there are {n_items} items"
            )
        csr = {}
        for name in ("train", "valid", "test"):
            part = interactions[interactions["split"] == name]
            csr[name] = to_csr(part["user"].to_numpy(np.int64), part["item"].to_numpy(np.int64), n_users)
        train = interactions[interactions["split"] == "train"]
        tu, ti = train["user"].to_numpy(np.int64), train["item"].to_numpy(np.int64)
        device = torch.device(device)
        return cls(
            n_users=n_users,
            n_items=n_items,
            train_users=torch.as_tensor(tu.copy(), device=device),
            train_items=torch.as_tensor(ti.copy(), device=device),
            adj=user_item_adjacency(tu, ti, n_users, n_items).to(device),
            features={
                m: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32).to(device) for m, x in features.items()
            },
            csr=csr,
        )


class Recommender(nn.Module):
    """Base class of every model the trainer serves.

    Subclasses set ``name`` (the registry key and the ``params.yaml`` section), ``Config``
    (a :class:`~sea.config.Section` dataclass for that section) and ``uses_features``, and
    implement :meth:`build` and :meth:`forward`. The rest has defaults.
    """

    name: ClassVar[str]
    Config: ClassVar[type[Section]]
    uses_features: ClassVar[bool] = False
    #: The ranking loss ``loss.kind: auto`` gives this model (SimpleX: ``ccl``; ``none``:
    #: the model's :meth:`extra_losses` are its whole objective, as BM3's).
    preferred_loss: ClassVar[str] = "bpr"
    #: False for a model that learns nothing by gradient (ItemKNNCBF: scores from the
    #: features and the training graph): :func:`~sea.train.fit` then evaluates it once.
    trainable: ClassVar[bool] = True
    #: The hyper-parameter grid its search defaults to (``tune.spaces.<name>`` in params.yaml
    #: holds the same): field of its section (or ``train.<f>``, ``loss.<f>``, ``club.<f>``)
    #: -> values; its published grid where there is one (docs/tuning.md).
    search_space: ClassVar[dict[str, list]] = {}

    @classmethod
    def build(
        cls,
        data: GraphData,
        cfg: Section,
        modalities: Sequence[str] | None = None,
        loss: LossConfig | None = None,
        club: ClubConfig | None = None,
    ) -> Recommender:
        """The model sized from ``data``, with its own section ``cfg``. A model with
        ``uses_features`` reads the features of ``modalities`` (``model.modalities``, in that
        order; None: every modality of ``data``); SEA's separation
        (:class:`~sea.models.separation.Separable`) reads the ``loss`` and ``club`` sections.
        The trainer passes all five; a model needing none of the last three ignores them
        (``*unused``)."""
        raise NotImplementedError

    def forward(self, data: GraphData) -> Embeddings:
        """Embed every user and item. In training mode a model may use a perturbed graph
        (FREEDOM's pruned edges); in eval mode it must be deterministic."""
        raise NotImplementedError

    def score(self, emb: Embeddings, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item: ``[len(users), n_items]``, a new tensor
        (the ranking masks the training items in it, in place)."""
        return emb.user[users] @ emb.item.T

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """The model's own loss terms besides the ranking loss (regularisation, SEA's CLUB
        and Solosim, FREEDOM's feature BPR). Terms with weight 0 should not be computed."""
        return {}

    def auxiliary_step(self, emb: Embeddings, batch: Batch) -> dict[str, torch.Tensor]:
        """Fit separately optimised parts (their own optimiser, no gradient into the model)
        before the main loss of this batch; returns values to log (0-d tensors: no host sync).
        Default: nothing."""
        return {}

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Per-epoch work drawn from the trainer's ``generator`` (edge pruning, schedules)."""

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the main optimiser (default: all; SEA leaves out its estimators)."""
        return self.parameters()

    def fitted_separately(self) -> list[nn.Parameter]:
        """The parameters outside :meth:`main_parameters` (SEA's estimators)."""
        return list(parameters_except(self, self.main_parameters()))


def parameters_except(module: nn.Module, excluded: Iterable[nn.Parameter]) -> Iterator[nn.Parameter]:
    """``module``'s parameters, in order, without ``excluded``."""
    skip = {id(p) for p in excluded}
    return (p for p in module.parameters() if id(p) not in skip)


@dataclass
class ModelConfig(Section):
    """Which model to train (``name``: a registered model, see :mod:`sea.models`) and the
    feature modalities it may read. The model's own sizes live in its own section,
    named after it (``sea:``, ``lightgcn:``, …)."""

    name: str = "sea"
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])

    def validate(self, section: str) -> None:
        require(bool(self.name), section, "name must name a model")
        require(
            len(self.modalities) >= 1 and len(set(self.modalities)) == len(self.modalities),
            section,
            "modalities must be a non-empty list without repeats",
        )
        for m in self.modalities:
            require_choice(m, ("image", "text"), section, "modalities[]")


REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: make ``cls`` selectable as ``model.name: <cls.name>``."""
    if not (isinstance(getattr(cls, "name", None), str) and dataclasses.is_dataclass(getattr(cls, "Config", None))):
        raise TypeError(f"{cls.__name__} needs a `name` string and a `Config` dataclass")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"two models are called {cls.name!r}: {REGISTRY[cls.name].__name__} and {cls.__name__}")
    REGISTRY[cls.name] = cls
    return cls


def model_class(name: str) -> type[Recommender]:
    """The model registered as ``name``; a ConfigError listing the known names otherwise.

    The registry is complete here: importing this module runs ``sea/models/__init__.py``
    first, which imports every model file of the package (each registers itself)."""
    if name not in REGISTRY:
        raise ConfigError(f"params.yaml [model]: name {shown(name)} is not a known model; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam as every optimiser here uses it: the fused kernel (one pass over each
    parameter instead of one per update term; the same update) where every parameter lives
    on the CPU or a CUDA device, the default implementation elsewhere."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
