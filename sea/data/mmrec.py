"""MMRec's dataset folder format, the one this field exchanges (SEA's reference code reads it).

A folder ``<path>/`` holds:

- ``<name>.inter``: tab-separated with a header ``userID itemID rating timestamp x_label``;
  ids are 0-based ints, ``x_label`` 0/1/2 = train/valid/test;
- ``image_feat.npy``, ``text_feat.npy``: float32 [n_items, dim], row i = itemID i;
- optionally ``i_id_mapping.csv`` / ``u_id_mapping.csv`` (tab-separated ``asin itemID`` /
  ``userID_raw userID``) linking the ids back to Amazon's.

The readers check every cell (see :func:`read_inter`, :func:`read_item_ids` and
:func:`sea.data.arrays.load_features`) and read text through :class:`sea.data.lines.Lines`
(line-size limit, byte-order mark dropped, gzip checked).
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sea.data.arrays import load_features
from sea.data.lines import (
    FLOAT32_MAX,
    FLOAT_PATTERN,
    ID_PATTERN,
    MAX_ID,
    MAX_TIMESTAMP,
    TIMESTAMP_PATTERN,
    Lines,
    check_id,
    decode,
    parse_finite,
    parse_id,
    parse_timestamp,
    require_newline,
)
from sea.data.split import SPLITS
from sea.errors import DataError
from sea.files import atomic_path

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


def inter_file(folder: Path) -> Path:
    """The folder's single ``*.inter`` file."""
    found = sorted(Path(folder).glob("*.inter"))
    if len(found) != 1:
        raise DataError(f"{folder}: expected exactly one *.inter file, found {[p.name for p in found]}")
    return found[0]


def _header(lines: Iterator[tuple[int, bytes]], path: Path, required: tuple[str, ...]) -> list[str]:
    """The column names of line 1 (tab-separated), checked: required present, none twice."""
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header line with {', '.join(required)})")
    where = f"{path}:{first[0]}"
    require_newline(first[1], where)
    names = _fields(first[1], where)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{where}: duplicate column(s) {twice} in the header {names}")
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {names}")
    return names


def _fields(line: bytes, where: str) -> list[str]:
    """One tab-separated row (quoted as pandas writes it)."""
    text = decode(line, where)
    if '"' not in text:  # the usual row: plain split (the csv module only matters for quotes)
        return text.split("\t") if text else []
    try:
        return next(csv.reader((text,), delimiter="\t", strict=True), [])
    except csv.Error as e:
        raise DataError(f"{where}: not a tab-separated row ({e})") from None


def _check_dense(ids: np.ndarray, name: str, path: Path, linenos: array) -> None:
    """0-based ids are used as row numbers: refuse ranges that are mostly unused."""
    n = int(ids.max()) + 1
    distinct = len(np.unique(ids))
    if n > 2 * distinct:
        line = linenos[int(ids.argmax())]
        raise DataError(
            f"{path}:{line}: {name} {n - 1:,} is out of proportion: only {distinct:,} distinct {name}s "
            f"occur, so most of 0..{n - 1:,} would be unused. MMRec ids are 0-based and dense (at least "
            f"half of 0..max must occur); the file is damaged or its ids were not remapped"
        )


def _parse_label(text: str, name: str, where: str) -> int:
    """An ``x_label`` cell: 0, 1 or 2 (train/valid/test)."""
    if text not in ("0", "1", "2"):
        raise DataError(f"{where}: {name} must be 0, 1 or 2 (train/valid/test), got {text!r:.50}")
    return int(text)


# Each column of an .inter file: the anchored pattern every cell must match, its scalar
# parser (which gives the message for a bad cell) and the dtype it is stored in.
_INTER_CELLS = {
    "userID": (f"^{ID_PATTERN}$", parse_id, np.int32),
    "itemID": (f"^{ID_PATTERN}$", parse_id, np.int32),
    "x_label": ("^[012]$", _parse_label, np.int8),
    "rating": (f"^{FLOAT_PATTERN}$", parse_finite, np.float32),
    "timestamp": (f"^{TIMESTAMP_PATTERN}$", parse_timestamp, np.int64),
}
_CHUNK_ROWS = 1 << 16  # rows checked at a time (bounds the memory of the cells as text)


def _parse_column(cells: list[str], name: str, path: Path, linenos: array) -> np.ndarray:
    """One column of ``.inter`` cells, each checked by the rules of its scalar parser (with
    pyarrow, a column at a time); the first bad cell raises with its line number."""
    pattern, parse, dtype = _INTER_CELLS[name]
    text = pa.array(cells, type=pa.string())
    bad = ~pc.match_substring_regex(text, pattern).to_numpy(zero_copy_only=False)
    if not bad.any():
        if name == "timestamp":
            x = pc.cast(pc.replace_substring_regex(text, r"\.0*$", ""), pa.uint64()).to_numpy()
            bad = x >= MAX_TIMESTAMP
        elif name == "rating":
            x = pc.cast(text, pa.float64()).to_numpy()
            bad = ~(np.abs(x) <= FLOAT32_MAX)
        else:
            x = pc.cast(text, pa.int64()).to_numpy()
            bad = x >= MAX_ID
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        where = f"{path}:{linenos[first]}"
        parse(cells[first], name, where)  # raises with the reason
        raise DataError(f"{where}: {name} {cells[first]!r:.50} is not valid")
    return x.astype(dtype)


def _rows(it, path: Path, names: list[str]):
    """(lineno, "file:line", fields) of each non-empty data line after the header; every
    line must end with a newline and hold one field per header name."""
    for lineno, line in it:
        if not line.rstrip(b"\r\n"):
            continue  # an empty line (one of spaces or tabs is a row of empty fields)
        where = f"{path}:{lineno}"
        require_newline(line, where)
        row = _fields(line, where)
        if len(row) != len(names):
            raise DataError(f"{where}: {len(row)} fields, but the header has {len(names)} ({', '.join(names)})")
        yield lineno, where, row


def read_inter(path: Path) -> pd.DataFrame:
    """An MMRec ``.inter`` file as our interactions table (user, item, rating, timestamp, split).

    Tab-separated with a header line naming the columns (each at most once; other columns
    are ignored): ``userID``, ``itemID`` (0-based ids, ``0 <= id < 2**31 - 1``, dense: the
    largest id + 1 is at most twice the number of distinct ids), ``x_label`` (0, 1 or 2 =
    train/valid/test), optional ``rating`` (finite, within float32; 1.0 when absent) and
    ``timestamp`` (whole number, ``0 <= ts < 2**63``; 0 when absent). Every cell is checked;
    empty lines are skipped; the last line must end with a newline.

    Raises:
        DataError: naming the file and 1-based line of the first bad cell or row.
    """
    path = Path(path)
    lines = Lines(path)
    it = iter(lines)
    names = _header(it, path, ("userID", "itemID", "x_label"))
    used = {name: names.index(name) for name in _INTER_CELLS if name in names}
    cells: dict[str, list[str]] = {name: [] for name in used}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in used}
    linenos = array("q")

    def check_chunk() -> None:
        for name, column in cells.items():
            parts[name].append(_parse_column(column, name, path, linenos[len(linenos) - len(column) :]))
            column.clear()

    for lineno, _where, row in _rows(it, path, names):
        for name, i in used.items():
            cells[name].append(row[i])
        linenos.append(lineno)
        if len(cells["userID"]) == _CHUNK_ROWS:
            check_chunk()
    check_chunk()
    lines.check_complete()
    if not linenos:
        raise DataError(f"{path}: no interactions")
    column = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    _check_dense(column["userID"], "userID", path, linenos)
    _check_dense(column["itemID"], "itemID", path, linenos)
    n = len(linenos)
    return pd.DataFrame(
        {
            "user": column["userID"],
            "item": column["itemID"],
            "rating": column.get("rating", np.ones(n, dtype=np.float32)),
            "timestamp": column.get("timestamp", np.zeros(n, dtype=np.int64)),
            "split": pd.Categorical.from_codes(column["x_label"].astype(np.int64), categories=list(SPLITS)),
        }
    )


def read_item_ids(folder: Path, n_items: int) -> pd.Series:
    """Item asins from ``i_id_mapping.csv`` when present, else the item numbers as strings.

    The file (tab-separated, header with ``asin`` and ``itemID``) must map ``0..m-1`` one
    to one onto distinct asins (non-blank text without control characters), with
    ``m >= n_items``; the asins of items ``0..n_items-1`` are returned.

    Raises:
        DataError: a bad row (file and 1-based line), an itemID or asin given twice, ids
            that are not ``0..m-1``, or fewer than ``n_items`` items.
    """
    path = Path(folder) / "i_id_mapping.csv"
    if not path.exists():
        return pd.Series([str(i) for i in range(n_items)])
    lines = Lines(path)
    it = iter(lines)
    names = _header(it, path, ("asin", "itemID"))
    ia, ii = names.index("asin"), names.index("itemID")
    asin_of: dict[int, str] = {}
    line_of_id: dict[int, int] = {}
    line_of_asin: dict[str, int] = {}
    for lineno, where, row in _rows(it, path, names):
        asin = check_id(row[ia], "asin", where)
        item = parse_id(row[ii], "itemID", where)
        if item in line_of_id:
            raise DataError(f"{where}: itemID {item} is mapped again (first at line {line_of_id[item]})")
        if asin in line_of_asin:
            raise DataError(f"{where}: asin {asin!r} is mapped again (first at line {line_of_asin[asin]})")
        asin_of[item], line_of_id[item], line_of_asin[asin] = asin, lineno, lineno
    lines.check_complete()
    m = len(asin_of)
    if m and max(asin_of) >= m:
        item = max(asin_of)
        raise DataError(
            f"{path}:{line_of_id[item]}: itemID {item} but only {m:,} items are mapped: "
            f"the itemIDs must be exactly 0..{m - 1:,}, each once"
        )
    if m < n_items:
        raise DataError(f"{path}: maps {m:,} items, but the interactions have {n_items:,} (itemIDs 0..{n_items - 1:,})")
    return pd.Series([asin_of[i] for i in range(n_items)])


def read_features(folder: Path, modality: str, n_items: int) -> np.ndarray:
    """The ``[n_items, dim]`` float32 features of the folder (its first ``n_items`` rows).

    See :func:`sea.data.arrays.load_features` for what is refused.
    """
    return load_features(Path(folder) / FEATURE_FILES[modality], n_items, modality, extra_rows=True)


def write_folder(
    folder: Path, name: str, interactions: pd.DataFrame, features: dict[str, np.ndarray], asins: pd.Series | None = None
) -> None:
    """Write our processed dataset as an MMRec folder (each file atomically)."""
    folder = Path(folder)
    inter = pd.DataFrame(
        {
            "userID": interactions["user"].astype(int),
            "itemID": interactions["item"].astype(int),
            "rating": interactions["rating"].astype(float),
            "timestamp": interactions["timestamp"].astype(int),
            "x_label": interactions["split"].cat.codes.astype(int),
        }
    )
    with atomic_path(folder / f"{name}.inter") as tmp:
        inter.to_csv(tmp, sep="\t", index=False)
    for modality, x in features.items():
        with atomic_path(folder / FEATURE_FILES[modality]) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(x, dtype=np.float32))
    if asins is not None:
        with atomic_path(folder / "i_id_mapping.csv") as tmp:
            pd.DataFrame({"asin": asins.astype(str), "itemID": range(len(asins))}).to_csv(tmp, sep="\t", index=False)


def precomputed_features(folder: Path, modality: str, n_items: int) -> tuple[np.ndarray, dict]:
    """A feature stage's output taken from an MMRec folder instead of an encoder."""
    x = read_features(folder, modality, n_items)
    info = {
        "model": f"precomputed ({FEATURE_FILES[modality]} of the MMRec folder)",
        "source": "mmrec",
        "dim": int(x.shape[1]),
        "n_items": n_items,
        "n_missing": 0,
    }
    return x, info
