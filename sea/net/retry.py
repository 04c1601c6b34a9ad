"""When to retry a download and how long to wait first: ``Retry-After`` headers and
exponential backoff with deterministic jitter."""

from __future__ import annotations

import email.utils
import hashlib
import time

from sea.errors import FetchError


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
