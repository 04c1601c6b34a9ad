"""Hyper-parameter search (issue 18): each model's published grid, searched with Optuna on
validation, the best few configurations re-trained over seeds, test metrics for the pick only.

``params.yaml [tune]`` (:class:`TuneConfig`) holds the search settings and one space per
model (``spaces``): each key a field of the model's own section (``reg_weight``) or a
dotted key of the ``train``, ``loss`` or ``club`` section (``train.lr``), each value a list
(grid points, categorical) or ``{low, high, log}`` (a range: random and tpe only). Every
point of a space is checked by the sections' own configs before anything trains.

The search (:func:`run_worker`): an Optuna study in a JournalStorage file
(``data/cache/tuning/<model>/<key>.journal``, git-ignored; ``<key>`` is a hash of what the
study's values depend on: the space, the sampler and pruner settings, the other training
params and the data), so a killed search resumes where it stopped and several worker
processes can share one study. Each trial builds the :class:`~sea.setup.TrainingSetup`
with its values, trains with :func:`sea.train.fit` on the train split and reports the
validation ``eval.select`` value at every evaluation; the pruner (median or successive
halving) stops a trial whose curve is worse than the others'. Nothing in the search reads
the test split.

The selection (:func:`select`): the ``top`` best completed trials are re-trained over
``seeds`` exactly as ``dvc exp run -S 'train.seeds=[...]' -S <values>`` trains them; the one
with the best mean validation value is the pick. Only then :func:`test_metrics` evaluates
the pick's seeds on the test split. :func:`write_reports` writes
``reports/tuning/<model>.json`` and ``.md`` (a report with timings: not a DVC output).
See docs/tuning.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import shlex
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from sea import artifacts
from sea.config import Section, require, require_choice
from sea.errors import ConfigError, shown
from sea.evaluation import evaluate
from sea.features import resolve_device
from sea.files import atomic_path, sha256_file, write_json, write_text
from sea.losses import ClubConfig, LossConfig
from sea.models.base import REGISTRY, GraphData, model_class
from sea.setup import TrainConfig, TrainingSetup
from sea.train import build_model, fit, load_graph_data, seed_everything

try:
    import fcntl
except ImportError:  # not POSIX: no guard against two searches of one study at once
    fcntl = None

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha")
#: Sections a dotted key of a space may name besides the model's own.
OTHER_SECTIONS = {"train": TrainConfig, "loss": LossConfig, "club": ClubConfig}
#: Keys a search must not vary: they say how a run is made, not what is trained.
FIXED_KEYS = {"train.seed", "train.seeds", "train.device", "train.processes"}
#: Grid points checked one by one against the configs; a larger product is checked value by value.
MAX_CHECKED_POINTS = 10_000
CACHE = Path("data/cache/tuning")
#: Each trial's seconds (this machine's timings, kept out of the reports DVC caches).
TIMINGS = Path("logs/tuning")
REPORTS = Path("reports/tuning")


def default_spaces() -> dict[str, dict[str, Any]]:
    """Each registered model's own grid (:attr:`~sea.models.base.Recommender.search_space`):
    MMRec's grids for the baselines (SEA.md §4a), the authors' or a small one for the others."""
    return {name: copy.deepcopy(cls.search_space) for name, cls in sorted(REGISTRY.items()) if cls.search_space}


# ------------------------------------------------------------------ spaces


@dataclass(frozen=True)
class Choice:
    """A list of values: the grid's points along one key (categorical for random and tpe)."""

    values: tuple

    def to_dict(self) -> list:
        return list(self.values)


@dataclass(frozen=True)
class Range:
    """``{low, high, log}``: integers when the field is an integer, else floats."""

    low: float | int
    high: float | int
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int)

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "log": self.log}


Spec = Choice | Range


def split_key(model: str, key: str) -> tuple[str, str]:
    """``(section, field)`` of a space key: ``reg_weight`` -> (model, reg_weight),
    ``train.lr`` -> (train, lr)."""
    section, _, name = key.rpartition(".")
    return section or model, name


def _section_class(model: str, section: str) -> type[Section]:
    return OTHER_SECTIONS[section] if section in OTHER_SECTIONS else model_class(model).Config


def _inner(error: ConfigError) -> str:
    return str(error).removeprefix("params.yaml ")


def _checked(model: str, section: str, values: dict[str, Any], where: str) -> Section:
    """The section's config built from ``values`` alone; its refusal as one tune line."""
    try:
        return _section_class(model, section).from_dict(values, section)
    except ConfigError as e:
        shown_values = ", ".join(f"{k}: {shown(v)}" for k, v in values.items())
        raise ConfigError(f"params.yaml [tune]: {where}: {{{shown_values}}} is refused: {_inner(e)}") from None


def parse_space(model: str, raw: Any, section: str = "tune") -> dict[str, Spec]:
    """One model's space, every key and value checked (one ``params.yaml [tune]`` line on
    the first problem), values normalised by the sections' configs (``1e-4`` -> 0.0001)."""
    where = f"spaces.{model}"
    require(isinstance(raw, dict) and raw, section, f"{where} must be a mapping of keys to lists or ranges")
    try:
        model_class(model)
    except ConfigError:
        raise ConfigError(f"params.yaml [{section}]: {where}: {shown(model)} is not a known model") from None
    space: dict[str, Spec] = {}
    for key, value in raw.items():
        here = f"{where}.{key}"
        require(isinstance(key, str) and key.count(".") <= 1, section, f"{where}: bad key {shown(key)}")
        sec, name = split_key(model, key)
        require(
            sec == model or sec in OTHER_SECTIONS,
            section,
            f"{where}: key {shown(key)} names section {shown(sec)}; a key is a field of [{model}] or "
            f"train.<field>, loss.<field>, club.<field>",
        )
        require(key not in FIXED_KEYS, section, f"{here}: {key} is not something a search varies")
        known = {f.name for f in dataclasses.fields(_section_class(model, sec))}
        require(name in known, section, f"{here}: {shown(name)} is not a field of [{sec}]; known: {sorted(known)}")
        if isinstance(value, list):
            require(len(value) > 0, section, f"{here}: the list of values is empty")
            normal = [getattr(_checked(model, sec, {name: v}, where), name) for v in value]
            require(len(set(map(repr, normal))) == len(normal), section, f"{here}: a value is listed twice")
            space[key] = Choice(tuple(normal))
        elif isinstance(value, dict):
            extra = sorted(set(value) - {"low", "high", "log"}, key=str)
            require(not extra, section, f"{here}: a range has only low, high and log, got {shown(extra)}")
            require("low" in value and "high" in value, section, f"{here}: a range needs low and high")
            low = getattr(_checked(model, sec, {name: value["low"]}, where), name)
            high = getattr(_checked(model, sec, {name: value["high"]}, where), name)
            require(
                all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)),
                section,
                f"{here}: a range needs a numeric field; {sec}.{name} is not one (use a list)",
            )
            log = value.get("log", False)
            require(isinstance(log, bool), section, f"{here}: log must be true or false, got {shown(log)}")
            require(low <= high, section, f"{here}: low {shown(low)} > high {shown(high)}")
            require(not log or low > 0, section, f"{here}: a log range needs low > 0, got {shown(low)}")
            space[key] = Range(low, high, log)
        else:
            require(False, section, f"{here}: expected a list of values or {{low, high, log}}, got {shown(value)}")
    _check_points(model, space, where)
    return space


def _check_points(model: str, space: dict[str, Spec], where: str) -> None:
    """Every combination of a section's values (ranges at both ends) through its config."""
    by_section: dict[str, dict[str, tuple]] = {}
    for key, spec in space.items():
        sec, name = split_key(model, key)
        ends = spec.values if isinstance(spec, Choice) else (spec.low, spec.high)
        by_section.setdefault(sec, {})[name] = ends
    for sec, axes in by_section.items():
        if math.prod(len(v) for v in axes.values()) > MAX_CHECKED_POINTS:
            continue  # each value was checked alone
        for combo in itertools.product(*axes.values()):
            _checked(model, sec, dict(zip(axes, combo, strict=True)), where)


def grid_points(space: dict[str, Spec]) -> list[dict[str, Any]]:
    """Every point of a space of lists, in the order of its keys and values."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k].values for k in keys))]


def _space_dict(space: dict[str, Spec]) -> dict[str, Any]:
    return {k: s.to_dict() for k, s in space.items()}


# ------------------------------------------------------------------ the section


@dataclass
class TuneConfig(Section):
    """params.yaml [tune]: how :mod:`sea.tune` searches (``scripts/tune.py``), and one
    space per model (``spaces``; see the module docstring and docs/tuning.md)."""

    sampler: str = "grid"  # grid (the whole grid) | random | tpe
    trials: int = 20  # random and tpe: trials in all (pruned ones count)
    pruner: str = "median"  # none | median | asha (successive halving), on validation per evaluation
    startup_trials: int = 5  # median: no pruning before this many trials completed
    warmup_epochs: int = 10  # median: no pruning before this epoch; asha: its minimum resource
    reduction_factor: int = 3  # asha: 1/reduction_factor of the trials go on at each rung
    processes: int = 1  # worker processes sharing one study
    top: int = 3  # best trials re-trained over seeds
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    max_epochs: int | None = None  # trials train at most this many epochs (null: train.max_epochs)
    seed: int = 0  # the sampler's seed
    spaces: dict[str, Any] = field(default_factory=default_spaces)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, section: str) -> TuneConfig:
        """As :meth:`Section.from_dict`; ``spaces`` replaces the default space of each model
        it names and keeps the others'."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"params.yaml [{section}]: expected a mapping of keys, got {shown(data)}")
        data = dict(data or {})
        spaces = data.pop("spaces", None)
        obj = super().from_dict(data, section)
        if spaces is not None:
            require(isinstance(spaces, dict), section, f"spaces must be a mapping of model names, got {shown(spaces)}")
            obj.spaces = default_spaces() | spaces
            obj.validate(section)
        return obj

    def validate(self, section: str) -> None:
        require_choice(self.sampler, SAMPLERS, section, "sampler")
        require_choice(self.pruner, PRUNERS, section, "pruner")
        require(self.trials >= 1 and self.processes >= 1 and self.top >= 1, section, "trials, processes, top >= 1")
        require(self.startup_trials >= 0 and self.warmup_epochs >= 0, section, "startup_trials, warmup_epochs >= 0")
        require(self.reduction_factor >= 2, section, "reduction_factor must be >= 2")
        require(len(self.seeds) > 0, section, "seeds must list at least one seed")
        require(len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0, section, "seeds: >= 0, no repeats")
        require(self.max_epochs is None or self.max_epochs >= 1, section, "max_epochs must be >= 1 (or null)")
        require(self.seed >= 0, section, "seed must be >= 0")
        for model, raw in self.spaces.items():
            parse_space(model, raw, section)

    def space(self, model: str) -> dict[str, Spec]:
        """The space of ``model``, checked; the grid sampler refuses ranges."""
        require(model in self.spaces, "tune", f"spaces has no space for model {shown(model)}")
        space = parse_space(model, self.spaces[model])
        ranges = [k for k, s in space.items() if isinstance(s, Range)]
        require(
            self.sampler != "grid" or not ranges,
            "tune",
            f"spaces.{model}.{ranges[0] if ranges else ''} is a range: the grid sampler needs lists of values "
            "(or use sampler: random | tpe)",
        )
        return space


# ------------------------------------------------------------------ one search


def with_values(params: dict[str, Any], model: str, values: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``model.name: model`` and a point's values in their sections."""
    out = copy.deepcopy(params)
    out["model"] = dict(out.get("model") or {}) | {"name": model}
    for key, value in values.items():
        section, name = split_key(model, key)
        out[section] = dict(out.get(section) or {}) | {name: value}
    return out


def set_override(params: dict[str, Any], override: str) -> None:
    """Apply ``section.key=value`` (value read as YAML) to ``params``, in place."""
    import yaml

    key, sep, text = override.partition("=")
    parts = key.split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {shown(override)} is not of the form section.key=value")
    node = params
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {shown(override)}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {shown(override)}: the value is not valid YAML") from None


def code_fingerprint() -> str:
    """A hash of this package's source (every ``sea/**/*.py``, by relative path): a study
    made with other code is another study, so a resumed search never mixes trials of two
    versions of a model or of the trainer."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class Search:
    """Everything a search of ``model`` needs: the params (overrides applied), the
    ``tune`` settings, the model's space; paths relative to ``root``."""

    model: str
    params: dict[str, Any]
    config: TuneConfig
    space: dict[str, Spec]
    overrides: list[str] = field(default_factory=list)
    root: Path = Path(".")

    @classmethod
    def prepare(
        cls,
        params: dict[str, Any],
        model: str,
        overrides: list[str] | tuple[str, ...] = (),
        root: str | Path = ".",
        **flags: Any,
    ) -> Search:
        """Check everything before anything trains: ``overrides`` (``section.key=value``),
        ``flags`` (``sampler``, ``trials``, ``processes``, ``pruner``: None keeps
        params.yaml's), the tune section, the model's space, and the training setup at
        every grid point (or a range's ends)."""
        params = copy.deepcopy(params)
        for o in overrides:
            set_override(params, o)
        model_class(model)  # a known model, else one line
        tune = params.get("tune")
        if tune is None or isinstance(tune, dict):  # else from_dict refuses it in one line
            tune = dict(tune or {}) | {k: v for k, v in flags.items() if v is not None}
        config = TuneConfig.from_dict(tune, "tune")
        space = config.space(model)
        search = cls(model, params, config, space, list(overrides), Path(root))
        for point in itertools.islice(search._corner_points(), MAX_CHECKED_POINTS):
            try:
                search.setup(point, trial=True)
            except ConfigError as e:
                where = f"params.yaml [tune]: spaces.{model}: {shown(point)}"
                raise ConfigError(f"{where} is refused: {_inner(e)}") from None
        return search

    def _corner_points(self) -> Iterator[dict[str, Any]]:
        axes = {k: s.values if isinstance(s, Choice) else (s.low, s.high) for k, s in self.space.items()}
        for combo in itertools.product(*axes.values()):
            yield dict(zip(axes, combo, strict=True))

    def setup(self, values: dict[str, Any], trial: bool) -> TrainingSetup:
        """The training setup at a point: one process, ``train.seed`` for a trial (at most
        ``tune.max_epochs`` epochs), the seeds given to :func:`train_seed` otherwise."""
        params = with_values(self.params, self.model, values)
        params["train"] = dict(params.get("train") or {}) | {"processes": 1, "seeds": []}
        if trial and self.config.max_epochs is not None:
            params["train"]["max_epochs"] = self.config.max_epochs
        return TrainingSetup.from_params(params)

    @property
    def is_grid(self) -> bool:
        return self.config.sampler == "grid"

    @property
    def total(self) -> int:
        """Trials the study runs: the grid's points, or ``trials``."""
        return len(grid_points(self.space)) if self.is_grid else self.config.trials

    # -------------------------------------------------------------- the study's identity

    def identity(self) -> dict[str, Any]:
        """What the study's values depend on (hashed into its file name): the space, the
        sampler and pruner settings, every other training param, the data."""
        base = self.setup({}, trial=True).to_dict()
        for key in self.space:  # the searched keys' params.yaml values do not matter
            section, name = split_key(self.model, key)
            base[section].pop(name, None)
        settings = {k: getattr(self.config, k) for k in ("sampler", "pruner", "max_epochs", "seed")}
        if self.config.pruner == "median":
            settings |= {"startup_trials": self.config.startup_trials, "warmup_epochs": self.config.warmup_epochs}
        elif self.config.pruner == "asha":
            settings |= {"warmup_epochs": self.config.warmup_epochs, "reduction_factor": self.config.reduction_factor}
        files = [artifacts.INTERACTIONS, artifacts.ITEMS]
        if model_class(self.model).uses_features:
            files += [artifacts.FEATURES / f"{m}.npy" for m in base["model"]["modalities"]]
        data = {str(f): sha256_file(self.root / f) for f in files if (self.root / f).is_file()}
        return {
            "model": self.model,
            "space": _space_dict(self.space),
            "settings": settings,
            "setup": base,
            "data": data,
            "code": code_fingerprint(),
        }

    @functools.cached_property
    def key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def journal(self) -> Path:
        """The study's file, relative to ``root``."""
        return CACHE / self.model / f"{self.key}.journal"

    @property
    def study_name(self) -> str:
        return f"{self.model}-{self.key}"

    def storage(self) -> optuna.storages.JournalStorage:
        path = self.root / self.journal
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))

    def sampler(self, worker: int = 0, done: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler of one worker. Grid: seeded by ``tune.seed`` alone (the seed orders
        the grid, and every worker and every resumed run must number its points alike).
        Random and tpe: also by the worker and the trials already done, so that workers and a
        resumed search draw different points."""
        if self.is_grid:
            grid = {k: list(s.values) for k, s in self.space.items()}
            return optuna.samplers.GridSampler(grid, seed=self.config.seed)
        seed = self.config.seed + 1000 * worker + done
        if self.config.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def pruner(self) -> optuna.pruners.BasePruner:
        c = self.config
        if c.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=c.startup_trials, n_warmup_steps=c.warmup_epochs)
        if c.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=max(1, c.warmup_epochs), reduction_factor=c.reduction_factor
            )
        return optuna.pruners.NopPruner()

    def study(self, worker: int = 0) -> optuna.Study:
        """The study in its journal (created on first use), with this worker's sampler."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar and the report say what happened
        storage = self.storage()
        if self._exists(storage):  # loading writes nothing (creating takes the journal's lock)
            existing = optuna.load_study(study_name=self.study_name, storage=storage)
            done = len(existing.get_trials(deepcopy=False))
            return optuna.load_study(
                study_name=self.study_name, storage=storage, sampler=self.sampler(worker, done), pruner=self.pruner()
            )
        return optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            sampler=self.sampler(worker, 0),
            pruner=self.pruner(),
            direction="maximize",
            load_if_exists=True,
        )

    def _exists(self, storage: optuna.storages.BaseStorage) -> bool:
        return any(s.study_name == self.study_name for s in storage.get_all_studies())

    def load_data(self) -> GraphData:
        setup = self.setup({}, trial=True)
        return load_graph_data(setup, torch.device(resolve_device(setup.train.device)), self.root)


# ------------------------------------------------------------------ the trials


def finished_points(study: optuna.Study) -> list[dict[str, Any]]:
    """The points of trials that completed or were pruned (not counting skipped duplicates)."""
    return [
        t.params
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if "duplicate_of" not in t.user_attrs
    ]


def remaining(search: Search, study: optuna.Study) -> int:
    """Trials still to run: grid points not yet finished, or ``trials`` minus those finished."""
    done = finished_points(study)
    if search.is_grid:
        return sum(1 for p in grid_points(search.space) if p not in done)
    return max(0, search.config.trials - len(done))


def suggest(trial: optuna.Trial, key: str, spec: Spec) -> Any:
    if isinstance(spec, Choice):
        return trial.suggest_categorical(key, list(spec.values))
    if spec.integer:
        return trial.suggest_int(key, spec.low, spec.high, log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


class Objective:
    """One trial: train at the trial's point with ``train.seed`` on the train split,
    report the validation value at every evaluation, stop when the pruner says so."""

    def __init__(self, search: Search, data: GraphData):
        self.search, self.data = search, data

    def __call__(self, trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, spec) for key, spec in self.search.space.items()}
        interrupted = set(trial.study.user_attrs.get(INTERRUPTED, []))
        for other in trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ):
            if other.number in interrupted or other.number == trial.number or "duplicate_of" in other.user_attrs:
                continue
            if other.params == values:
                trial.set_user_attr("duplicate_of", other.number)  # parallel grid workers at the grid's end
                raise optuna.TrialPruned(f"the same point as trial {other.number}")
        setup = self.search.setup(values, trial=True)
        select, seed = setup.eval.select, setup.train.seed
        curve: list[list[float]] = []
        pruned = []

        def on_eval(epoch: int, valid: dict[str, float]) -> bool:
            curve.append([epoch, valid[select]])
            trial.report(valid[select], epoch)
            if trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        start = time.perf_counter()
        seed_everything(seed, deterministic=self.data.device.type == "cpu")
        model = build_model(self.data, setup)
        result = fit(model, self.data, setup, seed, log=lambda _: None, on_eval=on_eval, progress=False)
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {pruned[0]}")
        return result.best_valid.get(select, math.nan)  # NaN (no evaluation): Optuna marks it failed


class Progress:
    """One bar for the study: trials finished of all, pruned, best validation value."""

    def __init__(self, search: Search, enabled: bool = True):
        from tqdm.auto import tqdm

        self.search = search
        self.bar = tqdm(
            total=search.total, desc=f"tune {search.model}", unit="trial", disable=None if enabled else True
        )

    def update(self, study: optuna.Study, *_: Any) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        self.bar.n = len(done)
        self.bar.set_postfix(
            pruned=sum(t.state == TrialState.PRUNED for t in trials),
            best=f"{max(values):.4f}" if values else "-",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


#: The study's user attribute listing the trials a killed search left RUNNING (grid only).
INTERRUPTED = "interrupted"


def recover(search: Search) -> list[int]:
    """Deal with the trials a killed search left RUNNING (call it only while no worker
    runs: :func:`study_lock`); returns their numbers. Grid: they stay RUNNING, listed in
    the study's ``interrupted`` attribute, and Optuna's grid sampler proposes their points
    again once every other point has started (a trial killed between two ``suggest``
    calls has only part of its point, so it cannot be queued again by its params).
    Random and tpe: they are marked failed, and new points are drawn in their place."""
    study = search.study()
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    known = set(study.user_attrs.get(INTERRUPTED, []))
    stale = [n for n in stale if n not in known]
    if stale and search.is_grid:
        study.set_user_attr(INTERRUPTED, sorted(known | set(stale)))
    elif stale:
        for number in stale:
            study.tell(number, state=TrialState.FAIL)
    return stale


@contextlib.contextmanager
def study_lock(search: Search) -> Iterator[None]:
    """Hold the study's lock file while a search runs; a second search of the same study
    is refused with one line."""
    path = search.root / search.journal.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another search of {search.model} is running on {search.journal}: wait for it to end"
                ) from None
        # No worker of this study runs now: a lock file of the journal (Optuna's JournalFileBackend
        # names it <journal>.lock) was left by a search killed while it wrote; without this, the
        # next write would wait for Optuna's grace period to pass.
        Path(str(search.root / search.journal) + ".lock").unlink(missing_ok=True)
        yield


def run_worker(
    search: Search,
    worker: int = 0,
    progress: Progress | None = None,
    data: GraphData | None = None,
) -> None:
    """Run trials until the study has all it needs (several workers may run this on one
    study at once)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = search.study(worker)
    n = remaining(search, study) + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if progress is not None:
        progress.update(study)
    if n == 0:
        return
    callbacks: list[Callable] = []
    if not search.is_grid:
        callbacks.append(
            optuna.study.MaxTrialsCallback(search.config.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        )
    if progress is not None:
        callbacks.append(progress.update)
    objective = Objective(search, data if data is not None else search.load_data())
    study.optimize(objective, n_trials=n, callbacks=callbacks, gc_after_trial=False)


# ------------------------------------------------------------------ selection


@dataclass
class SeedRun:
    seed: int
    best_epoch: int
    epochs: int
    valid: dict[str, float]
    state: dict[str, torch.Tensor] = field(repr=False)
    test: dict[str, float] | None = None


@dataclass
class Candidate:
    """One of the ``top`` trials re-trained over the seeds."""

    trial: int
    values: dict[str, Any]
    runs: list[SeedRun]
    select: str

    @property
    def mean(self) -> float:
        """Mean validation ``eval.select`` over the seeds."""
        return statistics.fmean(r.valid.get(self.select, math.nan) for r in self.runs)


def train_seed(search: Search, data: GraphData, values: dict[str, Any], seed: int) -> SeedRun:
    """Train a point at ``seed`` as the train stage does (``train.max_epochs``); validation only."""
    setup = search.setup(values, trial=False)
    seed_everything(seed, deterministic=data.device.type == "cpu")
    model = build_model(data, setup)
    result = fit(model, data, setup, seed, log=lambda _: None, progress=False)
    valid = {k: v for k, v in result.best_valid.items() if k != "users"}
    return SeedRun(seed, result.best_epoch, len(result.history), valid, result.best_state)


def rerun_file(search: Search, trial: int, seed: int) -> Path:
    """Where a finished re-run is kept (beside the study's journal, under the same key)."""
    return search.root / search.journal.with_suffix(".reruns") / f"trial{trial}-seed{seed}.safetensors"


def cached_seed_run(search: Search, data: GraphData, trial: FrozenTrial, seed: int) -> SeedRun:
    """:func:`train_seed`, kept on disk once finished, so that a killed selection resumes
    without re-training the seeds it had finished (the file's key is the study's: same
    data, params and code). An unreadable file is trained again."""
    path = rerun_file(search, trial.number, seed)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads((f.metadata() or {})["run"])
                state = {k: f.get_tensor(k) for k in f.keys()}
            return SeedRun(int(meta["seed"]), int(meta["best_epoch"]), int(meta["epochs"]), meta["valid"], state)
        except (SafetensorError, OSError, KeyError, TypeError, ValueError):
            pass
    run = train_seed(search, data, trial.params, seed)
    meta = {"seed": run.seed, "best_epoch": run.best_epoch, "epochs": run.epochs, "valid": run.valid}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in run.state.items()}
    blob = save_safetensors(tensors, metadata={"run": json.dumps(meta, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return run


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best validation value first (ties: the earlier trial), one per point."""
    seen, out = [], []
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(trials, key=lambda t: (-t.value, t.number)):
        if "duplicate_of" in t.user_attrs or t.params in seen or not math.isfinite(t.value):
            continue
        seen.append(t.params)
        out.append(t)
    return out


def select(
    search: Search,
    study: optuna.Study,
    data: GraphData,
    log: Callable[[str], None] = print,
) -> tuple[Candidate, list[Candidate]]:
    """Re-train the ``top`` best trials over ``seeds``; the pick has the best mean
    validation ``eval.select`` (ties: the better trial). Only the pick's states are kept."""
    select_metric = search.setup({}, trial=False).eval.select
    top = ranked_trials(study)[: search.config.top]
    if not top:
        raise ConfigError(f"no trial of the {search.model} search completed: nothing to select")
    candidates, best = [], None
    for t in top:
        runs = [cached_seed_run(search, data, t, seed) for seed in search.config.seeds]
        cand = Candidate(t.number, dict(t.params), runs, select_metric)
        log(f"trial {t.number} {t.params}: mean valid {select_metric} {cand.mean:.4f} over seeds {search.config.seeds}")
        if best is None or cand.mean > best.mean:
            if best is not None:
                for r in best.runs:
                    r.state = {}
            best = cand
        else:
            for r in runs:
                r.state = {}
        candidates.append(cand)
    return best, candidates


def test_metrics(search: Search, pick: Candidate, data: GraphData) -> None:
    """The pick's seeds on the test split (the only place the search reads it)."""
    setup = search.setup(pick.values, trial=False)
    for run in pick.runs:
        seed_everything(run.seed, deterministic=data.device.type == "cpu")
        model = build_model(data, setup)
        model.load_state_dict(run.state)
        metrics = evaluate(model, data, "test", setup.eval.topk, setup.eval.chunk(data.n_items))
        run.test = {k: v for k, v in metrics.items() if k != "users"}


# ------------------------------------------------------------------ reports


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _value_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def overrides_for(search: Search, values: dict[str, Any]) -> list[str]:
    """``-S`` overrides that train ``values``: the model, its values, the search's own overrides."""
    out = [f"model.name={search.model}"]
    out += [f"{'.'.join(split_key(search.model, k))}={_value_text(v)}" for k, v in values.items()]
    out += [o for o in search.overrides if not o.startswith("tune.")]
    return out


def dvc_command(overrides: list[str], seeds: list[int]) -> str:
    args = [a for o in overrides for a in ("-S", o)] + ["-S", f"train.seeds=[{','.join(map(str, seeds))}]"]
    return shlex.join(["dvc", "exp", "run", *args])


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows, interrupted = [], set(study.user_attrs.get(INTERRUPTED, []))
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        row = {
            "number": t.number,
            "state": "interrupted" if t.number in interrupted else t.state.name.lower(),
            "params": t.params,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "curve": t.user_attrs.get("curve", []),
            "epochs": t.user_attrs.get("epochs"),
            "best_epoch": t.user_attrs.get("best_epoch"),
        }
        for extra in ("duplicate_of",):
            if extra in t.user_attrs:
                row[extra] = t.user_attrs[extra]
        rows.append(row)
    return rows


def report(search: Search, study: optuna.Study, pick: Candidate, candidates: list[Candidate]) -> dict[str, Any]:
    """The search as a JSON-able dict (see docs/tuning.md)."""
    setup = search.setup({}, trial=False)
    settings = {
        k: getattr(search.config, k)
        for k in ("sampler", "pruner", "startup_trials", "warmup_epochs", "reduction_factor", "processes", "top")
    }
    settings |= {
        "trials": search.total,
        "seeds": list(search.config.seeds),
        "max_epochs": search.config.max_epochs,
        "train_max_epochs": setup.train.max_epochs,
        "trial_seed": setup.train.seed,
        "sampler_seed": search.config.seed,
        "space": _space_dict(search.space),
        "overrides": list(search.overrides),
        "study": f"{search.journal.as_posix()} (study {search.study_name})",
    }
    overrides = overrides_for(search, pick.values)
    selected = {
        "trial": pick.trial,
        "params": pick.values,
        "overrides": overrides,
        "command": dvc_command(overrides, search.config.seeds),
        "seeds": {
            str(r.seed): {"best_epoch": r.best_epoch, "epochs": r.epochs, "valid": r.valid, "test": r.test}
            for r in pick.runs
        },
        "valid": {m: _stats([r.valid[m] for r in pick.runs]) for m in pick.runs[0].valid},
        "test": {m: _stats([r.test[m] for r in pick.runs]) for m in (pick.runs[0].test or {})},
    }
    return {
        "model": search.model,
        "select": setup.eval.select,
        "note": "Validation values only select; test metrics are computed for the selected configuration alone. "
        "No timings: each trial's seconds are in logs/tuning/<model>.json (this report is a DVC output).",
        "settings": settings,
        "trials": trial_rows(study),
        "selection": {
            "candidates": [
                {
                    "trial": c.trial,
                    "params": c.values,
                    "valid": {str(r.seed): r.valid[setup.eval.select] for r in c.runs},
                    **_stats([r.valid[setup.eval.select] for r in c.runs]),
                }
                for c in candidates
            ],
            "selected": selected,
        },
    }


def _pm(stats: dict[str, float | None]) -> str:
    return f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")


def render_markdown(rep: dict[str, Any]) -> str:
    """The report as a page: the pick, its seeds, the candidates, every trial by validation."""
    s, sel, select = rep["settings"], rep["selection"]["selected"], rep["select"]
    keys = list(s["space"])
    lines = [
        f"# Tuning {rep['model']}",
        "",
        f"Sampler {s['sampler']} ({s['trials']} trials), pruner {s['pruner']}, {s['processes']} process(es); "
        f"the best {s['top']} re-trained over seeds {s['seeds']}; selection on validation {select} only.",
        "",
        "## Selected",
        "",
        f"Trial {sel['trial']}: " + ", ".join(f"`{k}={_value_text(v)}`" for k, v in sel["params"].items()),
        "",
        "Train it as an ordinary DVC experiment:",
        "",
        "```bash",
        sel["command"],
        "```",
        "",
        f"| seed | best epoch | valid {select} | test {select} |",
        "|---|---|---|---|",
    ]
    for seed, r in sel["seeds"].items():
        lines.append(f"| {seed} | {r['best_epoch']} | {r['valid'][select]:.4f} | {r['test'][select]:.4f} |")
    lines.append(f"| mean ± std | | {_pm(sel['valid'][select])} | {_pm(sel['test'][select])} |")
    lines += ["", "Test, every metric (mean ± sample std over seeds):", ""]
    lines += ["| " + " | ".join(sel["test"]) + " |", "|" + "---|" * len(sel["test"])]
    lines.append("| " + " | ".join(_pm(v) for v in sel["test"].values()) + " |")
    lines += ["", f"## Candidates (re-trained over seeds, validation {select})", ""]
    lines += ["| trial | " + " | ".join(keys) + " | per seed | mean ± std |", "|---|" + "---|" * (len(keys) + 2)]
    for c in rep["selection"]["candidates"]:
        per_seed = ", ".join(f"{v:.4f}" for v in c["valid"].values())
        mark = " (selected)" if c["trial"] == sel["trial"] else ""
        cells = [_value_text(c["params"][k]) for k in keys]
        lines.append(f"| {c['trial']}{mark} | " + " | ".join(cells) + f" | {per_seed} | {_pm(c)} |")
    lines += ["", f"## Trials (seed {s['trial_seed']}, sorted by best validation {select})", ""]
    lines += [
        "| trial | " + " | ".join(keys) + f" | state | valid {select} | best epoch | epochs |",
        "|---|" + "---|" * (len(keys) + 4),
    ]

    def best_seen(t: dict) -> float:
        if t["value"] is not None:
            return t["value"]
        return max((v for _, v in t["curve"]), default=-math.inf)

    for t in sorted(rep["trials"], key=lambda t: (-best_seen(t), t["number"])):
        state = t["state"] + (f" (duplicate of {t['duplicate_of']})" if "duplicate_of" in t else "")
        value = best_seen(t)
        cells = [_value_text(t["params"].get(k, "")) for k in keys]
        shown_value = f"{value:.4f}" if math.isfinite(value) else "—"
        if t["state"] == "pruned" and math.isfinite(value):
            shown_value += f" (by epoch {t['curve'][-1][0]})"
        lines.append(
            f"| {t['number']} | "
            + " | ".join(cells)
            + f" | {state} | {shown_value} | {t['best_epoch'] or '—'} | {t['epochs'] or '—'} |"
        )
    lines += [
        "",
        "Pruned trials show the best value they reached before the pruner stopped them. Settings, every "
        f"curve and the study's file: `reports/tuning/{rep['model']}.json`; each trial's seconds (this "
        f"machine's timings): `logs/tuning/{rep['model']}.json`.",
    ]
    return "\n".join(lines) + "\n"


def trial_seconds(study: optuna.Study) -> dict[str, float | None]:
    """Each trial's training seconds (this machine's timings, for ``logs/`` only)."""
    return {str(t.number): t.user_attrs.get("seconds") for t in study.get_trials(deepcopy=False)}


def write_reports(
    rep: dict[str, Any], root: str | Path = ".", seconds: dict[str, float | None] | None = None
) -> tuple[Path, Path]:
    """``reports/tuning/<model>.{json,md}`` (no timings: DVC caches them) and, with
    ``seconds``, the trials' timings in ``logs/tuning/<model>.json``."""
    base = Path(root) / REPORTS / rep["model"]
    write_json(base.with_suffix(".json"), rep)
    write_text(base.with_suffix(".md"), render_markdown(rep))
    if seconds is not None:
        write_json(Path(root) / TIMINGS / f"{rep['model']}.json", {"model": rep["model"], "trial_seconds": seconds})
    return base.with_suffix(".json"), base.with_suffix(".md")


__all__ = [
    "Choice",
    "Range",
    "Search",
    "TuneConfig",
    "default_spaces",
    "grid_points",
    "parse_space",
    "recover",
    "remaining",
    "report",
    "run_worker",
    "select",
    "study_lock",
    "test_metrics",
    "write_reports",
]
