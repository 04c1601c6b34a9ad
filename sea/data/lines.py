"""Reading untrusted text files line by line, and checking the values in them.

Every text reader of the project (Amazon reviews and metadata, MMRec ``.inter`` and
``i_id_mapping.csv``) goes through :class:`Lines`, so they share the same limits:

* a line longer than :data:`MAX_LINE_BYTES` is an error (before it is parsed);
* a UTF-8 byte-order mark at the start of the file is dropped;
* a gzip file (recognised by its first two bytes) that fails its CRC or length check, holds
  a corrupt deflate stream or trailing garbage, or expands more than :data:`MAX_GZIP_RATIO`
  times, is an error; one that simply ends early (an interrupted download) is an error
  unless the caller allows it, and then only the complete lines before the end are used.

The ``parse_*`` and ``check_*`` helpers turn a field into a value or raise a
:class:`~sea.io.DataError` naming the file and line; they accept only plain ASCII numbers
(no ``nan``, ``inf``, ``1_000`` or non-ASCII digits) and ids that are printable text.
:func:`check_stars` and :func:`check_review_time` add what only Amazon data promises: 1-5
stars, and a review time in a fixed plausible window in the reader's own unit.
"""

from __future__ import annotations

import gzip
import html
import re
import warnings
import zlib
from pathlib import Path
from typing import Iterator

from sea.io import DataError

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_GZIP_RATIO",
    "MAX_ID",
    "MAX_TIMESTAMP",
    "FLOAT32_MAX",
    "FLOAT_PATTERN",
    "ID_PATTERN",
    "TIMESTAMP_PATTERN",
    "TruncatedFileWarning",
    "Lines",
    "decode",
    "require_newline",
    "check_id",
    "check_text",
    "check_rating",
    "check_timestamp",
    "check_stars",
    "check_review_time",
    "MIN_STARS",
    "MAX_STARS",
    "FIRST_REVIEW_SECOND",
    "END_REVIEW_SECOND",
    "parse_id",
    "parse_finite",
    "parse_timestamp",
]

#: The longest line any reader accepts, in bytes (uncompressed). The largest line of the
#: real sample dumps is 14,553 bytes (a 2014 review); a longer line is refused before it
#: is parsed, which bounds the time and memory ``ast.literal_eval`` can spend on one line.
MAX_LINE_BYTES = 1 << 20

#: A gzip stream that expands more than this many times is refused as a decompression
#: bomb (checked after every 64 MiB out). The real dumps expand 3-7 times.
MAX_GZIP_RATIO = 100
_RATIO_CHECK_EVERY = 64 << 20

#: Integer ids (MMRec ``userID``/``itemID``) must lie in ``0 <= id < MAX_ID`` (int32).
MAX_ID = 2**31 - 1
#: Timestamps must lie in ``0 <= ts < MAX_TIMESTAMP`` (int64; seconds or milliseconds).
MAX_TIMESTAMP = 2**63
#: The largest finite float32: ratings and features beyond it would turn into inf.
FLOAT32_MAX = 3.4028234663852886e38

#: Amazon ratings are 1 to 5 stars in every release (the real dumps hold 1.0-5.0 only). A
#: value outside is not a rating: a timestamp from swapped CSV columns, another scale.
MIN_STARS, MAX_STARS = 1.0, 5.0
#: Amazon review times lie in ``FIRST_REVIEW_SECOND <= ts < END_REVIEW_SECOND`` unix seconds:
#: from 1995-01-01 (Amazon opened in July 1995; no review is older) to 2100-01-01. The window
#: is fixed, not the current clock, so that whether a file is read never depends on the day
#: it is read. The 2023 release counts milliseconds: the same window times 1000. The two
#: windows do not overlap, so a value in the other unit is recognised and named.
FIRST_REVIEW_SECOND = 788_918_400  # 1995-01-01T00:00:00Z
END_REVIEW_SECOND = 4_102_444_800  # 2100-01-01T00:00:00Z
_PER_SECOND = {"s": 1, "ms": 1000}
_UNIT_NAME = {"s": "seconds", "ms": "milliseconds"}
_UNIT_RELEASE = {"s": "the 2014/2018 dumps", "ms": "the 2023 dumps"}

BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_PROGRESS_EVERY = 1 << 14  # lines between progress-bar updates

# Plain ASCII numbers only: float() and int() would also take "nan", "inf", " 5", "1_0", "٥".
# (The patterns are also applied, anchored, by pyarrow to whole columns: keep them RE2-safe.)
FLOAT_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?"
ID_PATTERN = r"[0-9]{1,10}"
TIMESTAMP_PATTERN = r"([0-9]{1,19})(?:\.0*)?"
_FLOAT = re.compile(FLOAT_PATTERN, re.ASCII)
_ID = re.compile(ID_PATTERN, re.ASCII)
_UINT_DOT_ZERO = re.compile(TIMESTAMP_PATTERN, re.ASCII)
# Characters no id may hold: C0/C1 controls (tab, newline, NUL...), lone surrogates, BOM.
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufeff]")


class TruncatedFileWarning(UserWarning):
    """A gzip file that ends early was read up to its last complete line (``allow_truncated``)."""


class Lines:
    """Iterate over the complete lines of a plain or gzip file, with 1-based line numbers.

    Yields ``(line_number, line)`` with ``line`` the raw bytes including the newline; a last
    line without a newline is yielded (without one) only when the stream ended properly.
    A damaged gzip stream stops the iteration without an exception; :meth:`check_complete`
    then raises (or warns), so that callers decide after reading. A line over
    :data:`MAX_LINE_BYTES` raises :class:`~sea.io.DataError` at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.n_lines = 0  # complete lines yielded so far
        self.n_bytes = 0  # uncompressed bytes in those lines
        self.truncated: str | None = None  # the gzip stream ends early
        self.corrupt: str | None = None  # the gzip stream fails a check
        self.dropped_partial = False  # an incomplete last line was discarded

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        from tqdm.auto import tqdm

        try:
            raw = open(self.path, "rb")
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        with raw, tqdm(
            unit="lines", unit_scale=True, desc=f"read {self.path.name}", disable=None, leave=False
        ) as bar:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
            pending: bytes | None = None
            next_ratio_check = _RATIO_CHECK_EVERY
            try:
                while line := stream.readline(MAX_LINE_BYTES + 1):
                    if len(line) > MAX_LINE_BYTES:
                        self._too_long(stream, line)
                    if self.n_lines == 0 and line.startswith(BOM):
                        line = line[len(BOM):]
                    if not line.endswith(b"\n"):  # only ever the last line of the stream
                        pending = line
                        continue
                    self.n_lines += 1
                    self.n_bytes += len(line)
                    if self.n_lines % _PROGRESS_EVERY == 0:
                        bar.update(_PROGRESS_EVERY)
                    if is_gzip and self.n_bytes >= next_ratio_check:
                        self._check_ratio(raw.tell())
                        next_ratio_check += _RATIO_CHECK_EVERY
                    yield self.n_lines, line
            except EOFError as e:
                self.truncated = f"the gzip stream ends early ({e})"
            except (zlib.error, gzip.BadGzipFile) as e:
                self.corrupt = f"the gzip stream is corrupt ({e})"
            if pending is not None:
                if self.truncated is None and self.corrupt is None:
                    self.n_lines += 1
                    self.n_bytes += len(pending)
                    yield self.n_lines, pending
                else:
                    self.dropped_partial = True
            bar.update(self.n_lines % _PROGRESS_EVERY)

    def _too_long(self, stream, start: bytes) -> None:
        """Raise for the over-long line that starts with ``start``; measure it (at most
        16 x the limit, without keeping it)."""
        size, last, exact = len(start), start, True
        try:
            while not last.endswith(b"\n"):
                if size >= 16 * MAX_LINE_BYTES:
                    exact = False
                    break
                last = stream.readline(MAX_LINE_BYTES)
                if not last:
                    break  # the line ends the file
                size += len(last)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            exact = False
        at_least = "" if exact else "at least "
        raise DataError(
            f"{self.path}:{self.n_lines + 1}: line is {at_least}{size:,} bytes, over the limit of "
            f"{MAX_LINE_BYTES:,} (MAX_LINE_BYTES in sea/data/lines.py); no record of a real dump "
            f"is that long, so the file is damaged or not what it claims to be"
        )

    def _check_ratio(self, compressed: int) -> None:
        if self.n_bytes > MAX_GZIP_RATIO * max(compressed, 1):
            raise DataError(
                f"{self.path}: the gzip stream expands more than {MAX_GZIP_RATIO} times "
                f"({compressed:,} compressed bytes gave {self.n_bytes:,} by line {self.n_lines:,}): "
                f"refused as a decompression bomb (real dumps expand 3-7 times)"
            )

    def check_complete(self, allow_truncated: bool = False) -> None:
        """Raise DataError for a damaged stream, or warn when it only ends early and
        ``allow_truncated``. A corrupt stream (CRC or length check, bad deflate data) is
        always an error: its lines cannot be trusted."""
        size = self.path.stat().st_size
        if self.corrupt is not None:
            raise DataError(
                f"{self.path}: {self.corrupt} after {self.n_lines:,} lines ({self.n_bytes:,} "
                f"uncompressed bytes; the file has {size:,}): the data is damaged, not just cut "
                f"short, so none of it can be trusted (allow_truncated does not apply). "
                f"Re-download the file and check its sha256."
            )
        if self.truncated is None:
            return
        partial = " (the incomplete line after them was dropped)" if self.dropped_partial else ""
        if not allow_truncated:
            raise DataError(
                f"{self.path}: {self.truncated}; only {self.n_lines:,} complete lines "
                f"({self.n_bytes:,} uncompressed bytes, up to compressed byte {size:,}) could be "
                f"read{partial}. The file is probably an interrupted download: re-download it "
                f"(and check its sha256), or pass allow_truncated=True to use the "
                f"{self.n_lines:,} complete lines only."
            )
        warnings.warn(
            f"{self.path}: {self.truncated}; kept the {self.n_lines:,} complete lines read before "
            f"the damage{partial} because allow_truncated=True. The data set is incomplete.",
            TruncatedFileWarning,
            stacklevel=3,
        )


def decode(line: bytes, where: str) -> str:
    """The line as text, without its line ending; UTF-8 only."""
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e})") from None


def check_id(value: object, name: str, where: str) -> str:
    """An id field: non-blank text without control characters, BOM or lone surrogates."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {name} must be a non-empty string, got {value!r:.100}")
    bad = _BAD_ID_CHAR.search(value)
    if bad:
        raise DataError(
            f"{where}: {name} {value!r:.100} holds the character {bad.group()!r} (control "
            f"characters, byte-order marks and lone surrogates are not allowed in ids)"
        )
    return value


def check_text(value: str, name: str, where: str) -> str:
    """A text field that must be valid Unicode (no lone surrogates, as "\\ud800" in JSON)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: field {name!r} holds a lone surrogate (invalid Unicode): "
                            f"{value!r:.100}") from None
    return value


def check_rating(value: object, name: str, where: str) -> float:
    """A rating from a parsed record: a finite number that float32 can hold."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {name} must be a number, got {value!r:.100}")
    try:
        x = float(value)
    except OverflowError:
        x = float("inf")
    if not abs(x) <= FLOAT32_MAX:  # also False for NaN
        raise DataError(f"{where}: {name} must be a finite number within float32's range, got {value!r:.100}")
    return x


def check_timestamp(value: object, name: str, where: str) -> int:
    """A timestamp from a parsed record: a whole number, 0 <= ts < 2**63."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: {name} must be a whole number (unix time), got {value!r:.100}")
    if not 0 <= value < MAX_TIMESTAMP:
        raise DataError(f"{where}: {name} {value!r:.100} is out of range (0 <= unix time < 2**63)")
    return value


def check_stars(value: float, name: str, where: str) -> float:
    """An Amazon rating (already a checked number): ``MIN_STARS <= value <= MAX_STARS``."""
    if not MIN_STARS <= value <= MAX_STARS:
        hint = ""
        if any(_in_window(value, unit) for unit in _PER_SECOND):
            hint = " and looks like a unix time"
        raise DataError(f"{where}: {name} {value!r} is outside Amazon's 1-5 stars{hint}")
    return value


def _in_window(ts: float, unit: str) -> bool:
    return FIRST_REVIEW_SECOND * _PER_SECOND[unit] <= ts < END_REVIEW_SECOND * _PER_SECOND[unit]


def check_review_time(ts: int, name: str, where: str, unit: str) -> int:
    """An Amazon review time (already a checked whole number) in ``unit`` ("s" or "ms"):
    from 1995-01-01 to 2100-01-01 (:data:`FIRST_REVIEW_SECOND`, :data:`END_REVIEW_SECOND`).
    A value that fits the other unit's window is refused with that hint."""
    if _in_window(ts, unit):
        return ts
    factor = _PER_SECOND[unit]
    other = next(u for u in _PER_SECOND if u != unit)
    hint = ""
    if _in_window(ts, other):
        hint = (f"; it looks like unix {_UNIT_NAME[other]} (as in {_UNIT_RELEASE[other]}), but this "
                f"file is read in {_UNIT_NAME[unit]} (as in {_UNIT_RELEASE[unit]})")
    raise DataError(
        f"{where}: {name} {ts} is outside Amazon's review times, 1995-01-01 to 2100-01-01 "
        f"({FIRST_REVIEW_SECOND * factor} <= {name} < {END_REVIEW_SECOND * factor} unix "
        f"{_UNIT_NAME[unit]}){hint}"
    )


def parse_finite(text: str, name: str, where: str) -> float:
    """A decimal number field (e.g. "5.0"), finite and within float32's range."""
    if not _FLOAT.fullmatch(text):
        raise DataError(f"{where}: {name} {text!r:.100} is not a plain decimal number")
    return check_rating(float(text), name, where)


def parse_timestamp(text: str, name: str, where: str) -> int:
    """A whole-number field ("1357776000"; "1357776000.0" is accepted), 0 <= ts < 2**63."""
    m = _UINT_DOT_ZERO.fullmatch(text)
    if not m:
        raise DataError(f"{where}: {name} {text!r:.100} is not a non-negative whole number")
    return check_timestamp(int(m.group(1)), name, where)


def parse_id(text: str, name: str, where: str) -> int:
    """A 0-based integer id field: ASCII digits, 0 <= id < 2**31 - 1."""
    if not _ID.fullmatch(text) or int(text) >= MAX_ID:
        raise DataError(f"{where}: {name} {text!r:.100} is not an id (a whole number 0 <= id < 2**31 - 1)")
    return int(text)


def require_newline(line: bytes, where: str) -> None:
    """A row of a delimited file must end with a newline: a last row without one may have
    been cut off mid-value ("1357776000" -> "13577"), which no check of the value can see."""
    if not line.endswith(b"\n"):
        raise DataError(
            f"{where}: the last line has no newline at its end, so the file may be cut off in the "
            f"middle of a value; if the line is complete, end the file with a newline"
        )


def review_fields(rec: dict, keys: tuple[str, str, str, str], where: str, release: str,
                  unit: str) -> tuple[str, str, float, int]:
    """``(user, item, rating, timestamp)`` of one review record whose fields are named
    ``keys`` (in that order), each checked (1-5 stars, a review time in ``unit``: "s" or
    "ms"); a missing field is one DataError naming it."""
    try:
        user, item, rating, ts = (rec[k] for k in keys)
    except KeyError as e:
        raise DataError(f"{where}: review lacks the required field {e.args[0]!r} ({release} reviews need "
                        f"{', '.join(keys)}; present: {', '.join(rec)[:300]})") from None
    return (check_id(user, keys[0], where), check_id(item, keys[1], where),
            check_stars(check_rating(rating, keys[2], where), keys[2], where),
            check_review_time(check_timestamp(ts, keys[3], where), keys[3], where, unit))


# --------------------------------------------------------------------------- metadata text

#: Separator between the levels of a category path in the ``categories`` column.
CATEGORY_SEPARATOR = " > "
_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")
# An opening tag cut off at the end of the text, as in some 2018 titles
# ('<span class="a-size-medium a-color-secondary"').
_DANGLING_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip HTML tags (including one cut off at the end), unescape entities, squeeze spaces."""
    if "<" in text:
        text = _DANGLING_TAG.sub(" ", _TAG.sub(" ", text))
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def text_values(rec: dict, key: str, where: str) -> list[str]:
    """A metadata text field as it is: a string or a list of strings; missing -> []."""
    value = rec.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise DataError(f"{where}: field {key!r} must be text or a list of text, got {type(value).__name__}")


def text_field(rec: dict, key: str, where: str) -> str:
    """A metadata text field joined with spaces, cleaned (:func:`clean_text`) and checked."""
    return check_text(clean_text(" ".join(text_values(rec, key, where))), key, where)
