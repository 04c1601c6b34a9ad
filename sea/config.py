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
from pathlib import Path
from typing import Any

import yaml

from sea.errors import MAX_SHOWN_CHARS, ConfigError, shorten, shown

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


def _measure(
    node: yaml.Node, where: str, depth: int, memo: dict[int, tuple[int, int, int] | None]
) -> tuple[int, int, int]:
    """``(nodes, characters, height)`` of ``node`` with its aliases expanded, computed once per
    node object (an alias is the anchored node itself), so a bomb costs its size in the file.
    Raises :class:`_TooLarge` naming ``where`` (the key path) as soon as a limit is passed."""
    key = id(node)
    if key in memo:
        if memo[key] is None:
            raise _TooLarge("has a YAML alias inside the collection it names (an endless value)", node, where)
        if depth + memo[key][2] > MAX_PARAMS_DEPTH:
            raise _TooLarge(f"nests deeper than {MAX_PARAMS_DEPTH} levels once YAML aliases are expanded", node, where)
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
            raise _TooLarge(
                f"expands to more than {MAX_PARAMS_NODES} values once YAML aliases are "
                f"expanded; a params file holds a few hundred",
                child,
                child_where,
            )
        if chars > MAX_PARAMS_CHARS:
            raise _TooLarge(
                f"expands to more than {MAX_PARAMS_CHARS} characters once YAML aliases are expanded", child, child_where
            )
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
    require(
        m is not None and (m[3] is None or m[1] == "cuda"),
        section,
        f"{name} must be auto, cpu, cuda or cuda:N, got {shown(value)}",
    )
    if m[1] == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m[3] or 0)
        require(
            index < count,
            section,
            f"{name}: {shown(value)} asked for, but this machine has {count} CUDA device(s); use auto or cpu",
        )


def check_folder_name(value: str, section: str, name: str) -> None:
    """One plain folder name: not empty, '.' or '..', no path separator or control
    character, at most 255 bytes — it names a folder that stages replace whole."""
    require(
        value not in ("", ".", "..")
        and not any(c in value for c in "/\\")
        and all(c.isprintable() for c in value)
        and value == value.strip(),
        section,
        f"{name} must be one plain folder name (no '/', '\\', '.' or '..', no control "
        f"characters or surrounding spaces), got {shown(value)}",
    )
    require(
        len(value.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES,
        section,
        f"{name} is longer than {MAX_NAME_BYTES} bytes",
    )
