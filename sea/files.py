"""Atomic writes and file checksums, used by every stage.

Every file a stage declares as a DVC output is written through :func:`atomic_path` (or a
whole folder through :func:`atomic_dir`): the bytes go to a temporary ``.<name>.*.tmp``
beside the target and are renamed into place only when the writer finished without an
exception, so a failed stage never leaves a partial output for DVC to cache. They refuse
a target whose name is not one plain file or folder name, and delete nothing but their
own target and its own stale temporaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sea.errors import DataError

CHUNK = 1 << 20
MB = 1_000_000  #: the unit of the ``*_mb`` params

#: mkstemp/mkdtemp put 8 characters of [a-z0-9_] between prefix and suffix.
_TMP_RANDOM = r"[a-z0-9_]{8}"


def is_plain_name(name: str) -> bool:
    """True when ``name`` is one ordinary file or folder name: not empty, not ``.`` or
    ``..``, without a path separator (``/`` or ``\\``) or NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _checked_target(target: str | os.PathLike) -> Path:
    """``target`` as a Path, or a DataError when its last component is not a plain name.

    Checked on the string as given: ``Path("data/raw/.")`` would silently become
    ``data/raw``, whose replacement deletes every sibling dataset.
    """
    text = os.fspath(target)
    name = text.replace(os.altsep or os.sep, os.sep).rsplit(os.sep, 1)[-1]
    if not is_plain_name(name):
        raise DataError(
            f"refusing to write {text!r}: its last component {name!r} is not a plain "
            "file or folder name (empty, '.', '..', or with a separator or NUL)"
        )
    return Path(text)


def _remove_path(path: Path) -> None:
    """Delete ``path`` itself: a link or file is unlinked (never followed), a folder removed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(target: Path) -> list[str]:
    """Delete the ``.<target name>.XXXXXXXX.tmp`` siblings a killed writer of ``target``
    left behind (and nothing else); return their names."""
    pattern = re.compile(re.escape(f".{target.name}.") + _TMP_RANDOM + r"\.tmp")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name):
            _remove_path(Path(entry.path))
            removed.append(entry.name)
    return removed


def _default_mode(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create 0600/0700; outputs get the usual mode under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file (or directory) is removed and ``target`` is left
    as it was. Stale temporaries of this same target (from a killed run) are removed
    first; ``target`` must have a plain name (see :func:`is_plain_name`). One writer per
    target at a time.
    """
    target = _checked_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _default_mode(tmp_path, 0o666)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        _remove_path(tmp_path)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    Only ``target`` itself is ever replaced (a link there is unlinked, not followed), and
    only this target's stale temporaries are cleaned up; ``target`` must have a plain name.
    """
    target = _checked_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _default_mode(tmp, 0o777)
    try:
        yield tmp
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; an old folder there is moved aside first (into a
    temporary of the same target) and deleted only once ``new`` is in place."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    if not target.exists():
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.replace(target, aside / "old")
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside / "old", target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
