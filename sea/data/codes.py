"""Reviews as integer columns: raw user and item ids mapped to int32 codes as they stream.

The graph stage used to hold every review as Python strings in a pandas frame (about 400
bytes a review). :class:`CodedReviews` holds a review in 20 bytes (user and item code
int32, rating float32, timestamp int64) and each distinct raw id once, so dedupe, k-core,
re-index and split run on numpy arrays (:mod:`sea.data.graph`, :mod:`sea.data.split`). A
code is the id's rank in order of first appearance; it is internal only: the re-index
sorts the surviving ids by their text, as before.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sea.errors import DataError

#: Codes are int32: no dump comes near this many distinct users or items.
MAX_CODES = 2**31 - 1


@dataclass
class ReviewCodes:
    """Reviews in file order, duplicates kept: ``user``/``item`` codes (int32), ``rating``
    (float32), ``timestamp`` (int64); ``user_ids[c]`` and ``item_ids[c]`` are the raw ids
    of code ``c`` (Arrow string arrays: a few bytes over the text, against some 140 bytes
    an id as Python strings in a dict)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_ids: pa.Array
    item_ids: pa.Array

    def __len__(self) -> int:
        return len(self.user)


def _encode(values: Sequence[str], table: dict[str, int]) -> np.ndarray:
    """The codes of ``values``; ids not yet in ``table`` get the next free codes, in order
    of first appearance. The lookups run in C (``map``); Python loops over new ids only."""
    codes = list(map(table.get, values))
    if None in codes:
        for j in itertools.compress(range(len(codes)), map(operator.is_, codes, itertools.repeat(None))):
            v = values[j]
            c = table.get(v)
            if c is None:
                c = table[v] = len(table)
            codes[j] = c
    return np.array(codes, dtype=np.int32)


class CodedReviews:
    """Collects checked reviews batch by batch (:meth:`add`) and hands them over as
    :class:`ReviewCodes` (:meth:`finish`)."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._parts: tuple[list[np.ndarray], ...] = ([], [], [], [])
        self.n = 0

    def add(self, users: Sequence[str], items: Sequence[str], ratings: Sequence, times: Sequence) -> None:
        """Append one batch of checked values (ratings as floats, times as ints)."""
        if not users:
            return
        cols = (
            _encode(users, self._users),
            _encode(items, self._items),
            np.asarray(ratings, dtype=np.float32),
            np.asarray(times, dtype=np.int64),
        )
        if max(len(self._users), len(self._items)) >= MAX_CODES:
            raise DataError(f"more than {MAX_CODES:,} distinct users or items: too many for int32 codes")
        for part, col in zip(self._parts, cols):
            part.append(col)
        self.n += len(users)

    def finish(self) -> ReviewCodes:
        """The collected reviews; the batches are freed column by column as they are joined,
        the id tables once their ids are in Arrow arrays (in code order)."""
        cols = []
        for part, dtype in zip(self._parts, (np.int32, np.int32, np.float32, np.int64)):
            cols.append(np.concatenate(part) if part else np.empty(0, dtype))
            part.clear()
        users = pa.array(list(self._users), type=pa.large_string())
        self._users = {}
        items = pa.array(list(self._items), type=pa.large_string())
        self._items = {}
        return ReviewCodes(*cols, user_ids=users, item_ids=items)
