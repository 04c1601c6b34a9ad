"""One typed, validated config per ``params.yaml`` section.

Each stage script reads only the sections it declares in ``dvc.yaml``. Unknown keys are an
error (a typo in ``dvc exp run -S`` must not be silently ignored), and every value is
checked once here so the library code can trust its arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sea.errors import MAX_SHOWN_CHARS, ConfigError, shorten, shown


#: The ranking losses ``loss.kind`` may name (see :func:`sea.losses.ranking_loss`), besides
#: ``auto`` (the model's ``preferred_loss``: ccl for SimpleX, bpr for every other model).
RANKING_LOSSES = ("bpr", "ccl", "softmax")
#: The ranking losses that compare cosines: a model trained with one ranks by cosine too.
COSINE_LOSSES = ("ccl", "softmax")
#: Where ``train.sampler`` takes negatives from: ``uniform`` draws ``train.negatives`` item
#: ids per positive; ``cross_batch`` (CBNS) also keeps a memory of recent batches' item
#: vectors as extra negatives of the softmax loss.
SAMPLERS = ("uniform", "cross_batch")


#: params.yaml is about 10 KB; a file a hundred times larger is not a params file, and is
#: refused before it is parsed.
MAX_PARAMS_BYTES = 1 << 20
#: Values (YAML nodes) once aliases are expanded; params.yaml has under 300. A 2.7 KB
#: "billion laughs" file (aliases nine deep) expands to 9**9 and took 3 GB and a minute
#: before it failed. Counted on the node graph, without expanding anything.
MAX_PARAMS_NODES = 100_000
#: Characters of all scalars once aliases are expanded: a long string repeated by aliases.
MAX_PARAMS_CHARS = 4 << 20
#: Longest single scalar. URLs and paths are at most a few KB; YAML 1.1 reads 1:2:3 as a
#: base-60 number in time quadratic in its length (400 KB of it took 12 s).
MAX_SCALAR_CHARS = 16 << 10
#: Deepest nesting of mappings and lists, aliases expanded; params.yaml nests 3 deep.
MAX_PARAMS_DEPTH = 32


class _TooLarge(Exception):
    """A params document over one of the limits: ``problem`` at YAML node ``node``."""

    def __init__(self, problem: str, node: Any = None, where: str = ""):
        super().__init__(problem)
        self.problem, self.node, self.where = problem, node, where


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader whose composer stops past :data:`MAX_PARAMS_DEPTH` nested nodes
    (it recurses once per level) and refuses scalars over :data:`MAX_SCALAR_CHARS`."""

    _depth = 0

    def compose_node(self, parent, index):
        """Compose one node, counting the nesting levels."""
        if self._depth >= MAX_PARAMS_DEPTH:
            raise _TooLarge(f"nests deeper than {MAX_PARAMS_DEPTH} levels", self.peek_event())
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor):
        """Compose a scalar, refusing a long one before it is resolved or constructed."""
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR_CHARS:
            raise _TooLarge(f"holds a value longer than {MAX_SCALAR_CHARS} characters", node)
        return node


def _measure(node: yaml.Node, where: str, depth: int, memo: dict[int, tuple[int, int, int] | None]
             ) -> tuple[int, int, int]:
    """``(nodes, characters, height)`` of ``node`` with its aliases expanded, computed once per
    node object (an alias is the anchored node itself), so a bomb costs its size in the file.
    Raises :class:`_TooLarge` naming ``where`` (the key path) as soon as a limit is passed."""
    key = id(node)
    if key in memo:
        if memo[key] is None:
            raise _TooLarge("has a YAML alias inside the collection it names (an endless value)", node, where)
        if depth + memo[key][2] > MAX_PARAMS_DEPTH:
            raise _TooLarge(f"nests deeper than {MAX_PARAMS_DEPTH} levels once YAML aliases are expanded",
                            node, where)
        return memo[key]
    if isinstance(node, yaml.ScalarNode):
        memo[key] = (1, len(node.value), 0)
        return memo[key]
    if depth >= MAX_PARAMS_DEPTH:
        raise _TooLarge(f"nests deeper than {MAX_PARAMS_DEPTH} levels once YAML aliases are expanded", node, where)
    memo[key] = None  # in progress: meeting it again below means a cycle
    if isinstance(node, yaml.MappingNode):
        children = []
        for k, v in node.value:
            label = k.value[:MAX_SHOWN_CHARS] if isinstance(k, yaml.ScalarNode) else "?"
            children += [(k, where), (v, shorten(f"{where}.{label}" if where else label))]
    else:
        children = [(v, shorten(f"{where}[{i}]")) for i, v in enumerate(node.value)]
    nodes, chars, height = 1, 0, 0
    for child, child_where in children:
        n, c, h = _measure(child, child_where, depth + 1, memo)
        nodes, chars, height = nodes + n, chars + c, max(height, h + 1)
        if nodes > MAX_PARAMS_NODES:
            raise _TooLarge(f"expands to more than {MAX_PARAMS_NODES} values once YAML aliases are "
                            f"expanded; a params file holds a few hundred", child, child_where)
        if chars > MAX_PARAMS_CHARS:
            raise _TooLarge(f"expands to more than {MAX_PARAMS_CHARS} characters once YAML aliases are "
                            f"expanded", child, child_where)
    memo[key] = (nodes, chars, height)
    return memo[key]


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The params file as a dict of sections, read with bounded time and memory: at most
    :data:`MAX_PARAMS_BYTES`, composed with PyYAML's SafeLoader into a node graph whose
    alias-expanded size and depth are measured (:func:`_measure`) before any Python value
    is built. Every refusal is one :class:`ConfigError` line naming the file (and the line
    and key path where there is one)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_PARAMS_BYTES} bytes; a params file is a few KB")
    loader = None
    try:
        loader = _BoundedLoader(data)  # reads the encoding (UTF-8/16) from the first bytes
        node = loader.get_single_node()
        if node is not None:
            _measure(node, "", 0, {})
        params = None if node is None else loader.construct_document(node)
    except _TooLarge as e:
        line = f", line {e.node.start_mark.line + 1}" if e.node is not None and e.node.start_mark else ""
        key = f", at {shorten(e.where)}" if e.where else ""
        raise ConfigError(f"{path}{line}{key}: {e.problem}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        what = " ".join(f"{e.context or ''} {e.problem or ''}".split())
        raise ConfigError(f"{path}{line}: not valid YAML: {shorten(what)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {shorten(' '.join(str(e).split()))}") from None
    except ValueError as e:  # constructing a value: a date like 2024-13-45, an int of 5000 digits
        raise ConfigError(f"{path}: a value cannot be read: {shorten(str(e))}") from None
    finally:
        if loader is not None:
            loader.dispose()
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
            raise ConfigError(f"{name}: expected a list, got {shown(value)}")
        return [_coerce(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}")
        try:  # YAML reads 1e-4 (no dot) as a string: accept numeric strings
            number = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}: expected a finite number, got {shown(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {shown(value)}")
        if "\0" in value:
            raise ConfigError(f"{name}: must not contain a NUL character, got {shown(value)}")
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")  # a bug in this module


class Section:
    """Mixin: build a dataclass from a params.yaml mapping, checking names and types."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, section: str):
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"params.yaml [{section}]: expected a mapping of keys, got {shown(data)}")
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise ConfigError(f"params.yaml [{section}]: unknown key(s) {shown(unknown)}; known: {sorted(known)}")
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


def require(cond: bool, section: str, msg: str) -> None:
    """A :class:`ConfigError` ``params.yaml [section]: msg`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"params.yaml [{section}]: {msg}")


def require_choice(value: str, choices: tuple[str, ...], section: str, name: str) -> None:
    """A :class:`ConfigError` unless ``value`` is one of ``choices``."""
    require(value in choices, section, f"{name} must be one of {list(choices)}, got {shown(value)}")


_DEVICE = re.compile(r"(auto|cpu|cuda)(:(\d+))?")
#: Longest file or folder name most file systems accept, in UTF-8 bytes.
MAX_NAME_BYTES = 255


def check_device(value: str, section: str, name: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""
    m = _DEVICE.fullmatch(value)
    require(m is not None and (m[3] is None or m[1] == "cuda"), section,
           f"{name} must be auto, cpu, cuda or cuda:N, got {shown(value)}")
    if m[1] == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m[3] or 0)
        require(index < count, section, f"{name}: {shown(value)} asked for, but this machine has "
               f"{count} CUDA device(s); use auto or cpu")


def check_folder_name(value: str, section: str, name: str) -> None:
    """One plain folder name: not empty, '.' or '..', no path separator or control
    character, at most 255 bytes — it names a folder that stages replace whole."""
    require(value not in ("", ".", "..") and not any(c in value for c in "/\\")
           and all(c.isprintable() for c in value) and value == value.strip(), section,
           f"{name} must be one plain folder name (no '/', '\\', '.' or '..', no control "
           f"characters or surrounding spaces), got {shown(value)}")
    require(len(value.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES, section,
           f"{name} is longer than {MAX_NAME_BYTES} bytes")


@dataclass
class LossConfig(Section):
    """The ranking loss every model trains with (``kind``) and SEA's separation terms."""

    kind: str = "auto"
    club_weight: float = 0.006
    solosim_weight: float = 0.012
    temperature: float = 0.2
    distance: str = "club"
    # kind: ccl (SimpleX's cosine contrastive loss)
    ccl_margin: float = 0.9
    ccl_negative_weight: float = 150.0
    # kind: softmax (in-batch sampled softmax, + the CBNS memory with train.sampler: cross_batch)
    softmax_temperature: float = 0.1
    softmax_logq: bool = True

    def validate(self, section: str) -> None:
        require_choice(self.kind, ("auto",) + RANKING_LOSSES, section, "kind")
        require(self.club_weight >= 0 and self.solosim_weight >= 0, section, "weights must be >= 0")
        require(self.temperature > 0, section, "temperature must be > 0")
        require_choice(self.distance, ("club", "l2"), section, "distance")
        require(-1.0 <= self.ccl_margin < 1.0, section, "ccl_margin must be in [-1, 1) (a cosine)")
        require(self.ccl_negative_weight >= 0, section, "ccl_negative_weight must be >= 0")
        require(self.softmax_temperature > 0, section, "softmax_temperature must be > 0")


@dataclass
class ClubConfig(Section):
    steps: int = 50
    lr: float = 1e-3
    hidden_dim: int = 16
    pairing: str = "paper"

    def validate(self, section: str) -> None:
        require(self.steps >= 0 and self.lr > 0 and self.hidden_dim > 0,
               section, "steps >= 0, lr > 0, sizes > 0")
        require_choice(self.pairing, ("paper", "reference"), section, "pairing")


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
    sampler: str = "uniform"  # uniform | cross_batch (CBNS: needs loss.kind softmax)
    cbns_memory_batches: int = 4  # M: the memory holds the item vectors of the last M batches
    cbns_warmup_steps: int = 100  # W: the memory's entries serve as negatives from step W on
    # Distributed training (sea/distributed.py): N > 1 runs the stage as N torchrun ranks,
    # each on 1/N of every batch (batch_size stays the global batch).
    processes: int = 1

    @property
    def run_seeds(self) -> list[int]:
        """The seeds to train: ``seeds`` when given, else ``[seed]``."""
        return list(self.seeds) or [self.seed]

    def validate(self, section: str) -> None:
        require(len(set(self.seeds)) == len(self.seeds), section, "seeds must not repeat")
        require(self.seed >= 0 and all(s >= 0 for s in self.seeds), section, "seeds must be >= 0")
        check_device(self.device, section)
        require(self.lr > 0 and self.batch_size > 0 and self.max_epochs > 0, section,
               "lr, batch_size and max_epochs must be positive")
        require(self.patience >= 1 and self.eval_every >= 1, section, "patience and eval_every must be >= 1")
        require(self.negatives >= 1, section, "negatives must be >= 1")
        require_choice(self.sampler, SAMPLERS, section, "sampler")
        require(self.cbns_memory_batches >= 0 and self.cbns_warmup_steps >= 0, section,
               "cbns_memory_batches and cbns_warmup_steps must be >= 0")
        require(self.processes >= 1, section, "processes must be >= 1")
        require(self.batch_size % self.processes == 0, section,
               f"batch_size {shown(self.batch_size)} is the global batch: it must be a multiple of processes "
               f"({shown(self.processes)}), each process taking batch_size / processes rows")
        require(self.processes == 1 or ":" not in self.device, section,
               f"device {shown(self.device)} names one GPU; with processes > 1 use auto, cuda or cpu "
               f"(each process takes the GPU of its local rank)")

    def to_dict(self) -> dict[str, Any]:
        """The section's values; ``processes`` only when it is not 1, so that a single-process
        run's checkpoint (which stores these params) keeps the bytes it had before the param."""
        values = super().to_dict()
        if self.processes == 1:
            del values["processes"]
        return values


@dataclass
class EvalConfig(Section):
    topk: list[int] = field(default_factory=lambda: [10, 20])
    select: str = "recall@20"
    batch_size: int = 4096

    def validate(self, section: str) -> None:
        require(len(self.topk) > 0 and all(k > 0 for k in self.topk), section, "topk must be positive")
        require(len(set(self.topk)) == len(self.topk), section, "topk must not repeat")
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        metric, _, k = self.select.partition("@")
        require(metric in ("recall", "ndcg", "precision", "map", "hit") and re.fullmatch(r"[0-9]{1,9}", k) is not None,
               section, f"select must look like recall@20, got {shown(self.select)}")
        require(int(k) in self.topk, section,
               f"select {shown(self.select)} needs {k} in topk {shown(self.topk)} (metrics are computed at those cut-offs)")


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
        from sea.models.base import ModelConfig, model_class  # (moves out of config.py next)

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
        if setup.train.sampler == "cross_batch" and setup.ranking_loss != "softmax":
            raise ConfigError(f"params.yaml [train]: sampler: cross_batch feeds the softmax loss; "
                              f"loss.kind is {shown(setup.ranking_loss)} (set loss.kind: softmax)")
        return setup

    @property
    def ranking_loss(self) -> str:
        """``loss.kind``, with ``auto`` resolved to the model's ``preferred_loss`` (SimpleX:
        ccl; every model that names none: bpr)."""
        from sea.models.base import model_class

        if self.loss.kind != "auto":
            return self.loss.kind
        return model_class(self.model.name).preferred_loss

    @property
    def ranks_by_cosine(self) -> bool:
        """Whether the ranking loss compares cosines (then evaluation ranks by cosine too)."""
        return self.ranking_loss in COSINE_LOSSES

    def to_dict(self) -> dict[str, Any]:
        """The params sections this setup was built from (the model's under its name)."""
        return {"model": self.model.to_dict(), self.model.name: self.model_cfg.to_dict()} | {
            k: getattr(self, k).to_dict() for k in ("loss", "club", "train", "eval")}
