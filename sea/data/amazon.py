"""Readers for the raw Amazon review dumps (McAuley lab, 2014 and 2018 releases; the 2023
release's own record shapes are in :mod:`sea.data.amazon2023`, dispatched to from here).

Reviews (:func:`read_reviews`) come in three shapes, chosen by the file name unless
``fmt`` says otherwise:

* ``*.json`` / ``*.jsonl`` / ``*.ndjson`` (optionally ``.gz``): one JSON object a line,
  as in the 2014 ``reviews_<Category>_5.json.gz`` and 2018 ``<Category>_5.json.gz``
  dumps. The keys used are ``reviewerID``, ``asin``, ``overall`` and ``unixReviewTime``;
  all four are required.
* ``*.csv`` (optionally ``.gz``): the 2018 ratings-only file, no header, columns
  ``item,user,rating,timestamp``.

Whether a file is gzip-compressed is decided by its first two bytes, not its name.

Metadata (:func:`read_metadata`) is one record a line: JSON in 2018, a Python dict literal
(single quotes) in 2014. A line is parsed with :func:`json.loads` and, failing that, with
:func:`ast.literal_eval`, which only accepts literals: nothing in a file is ever executed.

Files are read with :class:`sea.data.lines.Lines`: a line over ``MAX_LINE_BYTES`` (1 MiB)
is refused before it is parsed, a UTF-8 byte-order mark at the start of the file is dropped,
and a corrupt gzip stream (CRC or length check, bad deflate data, or a stream that ends
early although the file still ends with its own trailer) is always an error. A gzip stream
that is only cut short (an interrupted download) is an error that names the file and how
many complete lines can be used; ``allow_truncated=True`` keeps those lines (the complete
lines decoded before the file's last ``TRUNCATION_MARGIN`` = 128 KiB of compressed bytes,
which damage at the end cannot reach) and emits a :class:`TruncatedFileWarning`.

Every value is checked: ids are non-blank text without control characters or lone
surrogates, ratings numbers from 1 to 5 (Amazon's stars), timestamps whole numbers of unix
seconds from 1995-01-01 to 2100-01-01 (milliseconds in 2023 files; see
:func:`sea.data.lines.check_review_time`). Anything else is a :class:`~sea.errors.DataError`
naming the file and the 1-based line (a rating that looks like a unix time, or a time in the
other unit, is named as such).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from sea.data import amazon2023
from sea.data.codes import CodedReviews, ReviewCodes
from sea.data.lines import (
    BAD_ID_CHAR,
    CATEGORY_SEPARATOR,
    END_REVIEW_SECOND,
    FIRST_REVIEW_SECOND,
    MAX_STARS,
    MIN_STARS,
    Lines,
    TruncatedFileWarning,
    check_id,
    check_review_time,
    check_stars,
    check_text,
    clean_text,
    decode,
    parse_finite,
    parse_timestamp,
    require_newline,
    review_fields,
    text_field,
)
from sea.errors import DataError

__all__ = [
    "REVIEW_COLUMNS",
    "METADATA_COLUMNS",
    "TruncatedFileWarning",
    "read_reviews",
    "scan_reviews",
    "read_metadata",
    "MetadataRecords",
    "item_sentence",
    "clean_text",
]

log = logging.getLogger(__name__)

REVIEW_COLUMNS = ("user", "item", "rating", "timestamp")
METADATA_COLUMNS = ("asin", "title", "brand", "categories", "description", "image_url")


#: Metadata keys that may hold an image URL, most preferred first: the 2018 full-size
#: list, the 2018 thumbnail lists (turned into full-size URLs, see :func:`_full_size_url`),
#: then the 2014 single URL.
IMAGE_KEYS = ("imageURLHighRes", "imageURL", "image", "imUrl")

_SPACE = re.compile(r"\s+")
# Amazon image URLs carry size/crop modifiers before the extension:
# ".../I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg"; without them the URL names the
# full-size image ".../I/317ZQtCvFzL.jpg" (the 2018 imageURLHighRes lists are exactly that).
_SIZE_MODIFIER = re.compile(r"^(?P<stem>.*/[^/.]+)\._[^/]*_(?P<ext>\.[A-Za-z0-9]+)$")


def _where(path: Path, lineno: int) -> str:
    return f"{path}:{lineno}"


# --------------------------------------------------------------------------- reviews


def _review_format(path: Path, fmt: str) -> str:
    """Return "json" or "csv" for ``path``, from ``fmt`` or else from the file name."""
    if fmt in ("json", "csv"):
        return fmt
    if fmt != "auto":
        raise ValueError(f"fmt must be 'auto', 'json' or 'csv', not {fmt!r}")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    raise DataError(
        f"{path}: cannot tell the review format from the file name (expected *.json[.gz], "
        f"*.jsonl[.gz] or *.csv[.gz]); pass fmt='json' or fmt='csv'"
    )


def _parse_json_review(line: bytes, where: str) -> tuple[str, str, float, int]:
    text = decode(line, where)
    try:
        rec = _load_json(text)
    except ValueError as e:  # JSONDecodeError, and ints over Python's 4,300-digit limit
        raise DataError(f"{where}: not a valid JSON line ({e})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object (a review), got {type(rec).__name__}")
    if "reviewerID" not in rec and "user_id" in rec:  # Amazon 2023: user_id, parent_asin, ms
        return amazon2023.review_fields(rec, where)
    return review_fields(rec, ("reviewerID", "asin", "overall", "unixReviewTime"), where, "Amazon 2014/2018", "s")


def _load_json(text: str) -> Any:
    """``json.loads``, with a nesting too deep for it reported as a ValueError too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def _parse_csv_review(line: bytes, where: str) -> tuple[str, str, float, int]:
    require_newline(line, where)
    text = decode(line, where)
    if '"' not in text:  # the usual row: plain split (the csv module only matters for quotes)
        row = text.split(",") if text else []
    else:
        try:
            row = next(csv.reader((text,), strict=True), [])
        except csv.Error as e:
            raise DataError(f"{where}: not a CSV row ({e})") from None
    if len(row) != 4:
        raise DataError(
            f"{where}: expected 4 comma-separated fields item,user,rating,timestamp "
            f"(the 2018 ratings CSV has no header), got {len(row)}: {text.strip()[:200]!r}"
        )
    item, user, rating, ts = row
    try:
        return (
            check_id(user, "user", where),
            check_id(item, "item", where),
            check_stars(parse_finite(rating, "rating", where), "rating", where),
            check_review_time(parse_timestamp(ts, "timestamp", where), "timestamp", where, "s"),
        )
    except DataError as e:
        raise DataError(
            f"{e} (are the columns in the order item,user,rating,timestamp? The 2018 ratings CSV has no header row)"
        ) from None


def read_reviews(path: str | Path, *, fmt: str = "auto", allow_truncated: bool = False) -> pd.DataFrame:
    """Read an Amazon review or rating dump into a frame of interactions.

    Args:
        path: a 2014/2018 review file (JSON lines, ``.json[.gz]``/``.jsonl[.gz]``) or a 2018
            ratings-only file (``.csv[.gz]``, no header: ``item,user,rating,timestamp``).
        fmt: ``"auto"`` (by the file name, see the module docstring), ``"json"`` or ``"csv"``.
        allow_truncated: for a gzip file that is cut short, return the complete lines
            decoded before its last 128 KiB (see :class:`sea.data.lines.Lines`) and warn
            (:class:`TruncatedFileWarning`) instead of raising.

    Returns:
        One row per non-blank line, in file order, duplicates kept: ``user`` (str,
        reviewerID), ``item`` (str, asin), ``rating`` (float32, 1 to 5), ``timestamp``
        (int64, unix seconds from 1995-01-01 to 2100-01-01, or milliseconds in 2023 files).
        The string columns have pandas' default string dtype (``str`` from pandas 3).

    Raises:
        DataError: a malformed line, a missing or mistyped field, a value out of range
            (the message names the file and the 1-based line), a CSV file whose last line
            has no newline (it may be cut off mid-value), a line over ``MAX_LINE_BYTES``,
            a damaged gzip stream, or a file with no reviews.
    """
    path = Path(path)
    kind = _review_format(path, fmt)
    if kind == "csv" and amazon2023.is_benchmark_csv(path):
        return amazon2023.read_benchmark_csv(path, allow_truncated=allow_truncated).drop(columns="line")
    parse = _parse_csv_review if kind == "csv" else _parse_json_review
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[int] = []
    lines = Lines(path)
    for lineno, line in lines:
        if not line.strip():
            continue
        user, item, rating, ts = parse(line, _where(path, lineno))
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(ts)
    lines.check_complete(allow_truncated)
    if not users:
        raise DataError(f"{path}: no reviews in the file (is it empty, or the wrong file?)")
    return pd.DataFrame(
        {
            "user": users,  # pandas' default string dtype ("str" from pandas 3, else object)
            "item": items,
            "rating": np.asarray(ratings, dtype=np.float32),
            "timestamp": np.asarray(times, dtype=np.int64),
        }
    )


# --------------------------------------------------------------------------- reviews, streamed

#: The keys of a review record and its time unit, by release (see :func:`_parse_json_review`).
_KEYS_2014 = ("reviewerID", "asin", "overall", "unixReviewTime")
_KEYS_2023 = ("user_id", "parent_asin", "rating", "timestamp")
_MS = {_KEYS_2014: 1, _KEYS_2023: 1000}


def _batches(lines: Lines, batch_bytes: int):
    """``lines`` in lists of ``(line_number, line)`` holding about ``batch_bytes`` each.

    When reading stops with an error (a line over the length limit), the lines before it
    are yielded first: a bad line among them is reported before it, as the line-by-line
    reader would."""
    batch, size = [], 0
    try:
        for numbered in lines:  # (line number, line)
            batch.append(numbered)
            size += len(numbered[1])
            if size >= batch_bytes:
                yield batch
                batch, size = [], 0
    except DataError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _parse_batch(batch: list, parse, path: Path) -> tuple[list, list, list, list]:
    """The reviews of ``batch`` parsed line by line with ``parse`` (every check, every message)."""
    cols: tuple[list, list, list, list] = ([], [], [], [])
    for lineno, line in batch:
        if line.strip():
            for col, value in zip(cols, parse(line, _where(path, lineno))):
                col.append(value)
    return cols


def _fast_json_batch(batch: list) -> tuple[list, list, list, list] | None:
    """The reviews of a batch of JSON lines, parsed with orjson and checked column by column,
    or None when any line is not a plain, valid review of one release (blank, not a JSON
    object, a missing field, a value :func:`_parse_json_review` would refuse or convert,
    two releases mixed): the caller then parses the batch line by line, which accepts
    the same reviews with the same values and names the first bad line.

    Every check here is at least as strict as the per-line one: a batch it accepts is one
    the per-line parser accepts, with the same values."""
    loads = orjson.loads
    users, items, ratings, times = [], [], [], []
    keys = None
    try:
        for _, line in batch:
            rec = loads(line)
            if type(rec) is not dict:
                return None
            k = _KEYS_2014 if "reviewerID" in rec else _KEYS_2023 if "user_id" in rec else None
            if k is None or (keys is not None and k is not keys):
                return None  # neither release's record, or two releases in one batch
            keys = k
            users.append(rec[k[0]])
            items.append(rec[k[1]])
            ratings.append(rec[k[2]])
            times.append(rec[k[3]])
    except (orjson.JSONDecodeError, KeyError):
        return None
    for ids in (users, items):  # check_id: non-blank text without control characters
        if set(map(type, ids)) != {str} or not all(map(str.strip, ids)) or BAD_ID_CHAR.search("".join(ids)):
            return None
    if not set(map(type, ratings)) <= {int, float} or not set(map(type, times)) == {int}:
        return None  # (bools, text, nulls; times written as floats take the per-line path)
    try:
        stars = np.asarray(ratings, dtype=np.float64)
        when = np.asarray(times, dtype=np.int64)
    except OverflowError:
        return None
    unit = _MS[keys]
    if not (
        ((stars >= MIN_STARS) & (stars <= MAX_STARS)).all()
        and ((when >= FIRST_REVIEW_SECOND * unit) & (when < END_REVIEW_SECOND * unit)).all()
    ):
        return None
    return users, items, stars, when


def scan_reviews(
    path: str | Path, *, fmt: str = "auto", allow_truncated: bool = False, batch_bytes: int = 64 << 20
) -> ReviewCodes:
    """Read a review dump as :func:`read_reviews` does, into integer columns.

    The same files, checks, errors and values as :func:`read_reviews` (same rows, same
    order), but the raw ids are mapped to int32 codes as the lines stream
    (:class:`sea.data.codes.CodedReviews`), so memory holds about 20 bytes a review plus
    each distinct id once, and at most one batch of about ``batch_bytes`` of lines (and
    their parsed values) at a time. JSON lines are parsed a batch at a time with orjson
    and checked column by column (:func:`_fast_json_batch`); a batch with anything
    unusual is parsed again line by line, with the messages of :func:`read_reviews`.

    Raises:
        DataError: as :func:`read_reviews`.
    """
    path = Path(path)
    kind = _review_format(path, fmt)
    out = CodedReviews()
    if kind == "csv" and amazon2023.is_benchmark_csv(path):
        rows: tuple[list, list, list, list] = ([], [], [], [])
        per_batch = max(1, batch_bytes // 64)  # a benchmark row is about 60 bytes
        for _, *values in amazon2023.benchmark_rows(path, allow_truncated=allow_truncated):
            for col, value in zip(rows, values):
                col.append(value)
            if len(rows[0]) >= per_batch:
                out.add(*rows)
                rows = ([], [], [], [])
        out.add(*rows)
        return out.finish()
    parse = _parse_csv_review if kind == "csv" else _parse_json_review
    lines = Lines(path)
    for batch in _batches(lines, batch_bytes):
        cols = _fast_json_batch(batch) if kind == "json" else None
        out.add(*(cols if cols is not None else _parse_batch(batch, parse, path)))
    lines.check_complete(allow_truncated)
    if not out.n:
        raise DataError(f"{path}: no reviews in the file (is it empty, or the wrong file?)")
    return out.finish()


# --------------------------------------------------------------------------- metadata


# A Python dict literal that JSON can read once its strings and keywords are written as
# JSON's: strings in '...' or "..." with no escapes but \\ \' \" \n \r \t and \xhh (repr
# writes no others for text), and between them no quote or backslash (nearly all 2014
# metadata lines). In such a line a quote always opens a string and a backslash inside one
# always starts one of those escapes, so the tokens below are the ones Python reads.
_ESCAPE = r"""\\(?:[\\'"nrt]|x[0-9a-fA-F]{2})"""
_PLAIN_LITERAL = re.compile(rf"""(?:'(?:[^'\\]++|{_ESCAPE})*+'|"(?:[^"\\]++|{_ESCAPE})*+"|[^'"\\]++)*+""")
_LITERAL_TOKEN = re.compile(
    rf"""'((?:[^'\\]|{_ESCAPE})*)'|"((?:[^"\\]|{_ESCAPE})*)"|\b(True|False|None|true|false|null)\b"""
)
_IN_STRING = re.compile(r"""\\(?:x([0-9a-fA-F]{2})|(.))|(")""")
_JSON_ESCAPE = {"\\": "\\\\", "'": "'", '"': '\\"', "n": "\\n", "r": "\\r", "t": "\\t"}
# Python's keywords as JSON's; JSON's own words are names to Python (literal_eval refuses
# them), so they become a character JSON refuses too.
_JSON_WORDS = {"True": "true", "False": "false", "None": "null", "true": "!", "false": "!", "null": "!"}
# Integers of 19 digits or more: orjson reads those over 64 bits as floats, Python as ints.
_LONG_NUMBER = re.compile(r"[0-9]{19}")
_WORD = re.compile(r"[A-Za-z_]")
_KEYWORD = re.compile(r"\b(?:True|False|None|true|false|null)\b")


def _fast_meta(text: str) -> Any:
    """The record of a metadata line as :func:`_slow_meta` parses it, or None when not
    certain: JSON lines with orjson, plain Python dict literals (:data:`_PLAIN_LITERAL`)
    with orjson once written as JSON. Anything orjson refuses, and any line with a long
    digit run, takes the slow path."""
    if _LONG_NUMBER.search(text):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if "\\" not in text and '"' not in text and "\x01" not in text:
        json_text = _quotes_only(text)  # the usual 2014 line, quickly
    elif _PLAIN_LITERAL.fullmatch(text):
        json_text = _LITERAL_TOKEN.sub(_json_token, text)
    else:
        return None
    try:
        return orjson.loads(json_text) if json_text is not None else None
    except orjson.JSONDecodeError:
        return None


def _quotes_only(text: str) -> str | None:
    """A literal with no backslash and no double quote as JSON: every ' opens or closes a
    string, so the pieces between them alternate outside and inside; the inside ones go
    in double quotes as they are, the keywords outside become JSON's."""
    parts = text.split("'")
    if len(parts) % 2 == 0:
        return None  # an unclosed string
    outside = "\x01".join(parts[0::2])
    if _WORD.search(outside):
        parts[0::2] = _KEYWORD.sub(_json_word, outside).split("\x01")
    return '"'.join(parts)


def _json_word(m: re.Match) -> str:
    return _JSON_WORDS[m.group()]


def _json_token(m: re.Match) -> str:
    """One token of a plain literal as JSON: a string (its escapes made JSON's), a keyword."""
    body = m.group(1) if m.group(1) is not None else m.group(2)
    if body is None:
        return _JSON_WORDS[m.group(3)]
    if "\\" in body or '"' in body:
        body = _IN_STRING.sub(_json_escape, body)
    return f'"{body}"'


def _json_escape(m: re.Match) -> str:
    if m.group(1) is not None:
        return f"\\u00{m.group(1)}"
    return _JSON_ESCAPE[m.group(2)] if m.group(2) is not None else '\\"'


def _slow_meta(text: str, where: str) -> Any:
    """JSON first (:mod:`json`), then a Python literal (:func:`ast.literal_eval`, never code)."""
    try:
        return _load_json(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError) as e:
            raise DataError(
                f"{where}: neither a JSON object nor a Python dict literal "
                f"({type(e).__name__}: {str(e)[:200]}); only plain literals are accepted, never code"
            ) from None


def _parse_meta_line(line: bytes, where: str) -> dict:
    """Parse one metadata line: JSON first, then a Python literal (never code); the common
    shapes quickly (:func:`_fast_meta`), the rest as they always were (:func:`_slow_meta`)."""
    text = decode(line, where).strip()
    rec = _fast_meta(text)
    if rec is None:
        rec = _slow_meta(text, where)
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected one product record (a dict), got {type(rec).__name__}")
    return rec


def _category_path(rec: dict, where: str) -> str:
    """The first category path, levels joined with " > ".

    2014: ``categories`` is a list of paths (lists); MMRec uses the first one. 2018:
    ``category`` is a single path (a list of strings).
    """
    key = "categories" if "categories" in rec else "category"
    value = rec.get(key)
    if value is None or value == []:
        return ""
    if isinstance(value, list) and isinstance(value[0], list):
        value = value[0]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"{where}: field {key!r} must be a list of category paths (2014) or a list of "
            f"strings (2018), got {value!r:.200}"
        )
    levels = (clean_text(v) for v in value)
    return check_text(CATEGORY_SEPARATOR.join(v for v in levels if v), key, where)


def _full_size_url(url: str) -> str:
    """Drop Amazon's size/crop modifiers (``._SX38_SY50_..._``) so the URL names the full image."""
    m = _SIZE_MODIFIER.match(url)
    return m["stem"] + m["ext"] if m else url


def _image_url(rec: dict, where: str) -> str | None:
    """The first image URL by :data:`IMAGE_KEYS` preference; None when there is none.

    URLs from the 2018 thumbnail lists (``imageURL``, ``image``: 38x50 pixels) are turned
    into full-size URLs; the 2014 ``imUrl`` (300-500 px) is kept as it is.
    """
    for key in IMAGE_KEYS:
        value = rec.get(key)
        if value is None:
            continue
        candidates = [value] if isinstance(value, str) else value
        if not isinstance(candidates, list):
            raise DataError(f"{where}: field {key!r} must be a URL or a list of URLs, got {type(value).__name__}")
        for url in candidates:
            if not isinstance(url, str):
                raise DataError(f"{where}: field {key!r} holds a non-string URL {url!r:.100}")
            url = check_text(url.strip(), key, where)
            if url:
                return _full_size_url(url) if key in ("imageURL", "image") else url
    return None


# The pre-filter of read_metadata: an "asin" key with a plain value (no quote, no escape),
# followed by the end of the value (so 'B0' 'X', an implicit concatenation, is not taken
# for 'B0').
_ASIN_KEY = re.compile(rb"""['"]asin['"]\s*:\s*(['"])([^'"\\\n]*)\1\s*[,}]""")
# What could spell a key "asin" without the bytes `asin`: an escape ('\x61sin', "\u0061sin")
# or adjacent string literals ('as' 'in').
_HIDDEN_KEY = re.compile(rb"""\\[xuUN0-7]|['"](?:a|as|asi)['"]\s*[uUrR]?['"]""")
_QUOTED_A = (re.compile(rb"""'a(?:si?)?['"]"""), re.compile(rb""""a(?:si?)?['"]"""))  # its 2nd branch's start


def _wanted(line: bytes, asins: Collection[str] | None) -> bool:
    """False only for a line certain to be the record of a product not in ``asins``.

    The line is skipped unparsed only when every ``asin`` in it is a plainly written key
    with a plain value, none of those values is wanted, and no escape or string
    concatenation could spell another ``asin`` key. A title holding ``'asin': 'X'`` makes
    the line hold two such keys: it is kept when either value is wanted.
    """
    if asins is None:
        return True
    wanted_2023 = amazon2023.wanted_2023(line, asins)  # a 2023 line: keyed by parent_asin
    if wanted_2023 is not None:
        return wanted_2023
    n = line.count(b"asin")
    if n == 1:  # nearly every line: one anchored try where the only "asin" is (what findall finds)
        key = _ASIN_KEY.match(line, max(line.find(b"asin") - 1, 0))
        values = [key.groups()] if key else []
    else:
        values = _ASIN_KEY.findall(line)
    if not values or len(values) != n or _maybe_hidden(line):
        return True  # not certain without parsing
    return any(v.decode("utf-8", "replace").strip() in asins for _, v in values)


def _maybe_hidden(line: bytes) -> bool:
    """Whether :data:`_HIDDEN_KEY` is in ``line``, looked for only where a backslash or a
    quoted "a", "as" or "asi" (what its two branches need) is there: two literal-led searches
    instead of a try at every byte (10 to 1 µs a line on 20M metadata lines)."""
    if b"\\" in line or _QUOTED_A[0].search(line) or _QUOTED_A[1].search(line):
        return _HIDDEN_KEY.search(line) is not None
    return False


class MetadataRecords:
    """The checked product records of a metadata dump (2014 Python-literal lines, 2018 or
    2023 JSON lines), streamed: iterating yields one ``(asin, title, brand, categories,
    description, image_url)`` tuple per distinct asin, in file order, holding one line at a
    time; :func:`read_metadata` collects them into a frame, the graph stage into its item
    table (:mod:`sea.data.items`). After the iteration, ``duplicates`` is how many records
    repeated an earlier asin (dropped, first kept, logged).

    A record with ``parent_asin`` and no ``asin`` is a 2023 record, mapped to the same
    fields by :func:`sea.data.amazon2023.metadata_row` (``image_size``: which image
    of its ``images`` list to take: ``large``, ``hi_res`` or ``thumb``).

    With ``asins``, only the records of those products are parsed: other lines are skipped
    on a quick look at their ``asin`` field, without being checked (see :func:`_wanted`:
    a line is skipped only when that look is certain). A full 2014 category file has
    about 1.5M Python-literal lines, and parsing them all takes minutes.

    Text fields are cleaned with :func:`clean_text` (HTML tags stripped, entities
    unescaped, whitespace squeezed); a 2018 ``description`` list is joined with spaces.
    ``categories`` is the first category path joined with ``" > "``. ``image_url`` is the
    first URL by :data:`IMAGE_KEYS` preference (full size first). Missing text is ``""``,
    a missing image ``None``.

    Raises (while iterating):
        DataError: a line that is not a dict literal / JSON object, a record without
            ``asin`` or with a mistyped field or invalid text (file and 1-based line in
            the message), a line over ``MAX_LINE_BYTES``, a damaged gzip stream, or a
            file with no records.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        allow_truncated: bool = False,
        asins: Collection[str] | None = None,
        image_size: str = "large",
    ) -> None:
        self.path, self.allow_truncated, self.asins, self.image_size = Path(path), allow_truncated, asins, image_size
        self.duplicates = 0

    def __iter__(self) -> Iterator[tuple[str, str, str, str, str, str | None]]:
        path, asins = self.path, self.asins
        seen: set[str] = set()
        self.duplicates = 0
        lines = Lines(path)
        for lineno, line in lines:
            if not line.strip() or not _wanted(line, asins):
                continue
            where = _where(path, lineno)
            rec = _parse_meta_line(line, where)
            if "parent_asin" in rec and "asin" not in rec:
                row = amazon2023.metadata_row(rec, where, self.image_size)
            else:
                row = _metadata_row(rec, where)
            asin = row[0]
            if asins is not None and asin not in asins:
                continue  # kept by the pre-filter only because it could not be sure
            if asin in seen:
                self.duplicates += 1
                continue
            seen.add(asin)
            yield row
        lines.check_complete(self.allow_truncated)
        if not seen and asins is not None:
            raise DataError(
                f"{path}: none of the {len(asins)} reviewed products has a record here "
                "(is it the metadata of another category?)"
            )
        if not seen:
            raise DataError(f"{path}: no product records in the file (is it empty, or the wrong file?)")
        if self.duplicates:
            log.warning("%s: %d duplicate asin records dropped (kept the first of each)", path, self.duplicates)


def read_metadata(
    path: str | Path,
    *,
    allow_truncated: bool = False,
    asins: Collection[str] | None = None,
    image_size: str = "large",
) -> pd.DataFrame:
    """Read an Amazon metadata dump into a frame: the records of :class:`MetadataRecords`
    (the same arguments, checks and errors).

    Returns:
        A frame with columns ``asin, title, brand, categories, description, image_url``,
        one row per distinct asin (in ``asins`` when given), in file order; ``image_url``
        is an object column (``None`` where missing). How many duplicate asins were
        dropped is in ``frame.attrs["duplicate_asins"]``.
    """
    records = MetadataRecords(path, allow_truncated=allow_truncated, asins=asins, image_size=image_size)
    rows = list(records)
    frame = pd.DataFrame.from_records(rows, columns=list(METADATA_COLUMNS))
    # pandas >= 3 would store the URLs as its "str" dtype, turning None into NaN
    frame["image_url"] = pd.Series([r[-1] for r in rows], dtype=object)
    frame.attrs["duplicate_asins"] = records.duplicates
    return frame


def _metadata_row(rec: dict, where: str) -> tuple:
    """One 2014/2018 record as ``(asin, title, brand, categories, description, image_url)``."""
    asin = rec.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        raise DataError(f"{where}: product record lacks a string 'asin' (got {asin!r:.100})")
    return (
        check_id(asin.strip(), "asin", where),
        text_field(rec, "title", where),
        text_field(rec, "brand", where),
        _category_path(rec, where),
        text_field(rec, "description", where),
        _image_url(rec, where),
    )


# --------------------------------------------------------------------------- text


def item_sentence(title: str, brand: str, categories: str, description: str) -> str:
    """The item's text for the sentence encoder: "title brand categories description".

    This is MMRec's recipe (title + brand + first category path + description). Empty
    parts are skipped and the others joined with single spaces, whitespace squeezed;
    ``None`` or NaN parts count as empty. Returns ``""`` when every part is empty (the
    text-feature stage gives such items the mean vector).
    """
    parts = (p for p in (title, brand, categories, description) if isinstance(p, str))
    return _SPACE.sub(" ", " ".join(p.strip() for p in parts if p.strip()))
