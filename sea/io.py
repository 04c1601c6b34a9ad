"""Atomic writes and verified downloads.

Every file a stage declares as a DVC output is written through :func:`atomic_path`: the
bytes go to a temporary file beside the target and are renamed into place only when the
writer finished without an exception, so a failed stage never leaves a partial output
for DVC to cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20


class DataError(ValueError):
    """Bad input data: the message names the file (and the line where there is one)."""


class FetchError(RuntimeError):
    """A download that failed: unreachable URL, HTTP error or checksum mismatch."""


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file (or directory) is removed and ``target`` is left
    as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def resolve_url(url: str, base_dir: str | os.PathLike = ".") -> str:
    """Turn a relative path or ``file:`` URL into an absolute ``file://`` URL.

    ``http(s)://`` URLs are returned unchanged. A bare path (no scheme) or a ``file:``
    URL with a relative path is taken relative to ``base_dir``.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return url
    if parsed.scheme == "file":
        # file://localhost/abs/path is the standard spelling of file:///abs/path; any other
        # "host" is taken as the first component of a relative path (file://data/x.json).
        netloc = "" if parsed.netloc.lower() == "localhost" else parsed.netloc
        path = urllib.parse.unquote(netloc + parsed.path)
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive)
        path = url
    else:
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r} in {url!r} (use http(s)://, file:// or a path)")
    p = Path(path)
    if not p.is_absolute():
        p = Path(base_dir).resolve() / p
    return p.resolve().as_uri()


def open_url(url: str, timeout: float = 60.0):
    """Open ``url`` (http(s):// or file://) for reading bytes; raise FetchError if unreachable."""
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "sea-pipeline/0.1"})
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise FetchError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot fetch {url}: {reason}") from e


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    base_dir: str | os.PathLike = ".",
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its sha256 (when given).

    ``url`` may be http(s)://, file:// or a path relative to ``base_dir``. Network errors
    are retried ``retries`` times with a short back-off; a checksum mismatch is not.
    ``dest`` is only created when the whole file arrived and matched.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    full = resolve_url(url, base_dir)
    last_err: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            with atomic_path(dest) as tmp:
                h = hashlib.sha256()
                with open_url(full, timeout) as resp, open(tmp, "wb") as out:
                    total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
                    bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                               desc=f"download {dest.name}", disable=not progress, leave=False)
                    try:
                        for chunk in iter(lambda: resp.read(CHUNK), b""):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
                    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                        raise FetchError(f"download of {url} broke off: {e}") from e
                    finally:
                        bar.close()
                    if total and out.tell() != int(total):
                        raise FetchError(f"download of {url} ended early: {out.tell()} of {total} bytes")
                digest = h.hexdigest()
                if sha256 and digest != sha256.lower():
                    raise ChecksumError(
                        f"sha256 mismatch for {url} (saving to {dest}): expected {sha256}, got {digest}"
                    )
            return dest
        except ChecksumError:
            raise
        except FetchError as e:
            last_err = e
            if attempt < retries and full.startswith("http"):
                time.sleep(min(2 ** (attempt - 1), 8))
                continue
            raise
    raise FetchError(str(last_err))  # pragma: no cover - the loop always returns or raises


class ChecksumError(FetchError):
    """The downloaded bytes do not have the sha256 the params promise."""
