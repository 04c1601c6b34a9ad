"""One typed, validated config per ``params.yaml`` section.

Each stage script reads only the sections it declares in ``dvc.yaml``. Unknown keys are an
error (a typo in ``dvc exp run -S`` must not be silently ignored), and every value is
checked once here so the library code can trust its arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


#: The ranking losses ``loss.kind`` may name (see :func:`sea.losses.ranking_loss`).
RANKING_LOSSES = ("bpr",)


class ConfigError(ValueError):
    """A params.yaml value that is missing, unknown or out of range."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return params


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (str, int, float, bool, list[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string: accept numeric strings
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")  # a bug in this module


class Section:
    """Mixin: build a dataclass from a params.yaml mapping, checking names and types."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, section: str):
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"params.yaml [{section}]: unknown key(s) {unknown}; known: {sorted(known)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                kwargs[f.name] = tp.from_dict(data[f.name], f"{section}.{f.name}")
            else:
                kwargs[f.name] = _coerce(f"{section}.{f.name}", tp, data[f.name])
        obj = cls(**kwargs)
        obj.validate(section)
        return obj

    def validate(self, section: str) -> None:  # overridden where ranges matter
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(cond: bool, section: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"params.yaml [{section}]: {msg}")


def _choice(value: str, choices: tuple[str, ...], section: str, name: str) -> None:
    _check(value in choices, section, f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class DatasetConfig(Section):
    """Where the data comes from.

    ``source: amazon``: raw review + metadata dumps at URLs (http(s)://, file:// or a path
    relative to the repo). ``source: mmrec``: an MMRec folder at ``path`` (``<name>.inter``,
    ``image_feat.npy``, ``text_feat.npy``) used in place of parsing, splitting and encoding.
    """

    name: str = "sample"
    source: str = "amazon"
    reviews_url: str = ""
    reviews_sha256: str | None = None
    meta_url: str | None = None
    meta_sha256: str | None = None
    allow_truncated: bool = False
    path: str | None = None

    def validate(self, section: str) -> None:
        _check(bool(self.name) and "/" not in self.name, section, "name must be a non-empty folder name")
        _choice(self.source, ("amazon", "mmrec"), section, "source")
        if self.source == "amazon":
            _check(bool(self.reviews_url), section, "reviews_url is required with source: amazon")
        else:
            _check(bool(self.path), section, "path (the MMRec folder) is required with source: mmrec")

    @property
    def raw_dir(self) -> Path:
        return Path("data/raw") / self.name

    @staticmethod
    def local_name(url: str) -> str:
        """File name a URL is saved under: its last path component."""
        return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


@dataclass
class GraphConfig(Section):
    k_core: int = 5

    def validate(self, section: str) -> None:
        _check(self.k_core >= 1, section, "k_core must be >= 1")


@dataclass
class SplitConfig(Section):
    method: str = "mmrec"
    seed: int = 999

    def validate(self, section: str) -> None:
        _choice(self.method, ("mmrec", "temporal", "leave_one_out"), section, "method")


@dataclass
class TextFeatureConfig(Section):
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "auto"


@dataclass
class ImageFeatureConfig(Section):
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    timeout: float = 10.0
    workers: int = 8


@dataclass
class FeaturesConfig(Section):
    text: TextFeatureConfig = field(default_factory=TextFeatureConfig)
    image: ImageFeatureConfig = field(default_factory=ImageFeatureConfig)


@dataclass
class ModelConfig(Section):
    """Which model to train (``name``: a registered model, see :mod:`sea.models`) and the
    feature modalities it may read. The model's own sizes live in its own section,
    named after it (``sea:``, ``lightgcn:``, …)."""

    name: str = "sea"
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])

    def validate(self, section: str) -> None:
        _check(bool(self.name), section, "name must name a model")
        _check(len(self.modalities) >= 1 and len(set(self.modalities)) == len(self.modalities),
               section, "modalities must be a non-empty list without repeats")
        for m in self.modalities:
            _choice(m, ("image", "text"), section, "modalities[]")


@dataclass
class LossConfig(Section):
    """The ranking loss every model trains with (``kind``) and SEA's separation terms."""

    kind: str = "bpr"
    club_weight: float = 0.006
    solosim_weight: float = 0.012
    temperature: float = 0.2
    distance: str = "club"

    def validate(self, section: str) -> None:
        _choice(self.kind, RANKING_LOSSES, section, "kind")
        _check(self.club_weight >= 0 and self.solosim_weight >= 0, section, "weights must be >= 0")
        _check(self.temperature > 0, section, "temperature must be > 0")
        _choice(self.distance, ("club", "l2"), section, "distance")


@dataclass
class ClubConfig(Section):
    steps: int = 50
    lr: float = 1e-3
    hidden_dim: int = 16
    pairing: str = "paper"

    def validate(self, section: str) -> None:
        _check(self.steps >= 0 and self.lr > 0 and self.hidden_dim > 0,
               section, "steps >= 0, lr > 0, sizes > 0")
        _choice(self.pairing, ("paper", "reference"), section, "pairing")


@dataclass
class TrainConfig(Section):
    device: str = "auto"
    lr: float = 1e-4
    batch_size: int = 2048
    max_epochs: int = 1000
    patience: int = 20
    seed: int = 999
    seeds: list[int] = field(default_factory=list)
    eval_every: int = 1
    negatives: int = 1  # uniform negatives per positive

    @property
    def run_seeds(self) -> list[int]:
        """The seeds to train: ``seeds`` when given, else ``[seed]``."""
        return list(self.seeds) or [self.seed]

    def validate(self, section: str) -> None:
        _check(len(set(self.seeds)) == len(self.seeds), section, "seeds must not repeat")
        _check(self.lr > 0 and self.batch_size > 0 and self.max_epochs > 0, section,
               "lr, batch_size and max_epochs must be positive")
        _check(self.patience >= 1 and self.eval_every >= 1, section, "patience and eval_every must be >= 1")
        _check(self.negatives >= 1, section, "negatives must be >= 1")


@dataclass
class EvalConfig(Section):
    topk: list[int] = field(default_factory=lambda: [10, 20])
    select: str = "recall@20"
    batch_size: int = 4096

    def validate(self, section: str) -> None:
        _check(len(self.topk) > 0 and all(k > 0 for k in self.topk), section, "topk must be positive")
        metric, _, k = self.select.partition("@")
        _check(metric in ("recall", "ndcg", "precision", "map", "hit") and k.isdigit(), section,
               f"select must look like recall@20, got {self.select!r}")


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
    def from_params(cls, params: dict[str, Any]) -> "TrainingSetup":
        from sea.models.base import model_class  # sea.models imports this module

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
            raise ConfigError("params.yaml [club]: pairing: reference pairs text with image: "
                              "it needs both modalities")
        return setup

    def to_dict(self) -> dict[str, Any]:
        """The params sections this setup was built from (the model's under its name)."""
        return {"model": self.model.to_dict(), self.model.name: self.model_cfg.to_dict()} | {
            k: getattr(self, k).to_dict() for k in ("loss", "club", "train", "eval")}
