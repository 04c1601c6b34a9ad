"""Readers for the Amazon Reviews 2023 release (McAuley Lab, Hou et al. 2024).

The 2023 release keys items by ``parent_asin`` and users by ``user_id``, and stores
timestamps in milliseconds. Three kinds of file are read:

* reviews, one JSON object a line (``raw/review_categories/<Category>.jsonl.gz``): the
  keys used are ``user_id``, ``parent_asin``, ``rating``, ``timestamp`` (ms). They are
  read by :func:`sea.data.amazon.read_reviews`, which takes a line as 2023 when it has
  ``user_id`` and no ``reviewerID`` (:func:`review_fields`).
* the official 5-core benchmark CSVs (``benchmark/5core/rating_only/<Category>.csv.gz``
  and the splits ``benchmark/5core/<split>/<Category>.{train,valid,test}.csv.gz``): a
  header ``user_id,parent_asin,rating,timestamp`` (``_w_his`` splits add ``history``, the
  user's earlier items, space-separated), one row a line (:func:`read_benchmark_csv`);
  :func:`read_given_split` takes an official split as it is.
* item metadata, one JSON object a line (``raw/meta_categories/meta_<Category>.jsonl.gz``):
  ``parent_asin``, ``title``, ``features`` and ``description`` (lists of text),
  ``store``, ``categories`` (one path, a list), ``main_category``, ``details`` (a dict)
  and ``images`` (a list of ``{thumb, large, hi_res, variant}``). They are read by
  :func:`sea.data.amazon.read_metadata`, which takes a record as 2023 when it has
  ``parent_asin`` (:func:`metadata_row`).

Lines are read with :class:`sea.data.lines.Lines` (bounded, UTF-8, gzip checked) and every
value is checked as in the 2014/2018 readers (1-5 stars; review times from 1995-01-01 to
2100-01-01, here in milliseconds, so that a value in seconds is refused as such); a bad line
is a DataError naming the file and the 1-based line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from sea.data import lines
from sea.data.lines import (
    CATEGORY_SEPARATOR,
    Lines,
    check_id,
    check_review_time,
    check_stars,
    check_text,
    clean_text,
    decode,
    parse_finite,
    parse_timestamp,
    require_newline,
    text_field,
    text_values,
)
from sea.data.split import SPLITS
from sea.errors import DataError

#: The header of the official benchmark CSVs; the ``_w_his`` splits add ``history``.
BENCHMARK_HEADER = ("user_id", "parent_asin", "rating", "timestamp")
HISTORY = "history"
#: Image sizes of a 2023 ``images`` record, in the order tried after the requested one.


# --------------------------------------------------------------------------- reviews


#: ``dataset.image_size``: which image of a 2023 item record to take.
IMAGE_SIZES = ("large", "hi_res", "thumb")


def review_fields(rec: dict, where: str) -> tuple[str, str, float, int]:
    """``(user, item, rating, timestamp)`` of one 2023 review record (timestamp in ms)."""
    return lines.review_fields(rec, ("user_id", "parent_asin", "rating", "timestamp"), where, "Amazon 2023", "ms")


def is_benchmark_csv(path: Path) -> bool:
    """Whether ``path`` starts with the 2023 benchmark header (else: a 2018 ratings CSV)."""
    for _, line in Lines(path):
        return line.rstrip(b"\r\n").split(b",")[:4] == [h.encode() for h in BENCHMARK_HEADER]
    return False


def benchmark_rows(path: str | Path, *, allow_truncated: bool = False) -> Iterator[tuple[int, str, str, float, int]]:
    """The rows of an official 2023 benchmark CSV, checked, in file order: ``(line, user,
    item, rating, timestamp)`` (rating 1-5 stars, timestamp in ms; ``line`` 1-based). A
    ``history`` column is checked to be text and not kept.

    Raises:
        DataError: as :func:`read_benchmark_csv`, when the bad row is reached (an empty
            file, or one without rows, once the file is read).
    """
    path = Path(path)
    lines = Lines(path)
    header: list[str] | None = None
    n_rows = 0
    for lineno, line in lines:
        where = f"{path}:{lineno}"
        require_newline(line, where)
        text = decode(line, where)
        if header is None:
            header = text.split(",")
            if tuple(header[:4]) != BENCHMARK_HEADER or header[4:] not in ([], [HISTORY]):
                raise DataError(
                    f"{where}: expected the header {','.join(BENCHMARK_HEADER)}[,{HISTORY}] of an "
                    f"Amazon 2023 benchmark CSV, got {text[:200]!r}"
                )
            continue
        if not text.strip():
            continue
        row = text.split(",")
        if len(row) != len(header):
            raise DataError(
                f"{where}: expected {len(header)} comma-separated fields ({','.join(header)}), "
                f"got {len(row)}: {text[:200]!r}"
            )
        user = check_id(row[0], "user_id", where)
        item = check_id(row[1], "parent_asin", where)
        rating = check_stars(parse_finite(row[2], "rating", where), "rating", where)
        ts = check_review_time(parse_timestamp(row[3], "timestamp", where), "timestamp", where, "ms")
        if len(row) == 5:
            check_text(row[4], HISTORY, where)
        n_rows += 1
        yield lineno, user, item, rating, ts
    lines.check_complete(allow_truncated)
    if header is None:
        raise DataError(f"{path}: the file is empty (expected an Amazon 2023 benchmark CSV)")
    if not n_rows:
        raise DataError(f"{path}: no rows after the header")


def read_benchmark_csv(path: str | Path, *, allow_truncated: bool = False) -> pd.DataFrame:
    """Read an official 2023 benchmark CSV (rating_only or one part of a split).

    Returns ``user``, ``item`` (str), ``rating`` (float32, 1-5), ``timestamp`` (int64, ms) and
    ``line`` (the 1-based line each row came from), in file order. A ``history`` column is
    checked to be text and not kept (the models here take the training graph instead).

    Raises:
        DataError: a missing or different header, a row with the wrong number of fields,
            a bad value (file and line named), a last line without a newline, a damaged
            gzip stream, or a file with no rows.
    """
    where_from, users, items, ratings, times = zip(*benchmark_rows(path, allow_truncated=allow_truncated))
    return pd.DataFrame(
        {
            "user": list(users),
            "item": list(items),
            "rating": np.asarray(ratings, dtype=np.float32),
            "timestamp": np.asarray(times, dtype=np.int64),
            "line": np.asarray(where_from, dtype=np.int64),
        }
    )


def read_given_split(paths: dict[str, Path], *, allow_truncated: bool = False) -> pd.DataFrame:
    """Take an official split (``{"train": path, "valid": path, "test": path}``) as it is.

    Returns ``user``, ``item`` (str), ``rating``, ``timestamp`` and ``split`` (train,
    valid or test), one row per row of the files.

    Raises:
        DataError naming the file and line of the first row that is a (user, item) pair
        seen before (in any of the files: a pair in train and test would leak), or whose
        user has no row in train (a valid/test user the model never saw). Items seen
        only in valid/test are kept: the official splits have them (the last_out split of
        All_Beauty holds 69 such test rows), and feature-based models can score them.
    """
    parts = []
    for part in SPLITS:
        frame = read_benchmark_csv(paths[part], allow_truncated=allow_truncated)
        parts.append(frame.assign(split=part, file=str(paths[part])))
    df = pd.concat(parts, ignore_index=True)
    dup = df.duplicated(["user", "item"], keep="first")
    if dup.any():
        row = df[dup].iloc[0]
        first = df[(df["user"] == row["user"]) & (df["item"] == row["item"])].iloc[0]
        raise DataError(
            f"{row['file']}:{row['line']}: user {row['user']!r} and item {row['item']!r} are "
            f"already paired at {first['file']}:{first['line']}; an official split holds each "
            f"pair once"
        )
    train_users = set(df.loc[df["split"] == "train", "user"])
    cold = (df["split"] != "train") & ~df["user"].isin(train_users)
    if cold.any():
        row = df[cold].iloc[0]
        raise DataError(
            f"{row['file']}:{row['line']}: user {row['user']!r} has no row in the train file "
            f"({int(cold.sum())} {'/'.join(sorted(set(df.loc[cold, 'split'])))} rows have such users); "
            f"the models here learn a vector per training user, so they cannot rank for them. "
            f"Use split.given: last_out (every user in train), or another split.method"
        )
    return df.drop(columns=["line", "file"])


# --------------------------------------------------------------------------- metadata


# The quick look of read_metadata for 2023 lines: a plainly written "parent_asin" key with
# a plain value, and an escape that could spell one of its letters (JSON "\u0070" is "p").
_PARENT_KEY = re.compile(rb'"parent_asin"\s*:\s*"([^"\\\n]*)"\s*[,}]')
_KEY_ESCAPE = re.compile(rb"\\u00(?:5[fF]|6[19eE]|7[0234])")


def wanted_2023(line: bytes, asins) -> bool | None:
    """For a line that mentions ``parent_asin``: False when certain it is the record of a
    product outside ``asins``, True when wanted or not certain; None for other lines."""
    if b"parent_asin" not in line:
        return None
    values = _PARENT_KEY.findall(line)
    if len(values) != 1 or line.count(b"parent_asin") != 1 or _KEY_ESCAPE.search(line):
        return True
    return values[0].decode("utf-8", "replace").strip() in asins


def _details(rec: dict, where: str) -> str:
    """``details`` as "key: value; ..." (values that are not text or numbers are skipped)."""
    value = rec.get("details")
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise DataError(f"{where}: field 'details' must be a mapping, got {type(value).__name__}")
    parts = [
        f"{k}: {v}"
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
    ]
    return "; ".join(parts)


def image_url(rec: dict, size: str, where: str) -> str | None:
    """The URL of the item's MAIN image (else its first), in ``size`` when present, else
    the next of :data:`sea.config.IMAGE_SIZES`; None when the record has no image."""
    images = rec.get("images")
    if images is None or images == []:
        return None
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise DataError(f"{where}: field 'images' must be a list of {{thumb, large, hi_res, variant}} records")
    main = [i for i in images if i.get("variant") == "MAIN"]
    for image in main + [i for i in images if i.get("variant") != "MAIN"]:
        for key in (size,) + tuple(k for k in IMAGE_SIZES if k != size):
            url = image.get(key)
            if url is None:
                continue
            if not isinstance(url, str):
                raise DataError(f"{where}: images[].{key} must be a URL, got {url!r:.100}")
            url = check_text(url.strip(), key, where)
            if url:
                return url
    return None


def metadata_row(rec: dict, where: str, image_size: str = "large") -> tuple:
    """One 2023 record as ``(asin, title, brand, categories, description, image_url)``,
    the columns of the 2014/2018 reader: ``brand`` is ``store``; ``categories`` the
    category path (``main_category`` when it is empty); ``description`` the ``features``,
    then the ``description`` paragraphs, then the ``details`` as "key: value" pairs. Text
    is cleaned once (:func:`sea.data.lines.clean_text`: HTML stripped, spaces squeezed)."""
    asin = rec.get("parent_asin")
    if not isinstance(asin, str) or not asin.strip():
        raise DataError(f"{where}: product record lacks a string 'parent_asin' (got {asin!r:.100})")
    asin = check_id(asin.strip(), "parent_asin", where)

    def text(value: str, key: str) -> str:
        return check_text(clean_text(value), key, where)

    categories = [text(c, "categories") for c in text_values(rec, "categories", where)]
    if not any(categories):
        categories = [text(c, "main_category") for c in text_values(rec, "main_category", where)]
    parts = [text_field(rec, k, where) for k in ("features", "description")] + [text(_details(rec, where), "details")]
    return (
        asin,
        text_field(rec, "title", where),
        text_field(rec, "store", where),
        CATEGORY_SEPARATOR.join(c for c in categories if c),
        " ".join(p for p in parts if p),  # each part is clean already: not cleaned twice
        image_url(rec, image_size, where),
    )
