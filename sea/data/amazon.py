"""Readers for the raw Amazon review dumps (McAuley lab, 2014 and 2018 releases).

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

A gzip stream that ends early (an interrupted download) is an error that names the file
and how many complete lines could be read; ``allow_truncated=True`` keeps those lines
(never the incomplete one after them) and emits a :class:`TruncatedFileWarning`.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import logging
import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np
import pandas as pd

from sea.io import DataError

__all__ = [
    "REVIEW_COLUMNS",
    "METADATA_COLUMNS",
    "TruncatedFileWarning",
    "read_reviews",
    "read_metadata",
    "item_sentence",
    "clean_text",
]

log = logging.getLogger(__name__)

REVIEW_COLUMNS = ("user", "item", "rating", "timestamp")
METADATA_COLUMNS = ("asin", "title", "brand", "categories", "description", "image_url")

#: Separator between the levels of a category path in the ``categories`` column.
CATEGORY_SEPARATOR = " > "

#: Metadata keys that may hold an image URL, most preferred first: the 2018 full-size
#: list, the 2018 thumbnail lists (turned into full-size URLs, see :func:`_full_size_url`),
#: then the 2014 single URL.
IMAGE_KEYS = ("imageURLHighRes", "imageURL", "image", "imUrl")

_GZIP_MAGIC = b"\x1f\x8b"
_PROGRESS_EVERY = 1 << 14  # lines between progress-bar updates

_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")
# An opening tag cut off at the end of the text, as in some 2018 titles
# ('<span class="a-size-medium a-color-secondary"').
_DANGLING_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")
_SPACE = re.compile(r"\s+")
# Amazon image URLs carry size/crop modifiers before the extension:
# ".../I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg"; without them the URL names the
# full-size image ".../I/317ZQtCvFzL.jpg" (the 2018 imageURLHighRes lists are exactly that).
_SIZE_MODIFIER = re.compile(r"^(?P<stem>.*/[^/.]+)\._[^/]*_(?P<ext>\.[A-Za-z0-9]+)$")


class TruncatedFileWarning(UserWarning):
    """A damaged gzip file was read up to its last complete line (``allow_truncated=True``)."""


# --------------------------------------------------------------------------- lines


class _Lines:
    """Iterate over the complete lines of a plain or gzip file, with 1-based line numbers.

    A gzip stream that ends early or is corrupt stops the iteration without an exception;
    :meth:`check_complete` then raises (or warns), so that callers decide after reading.
    A last line without a newline is yielded only when the stream ended properly.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_lines = 0  # complete lines yielded so far
        self.n_bytes = 0  # uncompressed bytes in those lines
        self.damage: str | None = None  # what went wrong with the gzip stream
        self.dropped_partial = False  # an incomplete last line was discarded

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        from tqdm.auto import tqdm

        with open(self.path, "rb") as raw, tqdm(
            unit="lines", unit_scale=True, desc=f"read {self.path.name}", disable=None, leave=False
        ) as bar:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
            pending: bytes | None = None
            try:
                for line in stream:
                    if not line.endswith(b"\n"):  # only ever the last line of the stream
                        pending = line
                        continue
                    self.n_lines += 1
                    self.n_bytes += len(line)
                    if self.n_lines % _PROGRESS_EVERY == 0:
                        bar.update(_PROGRESS_EVERY)
                    yield self.n_lines, line
            except EOFError as e:
                self.damage = f"the gzip stream ends early ({e})"
            except (zlib.error, gzip.BadGzipFile) as e:
                self.damage = f"the gzip stream is corrupt ({e})"
            if pending is not None:
                if self.damage is None:
                    self.n_lines += 1
                    self.n_bytes += len(pending)
                    yield self.n_lines, pending
                else:
                    self.dropped_partial = True
            bar.update(self.n_lines % _PROGRESS_EVERY)

    def check_complete(self, allow_truncated: bool) -> None:
        """Raise DataError for a damaged stream, or warn when ``allow_truncated``."""
        if self.damage is None:
            return
        size = self.path.stat().st_size
        partial = " (the incomplete line after them was dropped)" if self.dropped_partial else ""
        if not allow_truncated:
            raise DataError(
                f"{self.path}: {self.damage}; only {self.n_lines:,} complete lines "
                f"({self.n_bytes:,} uncompressed bytes, up to compressed byte {size:,}) could be "
                f"read{partial}. The file is probably an interrupted download: re-download it "
                f"(and check its sha256), or pass allow_truncated=True to use the "
                f"{self.n_lines:,} complete lines only."
            )
        warnings.warn(
            f"{self.path}: {self.damage}; kept the {self.n_lines:,} complete lines read before "
            f"the damage{partial} because allow_truncated=True. The data set is incomplete.",
            TruncatedFileWarning,
            stacklevel=3,
        )


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
    try:
        rec = json.loads(line)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise DataError(f"{where}: not a valid JSON line ({e})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object (a review), got {type(rec).__name__}")
    try:
        user, item, rating, ts = rec["reviewerID"], rec["asin"], rec["overall"], rec["unixReviewTime"]
    except KeyError as e:
        raise DataError(
            f"{where}: review lacks the required field {e.args[0]!r} "
            f"(required: reviewerID, asin, overall, unixReviewTime; present: {', '.join(rec)})"
        ) from None
    return _check_review(user, item, rating, ts, where)


def _parse_csv_review(line: bytes, where: str) -> tuple[str, str, float, int]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e})") from None
    row = next(csv.reader((text,)), [])
    if len(row) != 4:
        raise DataError(
            f"{where}: expected 4 comma-separated fields item,user,rating,timestamp "
            f"(the 2018 ratings CSV has no header), got {len(row)}: {text.strip()[:200]!r}"
        )
    item, user, rating_s, ts_s = row
    try:
        rating = float(rating_s)
        ts = int(ts_s)
    except ValueError:
        raise DataError(
            f"{where}: rating {rating_s!r} or timestamp {ts_s!r} is not a number "
            f"(columns are item,user,rating,timestamp with no header row)"
        ) from None
    return _check_review(user, item, rating, ts, where)


def _check_review(user: Any, item: Any, rating: Any, ts: Any, where: str) -> tuple[str, str, float, int]:
    """Validate the types of one review's fields; return them normalised."""
    if not isinstance(user, str) or not user:
        raise DataError(f"{where}: reviewerID/user must be a non-empty string, got {user!r}")
    if not isinstance(item, str) or not item:
        raise DataError(f"{where}: asin/item must be a non-empty string, got {item!r}")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
        raise DataError(f"{where}: overall/rating must be a number, got {rating!r}")
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise DataError(f"{where}: unixReviewTime/timestamp must be an integer, got {ts!r}")
    return user, item, float(rating), ts


def read_reviews(path: str | Path, *, fmt: str = "auto", allow_truncated: bool = False) -> pd.DataFrame:
    """Read an Amazon review or rating dump into a frame of interactions.

    Args:
        path: a 2014/2018 review file (JSON lines, ``.json[.gz]``/``.jsonl[.gz]``) or a 2018
            ratings-only file (``.csv[.gz]``, no header: ``item,user,rating,timestamp``).
        fmt: ``"auto"`` (by the file name, see the module docstring), ``"json"`` or ``"csv"``.
        allow_truncated: for a gzip file that ends early, return the complete lines read
            and warn (:class:`TruncatedFileWarning`) instead of raising.

    Returns:
        One row per line, in file order, duplicates kept: ``user`` (str, reviewerID),
        ``item`` (str, asin), ``rating`` (float32), ``timestamp`` (int64, unix seconds).
        The string columns have pandas' default string dtype (``str`` from pandas 3).

    Raises:
        DataError: a malformed line, a missing or mistyped field (the message names the
            file and the 1-based line), a damaged gzip stream, or a file with no reviews.
    """
    path = Path(path)
    kind = _review_format(path, fmt)
    parse = _parse_csv_review if kind == "csv" else _parse_json_review
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[int] = []
    lines = _Lines(path)
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


# --------------------------------------------------------------------------- metadata


def clean_text(text: str) -> str:
    """Strip HTML tags (including one cut off at the end), unescape entities, squeeze spaces."""
    if "<" in text:
        text = _DANGLING_TAG.sub(" ", _TAG.sub(" ", text))
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def _parse_meta_line(line: bytes, where: str) -> dict:
    """Parse one metadata line: JSON first, then a Python literal (never code)."""
    try:
        rec = json.loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line.decode("utf-8").strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
            raise DataError(
                f"{where}: neither a JSON object nor a Python dict literal "
                f"({type(e).__name__}: {e}); only plain literals are accepted, never code"
            ) from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected one product record (a dict), got {type(rec).__name__}")
    return rec


def _text_field(rec: dict, key: str, where: str) -> str:
    """A text field: a string or a list of strings (joined with spaces); missing -> ""."""
    value = rec.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return clean_text(" ".join(value))
    raise DataError(f"{where}: field {key!r} must be text or a list of text, got {type(value).__name__}")


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
    return CATEGORY_SEPARATOR.join(v for v in levels if v)


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
            url = url.strip()
            if url:
                return _full_size_url(url) if key in ("imageURL", "image") else url
    return None


_ASIN_BYTES = re.compile(rb"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _wanted(line: bytes, asins: Collection[str] | None) -> bool:
    """False only for a line whose asin is plainly visible and not among ``asins``."""
    if asins is None:
        return True
    found = _ASIN_BYTES.search(line)
    return found is None or found.group(1).decode("utf-8", "replace").strip() in asins


def read_metadata(
    path: str | Path, *, allow_truncated: bool = False, asins: Collection[str] | None = None
) -> pd.DataFrame:
    """Read an Amazon metadata dump (2014 Python-literal lines or 2018 JSON lines).

    With ``asins``, only the records of those products are parsed: other lines are skipped
    on a quick look at their ``asin`` field, without being checked. A full 2014 category
    file has about 1.5M Python-literal lines, and parsing them all takes minutes.

    Text fields are cleaned with :func:`clean_text` (HTML tags stripped, entities
    unescaped, whitespace squeezed); a 2018 ``description`` list is joined with spaces.
    ``categories`` is the first category path joined with ``" > "``. ``image_url`` is the
    first URL by :data:`IMAGE_KEYS` preference (full size first). Missing text is ``""``,
    a missing image ``None`` (``image_url`` is an object column). Duplicate asins keep their first record; how many were
    dropped is in ``frame.attrs["duplicate_asins"]`` (and logged).

    Returns:
        A frame with columns ``asin, title, brand, categories, description, image_url``,
        one row per distinct asin, in file order.

    Raises:
        DataError: a line that is not a dict literal / JSON object, a record without
            ``asin`` or with a mistyped field (file and 1-based line in the message), a
            damaged gzip stream, or a file with no records.
    """
    path = Path(path)
    rows: list[tuple[str, str, str, str, str, str | None]] = []
    seen: set[str] = set()
    duplicates = 0
    lines = _Lines(path)
    for lineno, line in lines:
        if not line.strip() or not _wanted(line, asins):
            continue
        where = _where(path, lineno)
        rec = _parse_meta_line(line, where)
        asin = rec.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            raise DataError(f"{where}: product record lacks a string 'asin' (got {asin!r:.100})")
        asin = asin.strip()
        if asin in seen:
            duplicates += 1
            continue
        seen.add(asin)
        rows.append(
            (
                asin,
                _text_field(rec, "title", where),
                _text_field(rec, "brand", where),
                _category_path(rec, where),
                _text_field(rec, "description", where),
                _image_url(rec, where),
            )
        )
    lines.check_complete(allow_truncated)
    if not rows and asins is not None:
        raise DataError(f"{path}: none of the {len(asins)} reviewed products has a record here "
                        "(is it the metadata of another category?)")
    if not rows:
        raise DataError(f"{path}: no product records in the file (is it empty, or the wrong file?)")
    if duplicates:
        log.warning("%s: %d duplicate asin records dropped (kept the first of each)", path, duplicates)
    frame = pd.DataFrame.from_records(rows, columns=list(METADATA_COLUMNS))
    # pandas >= 3 would store the URLs as its "str" dtype, turning None into NaN
    frame["image_url"] = pd.Series([r[-1] for r in rows], dtype=object)
    frame.attrs["duplicate_asins"] = duplicates
    return frame


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
