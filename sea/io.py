"""Atomic writes and bounded, verified downloads.

Every file a stage declares as a DVC output is written through :func:`atomic_path` (or a
whole folder through :func:`atomic_dir`): the bytes go to a temporary ``.<name>.*.tmp``
beside the target and are renamed into place only when the writer finished without an
exception, so a failed stage never leaves a partial output for DVC to cache. They refuse
a target whose name is not one plain file or folder name, and delete nothing but their
own target and its own stale temporaries.

Downloads are bounded in size and in total time. :func:`fetch` takes user-given URLs (the
dumps in params.yaml); :func:`open_public_http` follows URLs found in downloaded data and
only talks to public internet addresses, checked again on every redirect hop (or to the
``http_proxy``/``https_proxy`` the environment names, once the target passed that check).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import ipaddress
import json
import math
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from sea.errors import (ChecksumError, ConfigError, DataError, FetchError, FetchTimeoutError, HTTPStatusError, IncompleteError,
                        RefusedError, TooLargeError)

CHUNK = 1 << 20
MB = 1_000_000  #: the unit of the ``*_mb`` params
#: How many redirects :func:`open_public_http` follows before giving up.
MAX_REDIRECTS = 5
USER_AGENT = "sea-pipeline/0.1"


# --------------------------------------------------------------------------- retries


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (``"120"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, a Unix time);
    None when absent or invalid. Never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, key: str) -> float:
    """Wait before retry number ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, plus up
    to 50 % jitter drawn from the sha1 of ``key`` and ``attempt``, so that different URLs
    spread out while every run waits the same (no random state)."""
    digest = hashlib.sha1(f"{key}\0{attempt}".encode("utf-8", "surrogatepass")).digest()
    jitter = int.from_bytes(digest[:4], "big") / 2**32 / 2
    return base * 2 ** min(attempt - 1, 30) * (1 + jitter)


def retry_wait(error: FetchError, attempt: int, base: float, key: str) -> float:
    """The wait before retrying after ``error``: the server's ``Retry-After`` when it gave
    one, else :func:`backoff_delay`."""
    after = getattr(error, "retry_after", None)
    return after if after is not None else backoff_delay(attempt, base, key)


# --------------------------------------------------------------------------- atomic writes

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
        raise DataError(f"refusing to write {text!r}: its last component {name!r} is not a plain "
                        "file or folder name (empty, '.', '..', or with a separator or NUL)")
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


def _file_path(url: str) -> str | None:
    """The path a bare path or local ``file:`` URL names, as written (a relative path stays
    relative, ``%xx`` of a ``file:`` URL decoded); ``None`` for http(s) URLs.

    The local forms are a plain path, ``file:relative/path``, ``file:///abs/path`` and
    ``file://localhost/abs/path``. A ``file://`` URL naming another host (a remote share,
    or a relative path mis-spelt as ``file://data/x``) and other schemes raise a
    :class:`RefusedError` (reason ``refused_scheme``).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        if parts.netloc and parts.netloc.lower() != "localhost":
            raise RefusedError(f"{url!r} names a file on host {parts.netloc!r}: only local files are read "
                               "(file:relative/path, file:///abs/path, file://localhost/abs/path or a plain path)",
                               reason="refused_scheme")
        path = urllib.parse.unquote(parts.path)
    elif parts.scheme == "" or len(parts.scheme) == 1:  # plain path (or a Windows drive)
        path = url
    else:
        raise RefusedError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (use http(s)://, file:// or a path)",
                           reason="refused_scheme")
    if "\0" in path:
        raise RefusedError(f"NUL character in the path of {url!r}", reason="bad_url")
    if not path:
        raise RefusedError(f"no path in {url!r}", reason="bad_url")
    return path


def local_path(url: str, base_dir: str | os.PathLike = ".") -> Path | None:
    """The filesystem path a bare path or local ``file:`` URL names (see :func:`_file_path`
    for the forms), made absolute against ``base_dir`` but not resolved (links and ``..``
    kept); ``None`` for http(s) URLs. Other URLs raise a :class:`RefusedError`."""
    path = _file_path(url)
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir).resolve() / p


def check_url(value: str | None, section: str, name: str) -> None:
    """A URL param: null, http(s)://, a path, or a local file URL (``file:relative/path``,
    ``file:///abs/path``, ``file://localhost/abs/path``); anything else (another scheme, a
    ``file://`` URL naming another host) is one line naming the param."""
    if value is not None:
        try:
            local_path(value)
        except FetchError as e:
            raise ConfigError(f"params.yaml [{section}]: {name}: {e}") from None


def join_link(base: str, link: str) -> str:
    """What ``link``, a URL or path found in the file at ``base``, names: a relative link is
    taken against ``base``'s folder, as a browser takes a link in a web page.

    With an http(s) ``base`` this is :func:`urllib.parse.urljoin`. With a local ``base``
    (any form :func:`local_path` accepts) a path or local ``file:`` link becomes a plain
    path, relative when ``base`` is (to the same folder ``base`` is relative to): so
    ``data/x/meta.json.gz``, ``file:data/x/meta.json.gz`` and ``file:///repo/data/x/meta.json.gz``
    give links to the same files. ``..`` and links are kept, for the reader to resolve. A
    link of another kind (http(s), another scheme, a ``file://`` URL with a host) is
    returned as it is, to be fetched or refused where it is used.
    """
    folder = _file_path(base)
    if folder is None:
        return urllib.parse.urljoin(base, link)
    try:
        path = _file_path(link)
    except RefusedError:
        return link
    return link if path is None else os.path.join(os.path.dirname(folder), path)


def resolve_url(url: str, base_dir: str | os.PathLike = ".") -> str:
    """Turn a relative path or ``file:`` URL into an absolute ``file://`` URL (links and
    ``..`` resolved); ``http(s)://`` URLs are returned unchanged. See :func:`local_path`."""
    path = local_path(url, base_dir)
    return url if path is None else path.resolve().as_uri()


def open_url(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None):
    """Open ``url`` (http(s):// or file://) for reading bytes; raise FetchError if unreachable.

    Redirects are followed by urllib (to http(s) and ftp only, never to file://); use it
    for user-given URLs. URLs found in downloaded data go through :func:`open_public_http`.
    ``headers`` are added to the request (e.g. ``Range``); proxies come from the usual
    ``http_proxy``/``https_proxy``/``no_proxy`` variables, as they are at this call (a
    fresh opener: ``urlopen``'s shared one keeps the proxies of its first use).
    """
    try:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT} | (headers or {}))
        return urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        after = parse_retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
        e.close()
        raise HTTPStatusError(f"cannot fetch {url}: HTTP {e.code} {e.reason}", status=e.code,
                              retry_after=after) from e
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot fetch {url}: {reason}") from e


# --------------------------------------------------------------------------- bounded reading


class Deadline:
    """A total time budget for one download, over every connection, redirect and read.

    The socket given to :meth:`watch` is shut down when the time is up, so no connect,
    TLS handshake, header line or body read can block past the deadline (a server that
    trickles one byte per second included). Use as a context manager.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self._timer: threading.Timer | None = None
        if math.isfinite(seconds):
            self._timer = threading.Timer(max(0.0, seconds), self._expire)
            self._timer.daemon = True
            self._timer.start()

    def __enter__(self) -> "Deadline":
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down at the deadline (or now, if it has passed)."""
        with self._lock:
            self._sock = sock
            if sock is not None and self._expired:
                _shutdown(sock)

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.at

    def remaining(self) -> float:
        """Seconds left; raises :class:`FetchTimeoutError` when none are."""
        left = self.at - time.monotonic()
        if self._expired or left <= 0:
            raise FetchTimeoutError(f"took longer than {self.seconds:g} s in total")
        return left

    def check(self, url: str) -> None:
        if self.expired:
            raise FetchTimeoutError(f"download of {url} took longer than {self.seconds:g} s in total")


def _shutdown(sock: socket.socket) -> None:
    # the plain socket method: SSLSocket.shutdown would also drop its SSL object under a
    # reader in another thread
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def content_length(resp) -> int | None:
    """The response's Content-Length as a non-negative int, or None (absent or invalid)."""
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def copy_body(resp, out: BinaryIO, url: str, *, max_bytes: int | None, deadline: Deadline,
              on_chunk=None, hasher=None) -> tuple[int, str]:
    """Copy a response body into ``out``; return its size and sha256 hex digest (of
    ``hasher``, when given: a sha256 already fed with the bytes before this body).

    Reads at most one socket read at a time (``read1``), so the size cap and the deadline
    are checked after every piece that arrives. Raises :class:`TooLargeError` past
    ``max_bytes``, :class:`FetchTimeoutError` past the deadline, and
    :class:`IncompleteError` when the body breaks off or is shorter than its
    Content-Length (a body cut short by the deadline counts as a timeout).
    """
    expected = content_length(resp)
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise TooLargeError(f"{url} is {expected:,} bytes, over the cap of {max_bytes:,}")
    read = getattr(resp, "read1", resp.read)
    h = hasher if hasher is not None else hashlib.sha256()
    n = 0
    while True:
        deadline.check(url)
        try:
            chunk = read(CHUNK)
        except (OSError, ValueError, http.client.HTTPException) as e:
            deadline.check(url)
            raise IncompleteError(f"download of {url} broke off: {e}") from e
        if not chunk:
            break
        n += len(chunk)
        if max_bytes is not None and n > max_bytes:
            raise TooLargeError(f"{url} is over the cap of {max_bytes:,} bytes")
        out.write(chunk)
        h.update(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    if expected is not None and n == expected:
        return n, h.hexdigest()
    deadline.check(url)  # the watchdog ends a stalled body with an EOF: that is a timeout
    if expected is not None:
        raise IncompleteError(f"download of {url} ended early: {n} of {expected} bytes")
    return n, h.hexdigest()


# --------------------------------------------------------------------------- user-given URLs


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    base_dir: str | os.PathLike = ".",
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
    max_bytes: int | None = None,
    total_timeout: float | None = None,
    partial_dir: str | os.PathLike | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its sha256 (when given).

    ``url`` may be http(s)://, file:// or a path relative to ``base_dir`` (a user-given
    URL: any host and path are allowed). ``timeout`` bounds each socket operation,
    ``total_timeout`` the whole file (all attempts together) and ``max_bytes`` its size.
    Network errors, broken-off bodies, 408/429 and 5xx answers are tried ``retries`` times
    in all, waiting ``backoff * 2**k`` seconds (plus deterministic jitter), or what the
    server's ``Retry-After`` asks, within the total timeout; a checksum mismatch, an
    oversized body, another 4xx status or the total timeout are not retried. ``dest`` is
    only created when the whole file arrived and matched.

    With ``partial_dir``, an http(s) download is resumable: its bytes go to
    ``partial_dir/<sha1 of url>.part`` (with a ``.json`` beside it holding the server's
    ETag or Last-Modified), which survives a failed attempt, a timeout or a killed run;
    the next attempt asks only for the rest (``Range`` with ``If-Range``). A server that
    ignores the range (200), has changed the file (200 through If-Range) or cannot serve it
    (416) starts the file afresh. A resumed file whose sha256 does not match is fetched
    once more from its first byte. The partial files are removed once ``dest`` is in place
    or the download is refused (checksum, size).
    """
    dest = Path(dest)
    full = resolve_url(url, base_dir)
    resumable = partial_dir is not None and full.startswith(("http://", "https://"))
    part = Path(partial_dir) / f"{cache_key(full)}.part" if resumable else None
    with Deadline(total_timeout if total_timeout is not None else float("inf")) as deadline:
        for attempt in range(1, retries + 1):
            try:
                deadline.check(url)
                if part is None:
                    with atomic_path(dest) as tmp:
                        _download(full, url, tmp, None, sha256, timeout, deadline, max_bytes, progress, dest.name)
                    return dest
                # a resumed file that does not match its sha256 is dropped and fetched once
                # more from its first byte (that second call cannot resume, so it returns
                # True or raises)
                args = (full, url, None, part, sha256, timeout, deadline, max_bytes, progress, dest.name)
                if _download(*args) or _download(*args):
                    with atomic_path(dest) as tmp:
                        shutil.move(part, tmp)
                    _drop_partial(part)
                    return dest
            except (ChecksumError, TooLargeError):
                if part is not None:
                    _drop_partial(part)
                raise
            except (FetchTimeoutError, RefusedError):
                raise
            except HTTPStatusError as e:
                if not e.retryable:
                    raise
                error: FetchError = e
            except FetchError as e:
                error = e
            if attempt == retries or not full.startswith("http"):
                raise error
            time.sleep(min(retry_wait(error, attempt, backoff, full), max(0.0, deadline.at - time.monotonic())))
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


def cache_key(url: str) -> str:
    """The sha1 hex of a URL: what files cached or resumed for it are named after."""
    return hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _drop_partial(part: Path) -> None:
    for p in (part, part.with_suffix(".json")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _partial_state(part: Path, url: str) -> tuple[int, str | None]:
    """Bytes already in ``part`` and the validator to resume them with; (0, None) and the
    partial files removed when they do not belong to ``url`` or cannot be resumed."""
    try:
        meta = json.loads(part.with_suffix(".json").read_text())
        size = part.stat().st_size
    except (OSError, ValueError):
        _drop_partial(part)
        return 0, None
    validator = meta.get("validator") if isinstance(meta, dict) and meta.get("url") == url else None
    if not isinstance(validator, str) or not validator or size == 0:
        _drop_partial(part)
        return 0, None
    return size, validator


def _validator(resp) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may carry (RFC 9110 §13.1.5)."""
    etag = (resp.headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (resp.headers.get("Last-Modified") or "").strip() or None


def _download(full: str, url: str, tmp: Path | None, part: Path | None, sha256: str | None, timeout: float,
              deadline: Deadline, max_bytes: int | None, progress: bool, name: str) -> bool:
    """One attempt: write the whole body to ``tmp``, or the rest of it to ``part``.
    Returns False when a resumed file does not match ``sha256`` (its partial files are
    dropped), True when the file is complete and matches."""
    from tqdm.auto import tqdm

    offset, validator = _partial_state(part, full) if part is not None else (0, None)
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
    try:
        resp = open_url(full, min(timeout, deadline.remaining()), headers)
    except HTTPStatusError as e:
        if e.status == 416 and part is not None:  # the partial file no longer fits the file served
            _drop_partial(part)
            raise IncompleteError(f"{url}: the server cannot continue the partial download; starting afresh") from e
        raise
    with resp:
        h = hashlib.sha256()
        status = getattr(resp, "status", 200)
        if offset and status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
            if m is None or int(m[1]) != offset:
                _drop_partial(part)
                raise IncompleteError(f"{url}: the server answered the range request with "
                                      f"{resp.headers.get('Content-Range')!r}; starting afresh")
            if max_bytes is not None and m[3] != "*" and int(m[3]) > max_bytes:
                raise TooLargeError(f"{url} is {int(m[3]):,} bytes, over the cap of {max_bytes:,}")
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    h.update(chunk)
        else:  # no range asked, or the server ignored it / the file changed: from the first byte
            offset = 0
        if part is not None:
            part.parent.mkdir(parents=True, exist_ok=True)
            # a 206 need not repeat the validator it was asked with (If-Range): keep that one
            new = _validator(resp) or (validator if offset else None)
            if new is None:
                _drop_partial(part)  # nothing to resume with: an interrupted body starts afresh
            else:
                part.with_suffix(".json").write_text(json.dumps({"url": full, "validator": new}))
        with open(tmp if part is None else part, "ab" if offset else "wb") as out, \
                tqdm(total=None if content_length(resp) is None else offset + content_length(resp),
                     initial=offset, unit="B", unit_scale=True, desc=f"download {name}",
                     disable=not progress, leave=False) as bar:
            _, digest = copy_body(resp, out, url, max_bytes=None if max_bytes is None else max_bytes - offset,
                                  deadline=deadline, on_chunk=bar.update, hasher=h)
    if sha256 and digest != sha256.lower():
        if offset:
            _drop_partial(part)
            return False
        raise ChecksumError(f"sha256 mismatch for {url} (saving to {name}): expected {sha256}, got {digest}")
    return True


# --------------------------------------------------------------------------- URLs from data


#: NAT64's well-known prefix: the low 32 bits are an IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = (301, 302, 303, 307, 308)
_ssl_context: ssl.SSLContext | None = None


def _is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local
                                   or addr.is_multicast or addr.is_reserved or addr.is_unspecified
                                   or getattr(addr, "is_site_local", False))


def is_public_address(ip: str) -> bool:
    """True for a global unicast address: not loopback, private, link-local, multicast,
    reserved, unspecified or shared; IPv4 addresses inside IPv6 (mapped, 6to4, NAT64,
    Teredo) must be public too."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return _is_public(addr.ipv4_mapped)
        inner = [addr.sixtofour, *(addr.teredo or ())]
        if addr in _NAT64:
            inner.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if not all(_is_public(a) for a in inner if a is not None):
            return False
    return _is_public(addr)


def _addresses(url: str, host: str, port: int, allow_address: Callable[[str], bool]) -> list[tuple]:
    """Resolve ``host``; refuse it when any of its addresses is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot fetch {url}: cannot resolve {host}: {e}", reason="unresolvable",
                         no_connection=True) from e
    for info in infos:
        if not allow_address(info[4][0]):
            raise RefusedError(f"refusing {url}: {host} has the non-public address {info[4][0]}",
                               reason="refused_private_host")
    return infos


def _proxy_for(url: str, parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The forward proxy for one hop, by urllib's own rules (those of the dump downloads):
    ``http_proxy`` for http, ``https_proxy`` for https (:func:`urllib.request.getproxies`),
    None when unset or when ``no_proxy`` matches the host (:func:`urllib.request.proxy_bypass`).
    Only ``http://`` proxies are spoken to (https goes through them with CONNECT)."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    try:
        found = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        usable = found.scheme == "http" and bool(found.hostname) and found.port != 0  # .port raises if invalid
    except ValueError:
        usable = False
    if not usable:  # every URL fails alike: counted as no connection, so the fetcher stops soon
        shown = re.sub(r"^(\w+://)?[^/]*@", r"\1", proxy)  # never a password
        raise FetchError(f"cannot fetch {url}: {parts.scheme}_proxy {shown!r} is not an http://host[:port] proxy",
                         no_connection=True)
    return found


def _proxy_headers(proxy: urllib.parse.SplitResult | None) -> dict[str, str]:
    """``Proxy-Authorization`` (Basic) when the proxy URL carries ``user:password@``."""
    if proxy is None or proxy.username is None:
        return {}
    import base64

    pair = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}


def _open_socket(url: str, where: str, infos: list[tuple], deadline: Deadline) -> socket.socket:
    """A TCP connection to the first of ``infos`` (addresses of ``where``) that answers,
    shut down by ``deadline``."""
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        deadline.watch(sock)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
            deadline.check(url)
    raise FetchError(f"cannot fetch {url}: cannot connect to {where}: {last}", no_connection=True)


def _tls_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _connect(url: str, parts: urllib.parse.SplitResult, port: int, infos: list[tuple],
             proxy: urllib.parse.SplitResult | None, deadline: Deadline) -> http.client.HTTPConnection:
    """An open HTTP(S) connection for one hop: straight to the vetted addresses ``infos``
    of the target (no second DNS lookup), or to ``proxy`` (an address of the user's own
    configuration, not checked). Through a proxy an https target gets a CONNECT tunnel
    (http.client's ``set_tunnel``), inside which TLS is verified against the target host."""
    host = parts.hostname or ""
    if proxy is None:
        endpoint, addresses = (host, port), infos
    else:
        endpoint = (proxy.hostname or "", proxy.port or 80)
        addresses = _addresses(url, endpoint[0], endpoint[1], lambda ip: True)
    where = f"{'proxy ' if proxy else ''}{endpoint[0]}:{endpoint[1]}"
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(*endpoint, context=_tls_context())
        if proxy is not None:
            conn.set_tunnel(host, port, headers=_proxy_headers(proxy))
    else:
        conn = http.client.HTTPConnection(*endpoint)
    # http.client's own connect (CONNECT, then the TLS handshake) on a socket opened here:
    # _create_connection is its socket factory (socket.create_connection, 3.11 to 3.13)
    conn._create_connection = lambda *_: _open_socket(url, where, addresses, deadline)
    try:
        conn.connect()
    except (OSError, http.client.HTTPException) as e:  # the tunnel refused, TLS failed
        conn.close()
        deadline.check(url)
        kind = "TLS" if isinstance(e, ssl.SSLError) else where
        raise FetchError(f"cannot fetch {url}: {kind}: {e}") from e
    except FetchError:
        conn.close()
        raise
    deadline.watch(conn.sock)  # the TLS socket, when wrapped
    return conn


@contextlib.contextmanager
def open_public_http(url: str, deadline: Deadline, *,
                     allow_address: Callable[[str], bool] = is_public_address,
                     max_redirects: int = MAX_REDIRECTS) -> Iterator[http.client.HTTPResponse]:
    """GET a URL found in downloaded data; yield the ``200`` response.

    Only http(s) is followed, and only to hosts whose every address passes
    ``allow_address`` (by default: public internet addresses), resolved here and checked
    again on every redirect hop (at most ``max_redirects``). The connection goes to the
    checked address, or, when ``http_proxy``/``https_proxy`` apply (see
    :func:`_proxy_for`), to that proxy, but only once the target passed the same check;
    a redirect the proxy relays is checked before it is followed. Residual trust with a
    proxy: it resolves the host name itself, so a name that resolves differently there
    than here is outside this check (an IP literal is not); and a name that does not
    resolve here is not fetched, proxy or not. Refusals raise
    :class:`RefusedError` (reason ``refused_scheme`` or ``refused_private_host``); other
    statuses :class:`HTTPStatusError`; the ``deadline`` bounds everything.
    """
    current = url
    for _ in range(max_redirects + 1):
        try:
            parts = urllib.parse.urlsplit(current)
        except ValueError as e:  # e.g. an unclosed [IPv6 bracket
            raise RefusedError(f"refusing {url}: {current!r}: {e}", reason="bad_url") from e
        if parts.scheme not in ("http", "https"):
            raise RefusedError(f"refusing {url}: it leads to {current!r}, which is not http(s)",
                               reason="refused_scheme")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise RefusedError(f"refusing {url}: {e}", reason="bad_url") from e
        if not parts.hostname:
            raise RefusedError(f"refusing {url}: no host in {current!r}", reason="bad_url")
        infos = _addresses(url, parts.hostname, port, allow_address)  # with a proxy or without
        proxy = _proxy_for(url, parts)
        conn = _connect(url, parts, port, infos, proxy, deadline)
        resp: http.client.HTTPResponse | None = None
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if proxy is not None and parts.scheme == "http":  # a plain proxy takes the absolute URL
                target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
                headers |= _proxy_headers(proxy)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                deadline.check(url)
                raise FetchError(f"cannot fetch {url}: {e}") from e
            except ValueError as e:  # http.client's InvalidURL, a non-ASCII host
                raise RefusedError(f"refusing {url}: {e}", reason="bad_url") from e
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise HTTPStatusError(f"cannot fetch {url}: HTTP {resp.status} without a Location")
                try:
                    current = urllib.parse.urljoin(current, location.strip())
                except ValueError as e:
                    raise RefusedError(f"refusing {url}: redirect to {location!r}: {e}", reason="bad_url") from e
                continue
            if resp.status != 200:
                raise HTTPStatusError(f"cannot fetch {url}: HTTP {resp.status} {resp.reason}",
                                      "rate_limited" if resp.status == 429 else None, status=resp.status,
                                      retry_after=parse_retry_after(resp.getheader("Retry-After")))
            yield resp
            return
        finally:
            if resp is not None:
                resp.close()
            conn.close()
            deadline.watch(None)
    raise FetchError(f"cannot fetch {url}: more than {max_redirects} redirects", reason="too_many_redirects")
