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
from typing import Any, ClassVar

import yaml


#: ``dataset.image_size``: which image of a 2023 item record to take.
IMAGE_SIZES = ("large", "hi_res", "thumb")
#: ``split.given``: the official splits of the Amazon Reviews 2023 benchmark.
OFFICIAL_SPLITS = ("last_out", "last_out_w_his", "timestamp", "timestamp_w_his")


from sea.errors import MAX_SHOWN_CHARS, ConfigError, shorten, shown
from sea.io import check_url  # moves with DatasetConfig and ImageFeatureConfig


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


def check_precision(value: str, section: str) -> None:
    """An encoder's ``precision``: one of :data:`sea.features.PRECISIONS`."""
    from sea.features import PRECISIONS

    require_choice(value, PRECISIONS, section, "precision")


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
class DatasetConfig(Section):
    """Where the data comes from.

    ``source: amazon``: raw review + metadata dumps at URLs (http(s)://, file:// or a path
    relative to the repo). ``source: mmrec``: an MMRec folder at ``path`` (``<name>.inter``,
    ``image_feat.npy``, ``text_feat.npy``) used in place of parsing, splitting and encoding.
    """

    name: str = "sample"
    source: str = "amazon"
    reviews_url: str | None = None
    reviews_sha256: str | None = None
    meta_url: str | None = None
    meta_sha256: str | None = None
    allow_truncated: bool = False
    path: str | None = None
    max_download_mb: float = 20000.0  # size cap per dump file (MB = 10^6 bytes)
    download_timeout: float = 3600.0  # seconds per dump file, all attempts together
    # the dataset catalog (sea/data/catalog.py): a base URL replacing the catalog's host
    # prefix, and which image of a 2023 item ("large", "hi_res" or "thumb") to take
    mirror: str | None = None
    image_size: str = "large"
    metadata: bool = True  # false: fetch no metadata dump (items get no text or image)
    download_retries: int = 4  # further attempts per dump after a failed one (each resumes where it stopped)

    def validate(self, section: str) -> None:
        from sea.data.catalog import catalog  # the catalog module imports this one

        check_folder_name(self.name, section, "name")
        require_choice(self.source, ("amazon", "mmrec"), section, "source")
        require_choice(self.image_size, IMAGE_SIZES, section, "image_size")
        if self.mirror is not None:
            require(re.fullmatch(r"(https?|file)://[^\s]+", self.mirror) is not None, section,
                   f"mirror must be an http(s):// or file:// base URL, got {shown(self.mirror)}")
        for name in ("reviews_url", "meta_url", "mirror"):
            check_url(getattr(self, name), section, name)
        require(self.metadata or not (self.meta_url or self.meta_sha256), section,
               "metadata: false contradicts meta_url/meta_sha256 (set them to null, or metadata: true)")
        if self.source == "amazon":
            require(bool(self.reviews_url) or catalog().get(self.name) is not None, section,
                   f"reviews_url is required with source: amazon when name ({shown(self.name)}) is not a catalog "
                   f"entry (python -m sea datasets lists them)")
        else:
            require(bool(self.path), section, "path (the MMRec folder) is required with source: mmrec")

        require(self.max_download_mb > 0 and self.download_timeout > 0, section,
               "max_download_mb and download_timeout must be > 0")
        require(0 <= self.download_retries <= 100, section, "download_retries must be in [0, 100]")

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
        require(self.k_core >= 1, section, "k_core must be >= 1")


@dataclass
class SplitConfig(Section):
    method: str = "mmrec"
    seed: int = 999
    # method "given": which official split of a 2023 catalog entry (see OFFICIAL_SPLITS);
    # the download stage fetches its files, the graph stage takes them as they are
    given: str | None = None

    def validate(self, section: str) -> None:
        require_choice(self.method, ("mmrec", "temporal", "leave_one_out", "given"), section, "method")
        require(self.seed >= 0, section, "seed must be >= 0")
        if self.method == "given":
            require(self.given is not None, section,
                   f"method: given needs given: one of {list(OFFICIAL_SPLITS)} (an official split)")
            require_choice(self.given, OFFICIAL_SPLITS, section, "given")
        else:
            require(self.given is None, section,
                   f"given: {shown(self.given)} is only read with method: given (method is {shown(self.method)}); set it to null")


#: Most feature-extraction ranks one machine may run (features.*.processes).
MAX_PROCESSES = 64


def check_processes(processes: int, device: str, section: str) -> None:
    """``processes`` ranks (sharded extraction, see :mod:`sea.distributed`): 1..64; on
    CUDA one GPU per rank, so ``cuda:N`` is refused and ``auto``/``cuda`` need that many GPUs."""
    require(1 <= processes <= MAX_PROCESSES, section, f"processes must be in [1, {MAX_PROCESSES}], got {shown(processes)}")
    if processes == 1 or device == "cpu":
        return
    require(":" not in device, section, f"processes: {shown(processes)} puts rank r on cuda:r; "
           f"device must then be auto, cuda or cpu, got {shown(device)}")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    require(count == 0 and device == "auto" or processes <= count, section,
           f"processes: {shown(processes)} needs {shown(processes)} CUDA devices (one per rank) with device {shown(device)}; "
           f"this machine has {count}: lower processes or use device: cpu")


@dataclass
class TextFeatureConfig(Section):
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "auto"
    processes: int = 1  # ranks encoding contiguous shards of the items (sea.distributed)
    precision: str = "float32"  # the dtype the encoder computes in (sea.features.resolve_precision)

    def validate(self, section: str) -> None:
        require(bool(self.model.strip()), section, "model must name a sentence-transformers model or folder")
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        check_precision(self.precision, section)
        check_processes(self.processes, self.device, section)
        check_device(self.device, section)


#: Where ``features.image`` comes from: open_clip on the item images, or the precomputed
#: CNN vectors distributed with the Amazon 2014 dumps.
IMAGE_SOURCES = ("clip", "amazon_cnn")


@dataclass
class ImageFeatureConfig(Section):
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    timeout: float = 10.0  # seconds per image attempt in total: connect, redirects and body
    workers: int = 8
    max_image_mb: float = 20.0  # size cap per image file, downloaded or local (MB = 10^6 bytes)
    allow_private_hosts: bool = False  # true: image URLs may lead to loopback/private addresses
    allow_files_outside: bool = False  # true: local image paths may lie outside the dataset folder
    processes: int = 1  # ranks encoding contiguous shards of the items (sea.distributed)
    precision: str = "float32"  # the dtype CLIP computes in (sea.features.resolve_precision)
    # source: clip encodes the item images; amazon_cnn reads the 4096-d CNN vectors of the
    # Amazon 2014 dumps (image_features_<Category>.b) from cnn_url (see sea.features.cnn)
    source: str = "clip"
    cnn_url: str | None = None  # null: the catalog's file of dataset.name; else http(s)://, file:// or a path
    cnn_sha256: str | None = None
    cnn_max_mb: float = 50000.0  # size cap of the download (MB = 10^6 bytes)
    cnn_timeout: float = 7200.0  # seconds for the whole download, all attempts together
    # fetching at scale (sea/features/fetch.py)
    per_host: int = 4  # concurrent downloads per host (of `workers` in all)
    retries: int = 3  # further attempts after a 408/429/5xx answer or a broken-off body
    backoff: float = 1.0  # first retry wait (s), doubled each retry, unless Retry-After says otherwise
    max_wait: float = 60.0  # seconds of retry waiting per image at most (backoff and Retry-After)
    offline_after: int = 3  # connection failures (DNS, refused, no route) before a host/the network is given up
    min_coverage: float = 0.0  # share of the items with an image URL that must get a file, else the stage fails

    def validate(self, section: str) -> None:
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        require(self.seed >= 0, section, "seed must be >= 0")
        require(self.timeout > 0, section, "timeout must be > 0 seconds")
        require(self.max_image_mb > 0, section, "max_image_mb must be > 0")
        require(1 <= self.workers <= 64, section, "workers must be in [1, 64]")
        check_processes(self.processes, self.device, section)
        require(1 <= self.per_host <= 64, section, "per_host must be in [1, 64]")
        require(0 <= self.retries <= 20, section, "retries must be in [0, 20]")
        require(0 <= self.backoff <= 3600 and 0 <= self.max_wait <= 86400, section,
               "backoff must be in [0, 3600] and max_wait in [0, 86400] seconds")
        require(self.offline_after >= 1, section, "offline_after must be >= 1")
        require(0 <= self.min_coverage <= 1, section, "min_coverage must be in [0, 1]")
        check_device(self.device, section)
        check_precision(self.precision, section)
        require_choice(self.source, IMAGE_SOURCES, section, "source")
        require(self.cnn_max_mb > 0 and self.cnn_timeout > 0, section, "cnn_max_mb and cnn_timeout must be > 0")
        require(self.cnn_sha256 is None or re.fullmatch(r"[0-9a-fA-F]{64}", self.cnn_sha256) is not None,
               section, f"cnn_sha256 must be 64 hex digits or null, got {shown(self.cnn_sha256)}")
        require(self.cnn_url is None or bool(self.cnn_url.strip()), section,
               "cnn_url must be null (the catalog's file of dataset.name) or a URL/path")
        check_url(self.cnn_url, section, "cnn_url")
        if self.source != "amazon_cnn":
            self.check_clip()

    def check_clip(self) -> None:
        """The open_clip architecture exists, and ``pretrained`` is none, a tag open_clip knows
        for it, or a local checkpoint that fits it (:func:`sea.features.image.check_checkpoint`:
        readable without running code, the architecture's keys and shapes) — before any image
        is fetched."""
        import open_clip

        section = "features.image"
        models = open_clip.list_models()
        require(self.model in models, section,
               f"model {shown(self.model)} is not an open_clip architecture (e.g. {', '.join(models[:6])}, ...)")
        tag = (self.pretrained or "").strip()
        if tag.lower() in ("", "none"):
            return
        if "/" in tag or "\\" in tag or Path(tag).suffix:
            require(Path(tag).is_file(), section, f"pretrained: checkpoint file {shown(tag)} does not exist")
            from sea.features.image import check_checkpoint
            from sea.errors import DataError

            try:
                check_checkpoint(self.model, tag)
            except DataError as e:
                raise ConfigError(f"params.yaml [{section}]: pretrained: {e}") from None
            return
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        require(tag in tags, section, f"pretrained {shown(tag)} is not an open_clip tag for {self.model} "
               f"(known: {tags or 'none'}); use none, a tag, or a local checkpoint path")


@dataclass
class ModelConfig(Section):
    """Which model to train (``name``: a registered model, see :mod:`sea.models`) and the
    feature modalities it may read. The model's own sizes live in its own section,
    named after it (``sea:``, ``lightgcn:``, …)."""

    name: str = "sea"
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])

    def validate(self, section: str) -> None:
        require(bool(self.name), section, "name must name a model")
        require(len(self.modalities) >= 1 and len(set(self.modalities)) == len(self.modalities),
               section, "modalities must be a non-empty list without repeats")
        for m in self.modalities:
            require_choice(m, ("image", "text"), section, "modalities[]")


@dataclass
class ComputeConfig(Section):
    """How every stage that computes uses the machine (see :mod:`sea.runtime`):
    ``kernels`` (``portable``: the same bytes on every x86-64 CPU with AVX2 and any thread
    count; ``intel``: the same on every Intel CPU with AVX2, faster; ``native``: this CPU's
    fastest, results depend on the CPU model) and ``threads``
    per process (``auto``: the cores shared among the pipeline's processes running now; a
    number fixes them; results do not depend on it)."""

    KERNELS: ClassVar[tuple[str, ...]] = ("portable", "intel", "native")

    kernels: str = "portable"
    threads: int | str = "auto"

    def validate(self, section: str) -> None:
        require_choice(self.kernels, self.KERNELS, section, "kernels")
        require(self.threads == "auto" or isinstance(self.threads, int) and 1 <= self.threads <= 1024, section,
               f"threads must be auto or a whole number in [1, 1024], got {shown(self.threads)}")
