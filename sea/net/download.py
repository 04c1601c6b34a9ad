"""Downloads of user-given URLs (the dumps in params.yaml): bounded in size and total
time, retried, resumable, verified against a sha256, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from sea.errors import (
    ChecksumError,
    FetchError,
    FetchTimeoutError,
    HTTPStatusError,
    IncompleteError,
    RefusedError,
    TooLargeError,
)
from sea.files import CHUNK, atomic_path
from sea.net.http import USER_AGENT, Deadline, content_length, copy_body
from sea.net.retry import parse_retry_after, retry_wait
from sea.net.urls import cache_key, resolve_url


def open_url(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None):
    """Open ``url`` (http(s):// or file://) for reading bytes; raise FetchError if unreachable.

    Redirects are followed by urllib (to http(s) and ftp only, never to file://); use it
    for user-given URLs. URLs found in downloaded data go through
    :func:`sea.net.http.open_public_http`. ``headers`` are added to the request (e.g.
    ``Range``); proxies come from the usual ``http_proxy``/``https_proxy``/``no_proxy``
    variables, as they are at this call (a fresh opener: ``urlopen``'s shared one keeps
    the proxies of its first use).
    """
    try:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT} | (headers or {}))
        return urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        after = parse_retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
        e.close()
        raise HTTPStatusError(f"cannot fetch {url}: HTTP {e.code} {e.reason}", status=e.code, retry_after=after) from e
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
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


def _download(
    full: str,
    url: str,
    tmp: Path | None,
    part: Path | None,
    sha256: str | None,
    timeout: float,
    deadline: Deadline,
    max_bytes: int | None,
    progress: bool,
    name: str,
) -> bool:
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
                raise IncompleteError(
                    f"{url}: the server answered the range request with "
                    f"{resp.headers.get('Content-Range')!r}; starting afresh"
                )
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
        with (
            open(tmp if part is None else part, "ab" if offset else "wb") as out,
            tqdm(
                total=None if content_length(resp) is None else offset + content_length(resp),
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=f"download {name}",
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            _, digest = copy_body(
                resp,
                out,
                url,
                max_bytes=None if max_bytes is None else max_bytes - offset,
                deadline=deadline,
                on_chunk=bar.update,
                hasher=h,
            )
    if sha256 and digest != sha256.lower():
        if offset:
            _drop_partial(part)
            return False
        raise ChecksumError(f"sha256 mismatch for {url} (saving to {name}): expected {sha256}, got {digest}")
    return True
