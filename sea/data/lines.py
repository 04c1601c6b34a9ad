"""Reading untrusted text files line by line, and checking the values in them.

Every text reader of the project (Amazon reviews and metadata, MMRec ``.inter`` and
``i_id_mapping.csv``) goes through :class:`Lines`, so they share the same limits:

* a line longer than :data:`MAX_LINE_BYTES` is an error (before it is parsed);
* a UTF-8 byte-order mark at the start of the file is dropped;
* a gzip file (recognised by its first two bytes) that fails its CRC or length check, holds
  a corrupt deflate stream or trailing garbage, ends early yet still ends with its own
  trailer, or expands more than :data:`MAX_GZIP_RATIO` times, is an error; one that is cut
  short (an interrupted download) is an error unless the caller allows it, and then only
  the complete lines decoded before its last :data:`TRUNCATION_MARGIN` bytes are used
  (see :class:`Lines`).

The ``parse_*`` and ``check_*`` helpers turn a field into a value or raise a
:class:`~sea.errors.DataError` naming the file and line; they accept only plain ASCII numbers
(no ``nan``, ``inf``, ``1_000`` or non-ASCII digits) and ids that are printable text.
:func:`check_stars` and :func:`check_review_time` add what only Amazon data promises: 1-5
stars, and a review time in a fixed plausible window in the reader's own unit.
"""

from __future__ import annotations

import html
import itertools
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from sea.errors import DataError

__all__ = [
    "MAX_LINE_BYTES",
    "BAD_ID_CHAR",
    "MAX_GZIP_RATIO",
    "MAX_ID",
    "MAX_TIMESTAMP",
    "FLOAT32_MAX",
    "FLOAT_PATTERN",
    "ID_PATTERN",
    "TIMESTAMP_PATTERN",
    "TRUNCATION_MARGIN",
    "TRAILER_TOLERANCE",
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

#: A gzip stream that ends early keeps (with ``allow_truncated``) only the lines decoded from
#: its compressed bytes before the last TRUNCATION_MARGIN, counted back from a run of one
#: repeated byte that ends the file (the zeros of a preallocated download). Decoding is causal,
#: so damage inside the margin cannot alter the lines kept. Measured (9,178 seeded damaged
#: copies of the real dumps, README "Bad input"): runs of up to 64 bytes that stopped the
#: decoder and overwrote the trailer began within 65 bytes of the end, but random bytes
#: overwriting the tail decoded without an error for up to 109,250 bytes (none of the 137
#: tails over 128 KiB did). The price for a clean cut: its last 128 KiB of compressed data
#: (0.4-0.9 MB of lines in the real dumps).
TRUNCATION_MARGIN = 128 << 10
#: A gzip stream that ends early although its file's last 4 bytes, read as a trailer's length
#: field (ISIZE: the uncompressed size mod 2**32), lie within this many bytes of the size
#: decoded is complete but corrupt, not cut short. Measured: damage that stopped the decoder
#: but left the trailer intact gave |ISIZE - decoded| <= 8,811 bytes; for a clean cut the last
#: 4 bytes are compressed data, and they fall this close by chance with probability
#: (2 * 65,536 + 1) / 2**32, about 1 in 33,000 (such a cut is refused, never misread).
TRAILER_TOLERANCE = 64 << 10
_MIN_MEMBER = 18  # a gzip header (10 bytes) and a trailer (8): no shorter member ends with a trailer
_READ_CHUNK = 1 << 16  # compressed bytes read at a time
_PIECE = 1 << 20  # the most uncompressed bytes taken from zlib at a time (bounds memory)
# zlib's words for a trailer mismatch, in the words of the gzip module
_ZLIB_ERRORS = {
    "incorrect data check": "CRC check failed: the data does not match the trailer's CRC-32",
    "incorrect length check": "Incorrect length: the data does not match the trailer's length",
}

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
#: The characters :func:`check_id` refuses (searched in many ids joined, by the batch readers).
BAD_ID_CHAR = _BAD_ID_CHAR


class TruncatedFileWarning(UserWarning):
    """A gzip file that ends early was read up to its last complete line (``allow_truncated``)."""


class Lines:
    """Iterate over the complete lines of a plain or gzip file, with 1-based line numbers.

    Yields ``(line_number, line)`` with ``line`` the raw bytes including the newline; a last
    line without a newline is yielded (without one) only when the stream ended properly.
    A damaged gzip stream stops the iteration without an exception; :meth:`check_complete`
    then raises (or warns), so that callers decide after reading. A line over
    :data:`MAX_LINE_BYTES` raises :class:`~sea.errors.DataError` at once.

    A gzip file is decompressed member after member (zero padding after a member is
    skipped, as :mod:`gzip` does), and is judged as follows:

    * **complete**: every member ends with its end-of-stream marker and a trailer whose
      CRC-32 and length match: every line is yielded.
    * **corrupt**, always refused by :meth:`check_complete` (``allow_truncated`` does not
      apply): bad deflate data, a CRC or length mismatch, trailing bytes that are no gzip
      member, or a stream that ends early although the file's last 4 bytes read as a gzip
      length field (ISIZE) within :data:`TRAILER_TOLERANCE` bytes of the size decoded: the
      file then still ends with its genuine trailer, so it is complete and the damage is
      inside it (a damaged end-of-block code, for one, lets the decoder read garbage without
      an error to the end of the file, where it misses its end marker).
    * **cut short** (the stream ends early, and the last 4 bytes are no such trailer): an
      error unless ``allow_truncated``, and then only the complete lines decoded from the
      compressed bytes before the last :data:`TRUNCATION_MARGIN` are kept. Decoding is
      causal, so those lines do not depend on the bytes after them: damage confined to the
      margin (a corrupt tail that overwrote the trailer too) cannot reach them. A run of
      one repeated byte at the end of the file (the zeros of a preallocated download that
      stopped) is not counted as data: the margin starts before it.

    Lines decoded from the last :data:`TRUNCATION_MARGIN` compressed bytes are held back
    until the stream is known to end properly, so no line that may be dropped is ever
    yielded. Measured on 9,178 seeded damaged copies of the real dumps (flips, runs of 1-64
    bytes, zeroed and random tails, damage at the last deflate blocks): none yields a line
    that differs from the original (with the previous reader 1,104 did), and all of 1,800
    seeded clean cuts are read as cut short. The figures behind the two constants are in
    their comments and in README.md, "Bad input".
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.n_lines = 0  # complete lines yielded so far
        self.n_bytes = 0  # uncompressed bytes in those lines
        self.truncated: str | None = None  # the gzip stream is cut short
        self.corrupt: str | None = None  # the gzip stream fails a check
        self.dropped_partial = False  # an incomplete last line was discarded
        self.dropped_lines = 0  # complete lines of the margin discarded (the stream ends early)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        from tqdm.auto import tqdm

        try:
            raw = open(self.path, "rb")
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        with raw, tqdm(unit="lines", unit_scale=True, desc=f"read {self.path.name}", disable=None, leave=False) as bar:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            for line in self._gzip_lines(raw) if is_gzip else self._plain_lines(raw):
                if self.n_lines == 0 and line.startswith(BOM):
                    line = line[len(BOM) :]
                self.n_lines += 1
                self.n_bytes += len(line)
                if self.n_lines % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)
                yield self.n_lines, line
            bar.update(self.n_lines % _PROGRESS_EVERY)

    def _plain_lines(self, raw) -> Iterator[bytes]:
        while line := raw.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                more = iter(lambda: raw.readline(MAX_LINE_BYTES), b"")
                self._too_long(self.n_lines + 1, len(line), line.endswith(b"\n"), more)
            yield line

    def _gzip_lines(self, raw) -> Iterator[bytes]:
        """The lines of a gzip file; those decoded from the margin are held back until the
        stream ends properly, and dropped when it does not."""
        pieces = self._inflate(raw)
        held: list[bytes] = []  # (at most what the last TRUNCATION_MARGIN compressed bytes expand to)
        line = b""  # the line being assembled
        for piece, safe in pieces:
            start = 0
            while start < len(piece):
                nl = piece.find(b"\n", start)
                end = len(piece) if nl < 0 else nl + 1
                if len(line) + end - start > MAX_LINE_BYTES:
                    rest = itertools.chain([piece[end:]], (p for p, _ in pieces))
                    self._too_long(self.n_lines + len(held) + 1, len(line) + end - start, nl >= 0, rest)
                line += piece[start:end]
                if nl < 0:
                    break
                if safe:
                    yield line
                else:
                    held.append(line)
                line, start = b"", end
        if self.truncated is not None or self.corrupt is not None:
            self.dropped_lines, self.dropped_partial = len(held), bool(line)
            return
        yield from held
        if line:
            yield line

    def _inflate(self, raw) -> Iterator[tuple[bytes, bool]]:
        """Decompressed pieces of the gzip file ``raw``, each with whether it was decoded from
        the bytes before the margin. On damage, sets :attr:`corrupt` or :attr:`truncated`
        and stops."""
        size = os.fstat(raw.fileno()).st_size
        safe_until = _start_of_final_run(raw, size) - TRUNCATION_MARGIN
        raw.seek(0)
        pos = 0  # compressed bytes read
        total_out, next_ratio_check = 0, _RATIO_CHECK_EVERY
        d, member_in, member_out = None, 0, 0  # the current member's decompressor, bytes in and out
        while chunk := raw.read(_READ_CHUNK if pos >= safe_until else min(_READ_CHUNK, safe_until - pos)):
            pos += len(chunk)
            safe = pos <= safe_until
            while chunk:
                if d is None:  # between members: zero padding, then another member or the end
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
                    if not _GZIP_MAGIC.startswith(chunk[:2]):
                        self.corrupt = (
                            f"the gzip stream is corrupt (trailing garbage: {chunk[:8]!r} at byte "
                            f"{pos - len(chunk):,} is not a gzip member)"
                        )
                        return
                    d, member_in, member_out = zlib.decompressobj(wbits=31), 0, 0
                member_in += len(chunk)
                try:
                    while True:
                        out = d.decompress(chunk, _PIECE)
                        chunk = d.unconsumed_tail
                        if out:
                            member_out += len(out)
                            total_out += len(out)
                            if total_out >= next_ratio_check:
                                self._check_ratio(pos, total_out)
                                next_ratio_check += _RATIO_CHECK_EVERY
                            yield out, safe
                        if d.eof or (not chunk and len(out) < _PIECE):
                            break
                except zlib.error as e:
                    self.corrupt = f"the gzip stream is corrupt ({_ZLIB_ERRORS.get(str(e).split(': ')[-1], e)})"
                    return
                if d.eof:
                    chunk, d = d.unused_data, None
        if d is not None:
            self._ended_early(raw, size, member_in, member_out)

    def _ended_early(self, raw, size: int, member_in: int, member_out: int) -> None:
        """Judge a stream without its end marker: cut short, or complete but corrupt."""
        if member_in < _MIN_MEMBER:
            gap = None
        else:
            raw.seek(size - 4)
            isize = int.from_bytes(raw.read(4), "little")
            gap = (isize - member_out + 2**31) % 2**32 - 2**31
        if gap is not None and abs(gap) <= TRAILER_TOLERANCE:
            self.corrupt = (
                f"the gzip stream is corrupt (its deflate data stops without an end marker, yet the file "
                f"ends with what reads as its own trailer: length field {isize:,} against {member_out:,} "
                f"bytes decoded; the file is complete and damaged inside, not cut short)"
            )
        else:
            self.truncated = "the gzip stream ends early (compressed file ended before the end-of-stream marker)"

    def _too_long(self, lineno: int, size: int, complete: bool, more: Iterator[bytes]) -> None:
        """Raise for the over-long line ``lineno`` of ``size`` bytes so far (``complete``: its
        newline included); measure the rest from ``more`` (at most 16 x the limit, without
        keeping it)."""
        exact = True
        if not complete:
            for part in more:
                nl = part.find(b"\n")
                if nl >= 0:
                    size += nl + 1
                    break
                size += len(part)
                if size >= 16 * MAX_LINE_BYTES:
                    exact = False
                    break
            else:  # the line ends the file, or the damaged stream stopped
                exact = self.truncated is None and self.corrupt is None
        at_least = "" if exact else "at least "
        raise DataError(
            f"{self.path}:{lineno}: line is {at_least}{size:,} bytes, over the limit of "
            f"{MAX_LINE_BYTES:,} (MAX_LINE_BYTES in sea/data/lines.py); no record of a real dump "
            f"is that long, so the file is damaged or not what it claims to be"
        )

    def _check_ratio(self, compressed: int, out: int) -> None:
        if out > MAX_GZIP_RATIO * max(compressed, 1):
            raise DataError(
                f"{self.path}: the gzip stream expands more than {MAX_GZIP_RATIO} times "
                f"({compressed:,} compressed bytes gave {out:,} by line {self.n_lines:,}): "
                f"refused as a decompression bomb (real dumps expand 3-7 times)"
            )

    def check_complete(self, allow_truncated: bool = False) -> None:
        """Raise DataError for a damaged stream, or warn when it is only cut short and
        ``allow_truncated``. A corrupt stream (see the class docstring) is always an error:
        its lines cannot be trusted."""
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
        dropped = []
        if self.dropped_lines:
            dropped.append(f"the {self.dropped_lines:,} complete lines after them")
        if self.dropped_partial:
            dropped.append("the incomplete line at the end")
        after = (
            f"; {' and '.join(dropped)} are not used, as damage at the end of a file can reach them" if dropped else ""
        )
        where = f"{self.n_lines:,} complete lines decoded before its last {TRUNCATION_MARGIN:,} compressed bytes"
        if not allow_truncated:
            raise DataError(
                f"{self.path}: {self.truncated}; only the {where} can be used ({self.n_bytes:,} uncompressed "
                f"bytes, of {size:,} compressed){after}. The file is probably an interrupted download: "
                f"re-download it (and check its sha256), or pass allow_truncated=True to use those "
                f"{self.n_lines:,} lines only."
            )
        warnings.warn(
            f"{self.path}: {self.truncated}; kept the {where} because allow_truncated=True{after}. "
            f"The data set is incomplete.",
            TruncatedFileWarning,
            stacklevel=3,
        )


def _start_of_final_run(raw, size: int) -> int:
    """Where the run of one repeated byte that ends the file starts (``size - 1`` when the
    last byte differs from the one before it; 0 for an empty file)."""
    if size == 0:
        return 0
    raw.seek(size - 1)
    last = raw.read(1)
    start = size - 1
    while start > 0:
        lo = max(0, start - _READ_CHUNK)
        raw.seek(lo)
        kept = raw.read(start - lo).rstrip(last)
        start = lo + len(kept)
        if kept:
            break
    return start


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
            raise DataError(
                f"{where}: field {name!r} holds a lone surrogate (invalid Unicode): {value!r:.100}"
            ) from None
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
        hint = (
            f"; it looks like unix {_UNIT_NAME[other]} (as in {_UNIT_RELEASE[other]}), but this "
            f"file is read in {_UNIT_NAME[unit]} (as in {_UNIT_RELEASE[unit]})"
        )
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


def review_fields(
    rec: dict, keys: tuple[str, str, str, str], where: str, release: str, unit: str
) -> tuple[str, str, float, int]:
    """``(user, item, rating, timestamp)`` of one review record whose fields are named
    ``keys`` (in that order), each checked (1-5 stars, a review time in ``unit``: "s" or
    "ms"); a missing field is one DataError naming it."""
    try:
        user, item, rating, ts = (rec[k] for k in keys)
    except KeyError as e:
        raise DataError(
            f"{where}: review lacks the required field {e.args[0]!r} ({release} reviews need "
            f"{', '.join(keys)}; present: {', '.join(rec)[:300]})"
        ) from None
    return (
        check_id(user, keys[0], where),
        check_id(item, keys[1], where),
        check_stars(check_rating(rating, keys[2], where), keys[2], where),
        check_review_time(check_timestamp(ts, keys[3], where), keys[3], where, unit),
    )


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
