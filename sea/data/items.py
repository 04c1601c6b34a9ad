"""The item and user tables of the graph stage, built in a few bytes over their text.

The stage used to read the metadata into a pandas frame of Python strings (six a product)
and build the item table beside it: about 1.7 KB an item at the peak, some 9 GB for a
5.6M-item 2023 category. Here each product record becomes its sentence and image URL as
it streams (:class:`sea.data.amazon.MetadataRecords`), is kept in Arrow string arrays (a
few bytes over the text), and the table is gathered in item order by Arrow's hash lookup.
The tables are the same, column types included, so the parquet files keep their bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sea.data.amazon import item_sentence
from sea.net.urls import join_link

#: Records turned into Arrow arrays at a time (the Python strings of one chunk at most).
CHUNK_ROWS = 1 << 16


def strings(values: Sequence[str] | pd.Index) -> pa.Array:
    """``values`` (a list, or a pandas Index of text) as one Arrow large_string array."""
    arr = pa.array(values.array if isinstance(values, pd.Index) else values, type=pa.large_string())
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def str_column(arr: pa.Array | pa.ChunkedArray) -> pd.api.extensions.ExtensionArray:
    """An Arrow string array as pandas' ``str`` column (Arrow-backed: no Python strings)."""
    return pd.array(arr, dtype="str")


def user_table(reviewer_ids: Sequence[str] | pd.Index) -> pd.DataFrame:
    """One row per re-indexed user: its original reviewer id."""
    ids = str_column(strings(reviewer_ids))
    return pd.DataFrame({"user": np.arange(len(ids), dtype="int32"), "reviewer_id": ids})


def item_table(
    asins: Sequence[str] | pd.Index, records: Iterable[tuple] | None, meta_url: str | None
) -> tuple[pd.DataFrame, int]:
    """One row per re-indexed item (position = item): ``item`` (int32), ``asin``, ``text``
    (:func:`sea.data.amazon.item_sentence` of its record, ``""`` without one) and
    ``image_url`` (its record's URL resolved against the metadata dump's own URL, as a
    relative link in a web page is, see :func:`sea.net.urls.join_link`; missing: null).

    ``records`` are ``(asin, title, brand, categories, description, image_url)`` tuples,
    one per distinct asin (:class:`sea.data.amazon.MetadataRecords`), streamed: only their
    sentences and URLs are kept. Returns the table and how many of its items have a record.
    """
    asin = strings(asins)
    n = len(asin)
    items = pd.DataFrame({"item": np.arange(n, dtype="int32"), "asin": str_column(asin)})
    if records is None:
        return items.assign(text="", image_url=None), 0
    found: tuple[list, list, list] = ([], [], [])  # asin, text, url: Arrow chunks
    rows: tuple[list, list, list] = ([], [], [])

    def flush() -> None:
        for chunks, values in zip(found, rows):
            chunks.append(pa.array(values, type=pa.large_string()))
            values.clear()

    for key, title, brand, categories, description, url in records:
        rows[0].append(key)
        rows[1].append(item_sentence(title, brand, categories, description))
        rows[2].append((join_link(meta_url, url) if meta_url else url) if isinstance(url, str) and url else None)
        if len(rows[0]) >= CHUNK_ROWS:
            flush()
    flush()
    at = pc.index_in(asin, value_set=pa.chunked_array(found[0], type=pa.large_string()).combine_chunks())
    found[0].clear()  # at: each item's record, null without one
    text = pa.chunked_array(found[1], type=pa.large_string()).take(at)  # in item order
    found[1].clear()
    text = pc.fill_null(text, item_sentence("", "", "", ""))
    url = pa.chunked_array(found[2], type=pa.large_string()).take(at)
    found[2].clear()
    # all URLs missing: an object column of None, as the list of None it was made it
    image_url = [None] * n if url.null_count == n else str_column(url)
    return items.assign(text=str_column(text), image_url=image_url), n - at.null_count
