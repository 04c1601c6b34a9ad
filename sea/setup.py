"""What the train and evaluate stages read: the ``train`` section (:class:`TrainConfig`)
and :class:`TrainingSetup`, every section a run is made of (``model`` and the chosen
model's own section, ``loss``, ``club``, ``train``, ``eval``), checked together.

Each section is defined beside the code that reads it: ``model`` in :mod:`sea.config`,
the model's own in its file under :mod:`sea.models`, ``loss`` and ``club`` in
:mod:`sea.losses`, ``eval`` in :mod:`sea.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sea.config import Section, check_device, require, require_choice
from sea.errors import ConfigError, shown
from sea.losses import COSINE_LOSSES, ClubConfig, LossConfig, RankingLoss
from sea.metrics import EvalConfig
from sea.models.base import GraphData, ModelConfig, model_class
from sea.ops import full_sum
from sea.samplers import SAMPLERS, CrossBatchMemory


@dataclass
class TrainConfig(Section):
    """params.yaml [train]: the device, the optimiser and its batches, early stopping, the
    seeds, the negatives (``sampler``) and the number of processes."""

    device: str = "auto"
    lr: float = 1e-4
    batch_size: int = 2048
    max_epochs: int = 1000
    patience: int = 20
    seed: int = 999
    seeds: list[int] = field(default_factory=list)
    eval_every: int = 1
    negatives: int = 1  # uniform negatives per positive
    sampler: str = "uniform"  # uniform | cross_batch (CBNS: needs loss.kind softmax)
    cbns_memory_batches: int = 4  # M: the memory holds the item vectors of the last M batches
    cbns_warmup_steps: int = 100  # W: the memory's entries serve as negatives from step W on
    # Distributed training (sea/distributed.py): N > 1 runs the stage as N torchrun ranks,
    # each on 1/N of every batch (batch_size stays the global batch).
    processes: int = 1
    # With processes > 1: divide the hops of the shared propagation (sea/models/propagation.py)
    # among the processes, each multiplying its block of the graph's rows, instead of each
    # propagating the whole graph.
    partition_graph: bool = False
    # Mirror Gradient (Zhong et al., WWW 2024), for any model: every mirror_interval-th batch
    # takes two steps, on mirror_alpha1 * L, then on -mirror_alpha2 * L at the new weights.
    mirror_gradient: bool = False
    mirror_alpha1: float = 1.0
    mirror_alpha2: float = 0.1  # the authors' grid: [0.1, 0.2, 0.3]
    mirror_interval: int = 3  # beta: the authors' setting
    # The epoch's regime (docs/scale.md): None is the published models' exact one (batches of
    # batch_size, one full-graph forward each); S takes S steps an epoch, each over 1/S of the
    # shuffled training pairs, so the forwards per epoch stay S however large the graph grows.
    steps_per_epoch: int | None = None

    @property
    def run_seeds(self) -> list[int]:
        """The seeds to train: ``seeds`` when given, else ``[seed]``."""
        return list(self.seeds) or [self.seed]

    def validate(self, section: str) -> None:
        require(len(set(self.seeds)) == len(self.seeds), section, "seeds must not repeat")
        require(self.seed >= 0 and all(s >= 0 for s in self.seeds), section, "seeds must be >= 0")
        check_device(self.device, section)
        require(
            self.lr > 0 and self.batch_size > 0 and self.max_epochs > 0,
            section,
            "lr, batch_size and max_epochs must be positive",
        )
        require(self.patience >= 1 and self.eval_every >= 1, section, "patience and eval_every must be >= 1")
        require(self.negatives >= 1, section, "negatives must be >= 1")
        require_choice(self.sampler, SAMPLERS, section, "sampler")
        require(
            self.cbns_memory_batches >= 0 and self.cbns_warmup_steps >= 0,
            section,
            "cbns_memory_batches and cbns_warmup_steps must be >= 0",
        )
        require(self.processes >= 1, section, "processes must be >= 1")
        require(
            not self.partition_graph or self.processes > 1,
            section,
            "partition_graph divides the graph among processes: it needs processes >= 2",
        )
        require(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            section,
            f"steps_per_epoch must be null (batches of batch_size) or >= 1, got {shown(self.steps_per_epoch)}",
        )
        require(
            self.mirror_alpha1 > 0 and self.mirror_alpha2 >= 0 and self.mirror_interval >= 1,
            section,
            "mirror_alpha1 must be > 0, mirror_alpha2 >= 0 and mirror_interval >= 1",
        )
        require(
            self.batch_size % self.processes == 0,
            section,
            f"batch_size {shown(self.batch_size)} is the global batch: it must be a multiple of processes "
            f"({shown(self.processes)}), each process taking batch_size / processes rows",
        )
        require(
            self.processes == 1 or ":" not in self.device,
            section,
            f"device {shown(self.device)} names one GPU; with processes > 1 use auto, cuda or cpu "
            f"(each process takes the GPU of its local rank)",
        )

    def to_dict(self) -> dict[str, Any]:
        """The section's values; ``processes`` only when it is not 1, ``partition_graph`` and
        ``steps_per_epoch`` only when set, and the ``mirror_*`` values only with
        ``mirror_gradient``, so that a run without them keeps the checkpoint bytes (the
        checkpoint stores these params) it had before these params existed."""
        values = super().to_dict()
        if self.steps_per_epoch is None:
            del values["steps_per_epoch"]
        if self.processes == 1:
            del values["processes"]
        if not self.partition_graph:
            del values["partition_graph"]
        if not self.mirror_gradient:
            for key in ("mirror_gradient", "mirror_alpha1", "mirror_alpha2", "mirror_interval"):
                del values[key]
        return values

    def batch_bounds(self, n_train: int) -> list[tuple[int, int]]:
        """The (start, stop) rows of each batch of an epoch over ``n_train`` shuffled training
        pairs: slices of ``batch_size`` (the last one shorter) or, with ``steps_per_epoch``
        S, S slices whose sizes differ by one at most (the first ``n_train % S`` one longer)."""
        if self.steps_per_epoch is None:
            return [(b, min(b + self.batch_size, n_train)) for b in range(0, n_train, self.batch_size)]
        steps = self.steps_per_epoch
        if steps > n_train:
            raise ConfigError(
                f"params.yaml [train]: steps_per_epoch {steps} is more than the {n_train} training pairs "
                "(each step needs one at least)"
            )
        size, longer = divmod(n_train, steps)
        stops = [(i + 1) * size + min(i + 1, longer) for i in range(steps)]
        return list(zip([0, *stops[:-1]], stops, strict=True))

    @property
    def mirror_steps(self) -> tuple[float, float] | None:
        """Mirror Gradient's (alpha1, alpha2), or None when it is off."""
        return (self.mirror_alpha1, self.mirror_alpha2) if self.mirror_gradient else None


@dataclass
class TrainingSetup:
    """Everything the train and evaluate stages read: ``model`` (which model, which
    modalities), the chosen model's own section (``model_cfg``, parsed with that model
    class's ``Config``), ``loss``, ``club``, ``train`` and ``eval``."""

    model: ModelConfig
    model_cfg: Section
    loss: LossConfig
    club: ClubConfig
    train: TrainConfig
    eval: EvalConfig

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainingSetup:
        model = ModelConfig.from_dict(params.get("model"), "model")
        setup = cls(
            model=model,
            model_cfg=model_class(model.name).Config.from_dict(params.get(model.name), model.name),
            loss=LossConfig.from_dict(params.get("loss"), "loss"),
            club=ClubConfig.from_dict(params.get("club"), "club"),
            train=TrainConfig.from_dict(params.get("train"), "train"),
            eval=EvalConfig.from_dict(params.get("eval"), "eval"),
        )
        if setup.club.pairing == "reference" and not {"image", "text"} <= set(setup.model.modalities):
            raise ConfigError("params.yaml [club]: pairing: reference pairs text with image: it needs both modalities")
        if setup.ranking_loss == "none" and model_class(model.name).preferred_loss != "none":
            raise ConfigError(
                f"params.yaml [loss]: kind: none trains on a model's own terms alone, and {shown(model.name)} "
                "has no objective of its own: name a ranking loss (bpr, ccl, softmax)"
            )
        if setup.train.sampler == "cross_batch" and setup.ranking_loss != "softmax":
            raise ConfigError(
                f"params.yaml [train]: sampler: cross_batch feeds the softmax loss; "
                f"loss.kind is {shown(setup.ranking_loss)} (set loss.kind: softmax)"
            )
        return setup

    @property
    def ranking_loss(self) -> str:
        """``loss.kind``, with ``auto`` resolved to the model's ``preferred_loss`` (SimpleX:
        ccl; every model that names none: bpr)."""
        if self.loss.kind != "auto":
            return self.loss.kind
        return model_class(self.model.name).preferred_loss

    @property
    def ranks_by_cosine(self) -> bool:
        """Whether the ranking loss compares cosines (then evaluation ranks by cosine too)."""
        return self.ranking_loss in COSINE_LOSSES

    def make_ranking_loss(self, data: GraphData) -> RankingLoss:
        """The ranking term of :func:`sea.train.train_step` for this setup on ``data``: the
        resolved ``loss.kind`` with the ``loss`` section's params; for ``softmax`` with
        ``softmax_logq``, log q of each item (its share of the training pairs); for
        ``train.sampler: cross_batch``, CBNS's memory."""
        kind, tc = self.ranking_loss, self.train
        log_q = None
        if kind == "softmax" and self.loss.softmax_logq:
            counts = torch.bincount(data.train_items, minlength=data.n_items).float()
            log_q = (counts / full_sum(counts)).log()  # -inf only for items never a positive
        memory = CrossBatchMemory(tc.cbns_memory_batches, tc.cbns_warmup_steps) if tc.sampler == "cross_batch" else None
        return RankingLoss(kind, self.loss, log_q, memory)

    def to_dict(self) -> dict[str, Any]:
        """The params sections this setup was built from (the model's under its name)."""
        return {"model": self.model.to_dict(), self.model.name: self.model_cfg.to_dict()} | {
            k: getattr(self, k).to_dict() for k in ("loss", "club", "train", "eval")
        }
