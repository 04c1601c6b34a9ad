"""The user–item interaction graph: dedupe, iterative k-core, re-index.

Two forms of each step: on a pandas frame of raw ids (:func:`dedupe`, :func:`k_core`,
:func:`reindex`: small inputs, and the reference the tests compare with), and on the int32
code columns the graph stage streams the reviews into (:func:`dedupe_codes`,
:func:`k_core_codes`, :func:`reindex_codes`; see :mod:`sea.data.codes`), which give the
same rows with a few bytes of memory per review.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sea.config import Section, require
from sea.data.amazon import scan_reviews
from sea.data.split import SPLITS, split_codes
from sea.errors import DataError
from sea.runtime import release_freed_memory


@dataclass
class GraphConfig(Section):
    k_core: int = 5
    # MB of review lines parsed as one batch (the stage's working memory beyond ~20 bytes a
    # review and the distinct ids; see docs/stages.md); changes speed and memory, never the output
    batch_mb: int = 64

    def validate(self, section: str) -> None:
        require(self.k_core >= 1, section, "k_core must be >= 1")
        require(1 <= self.batch_mb <= 4096, section, "batch_mb must be from 1 to 4096 (MB of lines per batch)")


class EmptyGraphError(DataError):
    """k-core filtering left no interaction."""


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (user, item): the earliest review (ties: the first in the file)."""
    order = df.reset_index(drop=True)
    order = order.assign(_row=range(len(order))).sort_values(["timestamp", "_row"], kind="stable")
    out = order.drop_duplicates(["user", "item"], keep="first").sort_values("_row", kind="stable")
    return out.drop(columns="_row").reset_index(drop=True)


def k_core(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none is left.

    The result is the largest sub-graph in which every user and every item has at least
    ``k`` interactions (a fixed point: filtering it again changes nothing). Raises
    :class:`EmptyGraphError` when nothing survives.
    """
    out = df
    while True:
        user_deg = out["user"].map(out["user"].value_counts())
        item_deg = out["item"].map(out["item"].value_counts())
        keep = (user_deg >= k) & (item_deg >= k)
        if keep.all():
            break
        out = out[keep]
        if out.empty:
            break
    if out.empty:
        raise EmptyGraphError(
            f"{k}-core filtering left no interaction ({df['user'].nunique()} users, "
            f"{df['item'].nunique()} items before): lower graph.k_core or use a larger dump"
        )
    return out.reset_index(drop=True)


def reindex(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """Map user and item ids to 0..n-1 in sorted order of the original ids.

    Returns the re-indexed frame (``user``, ``item`` int32) and the original ids of users
    and items, position = new index.
    """
    users = pd.Index(sorted(df["user"].unique()))
    items = pd.Index(sorted(df["item"].unique()))
    out = df.assign(
        user=users.get_indexer(df["user"]).astype("int32"),
        item=items.get_indexer(df["item"]).astype("int32"),
    )
    return out, users, items


def dedupe_codes(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """The rows :func:`dedupe` keeps, as ascending positions: per (user, item) code pair
    the earliest review, ties the first in the file."""
    key = user.astype(np.int64)  # (user << 32) | item, built in place: 8 bytes a row
    key <<= 32
    key |= item
    order = np.argsort(key)  # any order within a pair: ties are broken by position below
    key = key[order]
    same = key[1:] == key[:-1]
    single = np.ones(len(key), dtype=bool)
    single[1:] &= ~same
    single[:-1] &= ~same
    keep = np.zeros(len(key), dtype=bool)
    keep[order[single]] = True
    multi = np.flatnonzero(~single)
    if len(multi):
        rows, pairs = order[multi], key[multi]
        by = np.lexsort((rows, timestamp[rows], pairs))  # pair, then time, then file position
        first = np.ones(len(by), dtype=bool)
        first[1:] = pairs[by][1:] != pairs[by][:-1]
        keep[rows[by][first]] = True
    return np.flatnonzero(keep)


def k_core_codes(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """The positions of the rows :func:`k_core` keeps (the same fixed point), ascending.

    Raises :class:`EmptyGraphError` (with :func:`k_core`'s message) when nothing survives.
    """
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    pos = np.arange(len(user), dtype=np.int64)
    u, i = user, item
    while len(pos):
        keep = (np.bincount(u, minlength=n_users)[u] >= k) & (np.bincount(i, minlength=n_items)[i] >= k)
        if keep.all():
            break
        pos, u, i = pos[keep], u[keep], i[keep]
    if not len(pos):
        raise EmptyGraphError(
            f"{k}-core filtering left no interaction ({len(np.unique(user))} users, "
            f"{len(np.unique(item))} items before): lower graph.k_core or use a larger dump"
        )
    return pos


def reindex_codes(codes: np.ndarray, ids: pa.Array) -> tuple[np.ndarray, pd.Index]:
    """Map the codes in use to 0..n-1 in sorted order of their raw ids (as :func:`reindex`).

    Returns the new codes (int32, aligned with ``codes``) and the raw ids, position = new
    index. The ids are sorted by their UTF-8 bytes, which is the order of their code
    points: Python's order of str.
    """
    used = np.flatnonzero(np.bincount(codes, minlength=len(ids)))
    raw = ids.take(pa.array(used))
    order = pc.sort_indices(raw)
    new = np.full(len(ids), -1, dtype=np.int32)
    new[used[order.to_numpy()]] = np.arange(len(used), dtype=np.int32)
    return new[codes], pd.Index(pd.array(raw.take(order), dtype="str"))  # Arrow-backed: no Python strings


def reviews_graph(
    path: Path, k: int, method: str, seed: int, *, allow_truncated: bool = False, batch_bytes: int = 64 << 20
) -> tuple[pd.DataFrame, pd.Index, pd.Index, dict]:
    """Parse, dedupe, k-core, re-index and split a review dump, on integer columns.

    The same result as :func:`sea.data.amazon.read_reviews`, :func:`dedupe`,
    :func:`k_core` (``k``), :func:`reindex` and :func:`sea.data.split.split` (``method``,
    ``seed``) in turn, in bounded memory: reviews stream into int32 codes
    (:func:`sea.data.amazon.scan_reviews`, ``batch_bytes`` of lines at a time) and every
    step after runs on numpy arrays.

    Returns:
        The interactions (``user``, ``item`` int32, ``rating`` float32, ``timestamp``
        int64, ``split`` categorical) in :func:`sea.data.split.split`'s order, the raw ids
        of users and items (position = new index), and the counts ``{"raw": {reviews,
        users, items}, "deduplicated": {interactions, duplicates_dropped}}``.

    Raises:
        DataError: a bad dump (see :func:`sea.data.amazon.scan_reviews`), or nothing left
            after the k-core (:class:`EmptyGraphError`, the file named).
    """
    raw = scan_reviews(path, allow_truncated=allow_truncated, batch_bytes=batch_bytes)
    release_freed_memory()  # the parse's garbage, before dedupe's arrays
    unique = dedupe_codes(raw.user, raw.item, raw.timestamp)
    stats = {
        "raw": {"reviews": len(raw), "users": len(raw.user_ids), "items": len(raw.item_ids)},
        "deduplicated": {"interactions": len(unique), "duplicates_dropped": len(raw) - len(unique)},
    }
    try:
        core = unique[k_core_codes(raw.user[unique], raw.item[unique], k)]
    except EmptyGraphError as e:
        raise EmptyGraphError(f"{path}: {e}") from None
    del unique
    user, users = reindex_codes(raw.user[core], raw.user_ids)
    item, items = reindex_codes(raw.item[core], raw.item_ids)
    rating, timestamp = raw.rating[core], raw.timestamp[core]
    del raw, core
    order, label = split_codes(user, item, timestamp, method, seed)
    columns = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
    del user, item, rating, timestamp
    for name in columns:  # one column at a time, each freed once taken in order
        columns[name] = columns[name][order]
    columns["split"] = pd.Categorical.from_codes(label, categories=list(SPLITS))
    return pd.DataFrame(columns, copy=False), users, items, stats
