"""Per-user train/valid/test splits, seeded and reproducible.

Methods (``split.method``):

- ``mmrec`` (the benchmark protocol, SEA.md §2): each user's interactions in a seeded random
  order; users with fewer than 10 get n−2 train, 1 valid, 1 test; others keep
  n − floor(0.2·n) for train and the floor(0.2·n) rest is halved, valid getting
  floor(rest / 2) and test the remainder.
- ``temporal``: the same counts, but the order is by timestamp (then item), so valid and
  test hold each user's latest interactions.
- ``leave_one_out``: by timestamp; the last interaction is test, the one before valid.

Users with fewer than 3 interactions keep all of them in train. Every valid/test user
therefore has training interactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sea.config import Section, require, require_choice
from sea.errors import shown

SPLITS = ("train", "valid", "test")


#: ``split.given``: the official splits of the Amazon Reviews 2023 benchmark.
OFFICIAL_SPLITS = ("last_out", "last_out_w_his", "timestamp", "timestamp_w_his")


@dataclass
class SplitConfig(Section):
    method: str = "mmrec"
    seed: int = 999
    # method "given": which official split of a 2023 catalog entry (see OFFICIAL_SPLITS);
    # the download stage fetches its files, the graph stage takes them as they are
    given: str | None = None

    def validate(self, section: str) -> None:
        require_choice(self.method, ("mmrec", "temporal", "leave_one_out", "given"), section, "method")
        require(self.seed >= 0, section, "seed must be >= 0")
        if self.method == "given":
            require(
                self.given is not None,
                section,
                f"method: given needs given: one of {list(OFFICIAL_SPLITS)} (an official split)",
            )
            require_choice(self.given, OFFICIAL_SPLITS, section, "given")
        else:
            require(
                self.given is None,
                section,
                f"given: {shown(self.given)} is only read with method: given (method is {shown(self.method)}); "
                "set it to null",
            )


def _held_out_counts(n: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Number of valid and test interactions for users with ``n`` interactions."""
    if method == "leave_one_out":
        n_valid = np.ones_like(n)
        n_test = np.ones_like(n)
    else:
        rest = np.where(n < 10, 2, np.floor(0.2 * n).astype(np.int64))
        n_valid = rest // 2
        n_test = rest - n_valid
    small = n < 3
    return np.where(small, 0, n_valid), np.where(small, 0, n_test)


def split(df: pd.DataFrame, method: str = "mmrec", seed: int = 999) -> pd.DataFrame:
    """Return ``df`` sorted by (user, position) with a categorical ``split`` column.

    ``df`` needs ``user``, ``item`` and ``timestamp`` columns. The result depends only on
    the rows (not their order in ``df``), the method and the seed.
    """
    if method not in ("mmrec", "temporal", "leave_one_out"):
        raise ValueError(f"unknown split method {method!r}")
    base = df.sort_values(["user", "item"], kind="stable").reset_index(drop=True)
    if method == "mmrec":
        key = np.random.default_rng(seed).random(len(base))
        base = base.assign(_key=key).sort_values(["user", "_key"], kind="stable")
    else:
        base = base.assign(_key=0.0).sort_values(["user", "timestamp", "item"], kind="stable")
    base = base.reset_index(drop=True)

    n = base.groupby("user")["item"].transform("size").to_numpy()
    pos = base.groupby("user").cumcount().to_numpy()
    n_valid, n_test = _held_out_counts(n, method)
    n_train = n - n_valid - n_test
    label = np.where(pos < n_train, 0, np.where(pos < n_train + n_valid, 1, 2))
    base["split"] = pd.Categorical.from_codes(label, categories=list(SPLITS))
    return base.drop(columns="_key")


def split_codes(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, method: str = "mmrec", seed: int = 999
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split` on arrays (re-indexed user codes 0..n-1, item codes; one row per pair).

    Returns ``order`` (the rows' positions in :func:`split`'s output order) and ``label``
    (int8: 0 train, 1 valid, 2 test, aligned with ``order``): the same rows, order and
    labels as :func:`split` on a frame of these columns. The counts are worked out per
    user, so beyond the sort the memory is a byte a row.
    """
    if method not in ("mmrec", "temporal", "leave_one_out"):
        raise ValueError(f"unknown split method {method!r}")
    if method == "mmrec":
        base = np.lexsort((item, user))  # (user, item): one row per pair, so one order
        key = np.random.default_rng(seed).random(len(base))
        order = base[np.lexsort((key, user[base]))]  # stable: ties keep the (user, item) order
        del base, key
    else:
        order = np.lexsort((item, timestamp, user))
    n = np.bincount(user).astype(np.int64)  # each user's rows lie together in ``order``
    n_valid, n_test = _held_out_counts(n, method)
    runs = np.stack([n - n_valid - n_test, n_valid, n_test], axis=1).ravel()
    label = np.repeat(np.tile(np.arange(3, dtype=np.int8), len(n)), runs)
    return order, label
