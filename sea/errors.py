"""The errors every part of the pipeline raises, and how a value is shown in one.

A stage that fails on bad input prints one line naming the file (and line) or the param:
:class:`ConfigError` for a params.yaml value, :class:`DataError` for input data,
:class:`FetchError` (and its kinds) for a download. ``sea.cli`` turns them into that line.
This module imports nothing from ``sea``: every other module may import it.
"""

from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """A params.yaml value that is missing, unknown or out of range."""


def one_line(message: str) -> str:
    """``message`` with its line breaks folded, so it prints as a single line."""
    return " ".join(str(message).split())


#: Longest rendering of a params value in an error message: a value may be a list of a
#: million entries (or a YAML alias bomb), and a message is one line for a person to read.
MAX_SHOWN_CHARS = 100
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 6, 6, 4, 6
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 80


def shorten(text: str) -> str:
    """``text`` cut to at most :data:`MAX_SHOWN_CHARS` characters (ending in ``...`` if cut)."""
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, at most :data:`MAX_SHOWN_CHARS` characters, built
    without ever rendering the whole value (reprlib looks at the first few items of each
    level). Every message that shows a params value shows it through this."""
    return shorten(_SHOWN.repr(value))


class DataError(ValueError):
    """Bad input data: the message names the file (and the line where there is one)."""


class FetchError(RuntimeError):
    """A download that failed: unreachable URL, HTTP error or checksum mismatch.

    ``reason`` names the kind of failure in one word (counted per reason where many URLs
    are fetched, e.g. the item images).
    """

    reason = "unreachable"
    #: True when no connection to the host could be made at all (DNS failure, connection
    #: refused, no route): the signal that a host, or the whole network, is absent.
    no_connection = False

    def __init__(self, message: str, reason: str | None = None, *, no_connection: bool = False) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.no_connection = no_connection


class ChecksumError(FetchError):
    """The downloaded bytes do not have the sha256 the params promise."""

    reason = "checksum"


class HTTPStatusError(FetchError):
    """The server answered with an error status (4xx, 5xx) or a redirect without target.

    ``status`` is the HTTP status (None for a redirect without target) and ``retry_after``
    the seconds its ``Retry-After`` header asks to wait (None when absent or invalid).
    """

    reason = "http_error"

    def __init__(
        self, message: str, reason: str | None = None, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Rate limiting (429), a timeout on the server's side (408) or a server error (5xx)."""
        return self.status is not None and (self.status in (408, 429) or 500 <= self.status <= 599)


class IncompleteError(FetchError):
    """The body broke off or was shorter than its Content-Length."""

    reason = "incomplete"


class TooLargeError(FetchError):
    """The body is larger than the size cap."""

    reason = "too_large"


class FetchTimeoutError(FetchError):
    """The whole download took longer than its time cap."""

    reason = "timeout"


class RefusedError(FetchError):
    """A URL the policy does not follow: a private address, a file outside the dataset,
    an unsupported scheme. Never retried."""

    reason = "refused"
