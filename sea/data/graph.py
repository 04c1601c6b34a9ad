"""The user–item interaction graph: dedupe, iterative k-core, re-index."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sea.config import Section, require
from sea.errors import DataError


@dataclass
class GraphConfig(Section):
    k_core: int = 5

    def validate(self, section: str) -> None:
        require(self.k_core >= 1, section, "k_core must be >= 1")


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
