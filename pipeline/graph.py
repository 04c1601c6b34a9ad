"""Stage graph: parse the raw dumps, dedupe (user, item) pairs, iterative k-core,
re-index, split with a seed; write the interactions and items tables and their stats."""

from __future__ import annotations

import sys
import urllib.parse

import pandas as pd

from sea import artifacts
from sea.config import DatasetConfig, GraphConfig, SplitConfig, load_params
from sea.data.amazon import item_sentence, read_metadata, read_reviews
from sea.data.graph import dedupe, k_core, reindex
from sea.data.split import SPLITS, split
from sea.io import DataError, write_json


def item_table(asins: pd.Index, meta: pd.DataFrame | None, meta_url: str | None) -> pd.DataFrame:
    """One row per re-indexed item: its text sentence and image URL (resolved against the
    metadata dump's own URL, as a relative link in a web page is)."""
    items = pd.DataFrame({"item": range(len(asins)), "asin": asins.astype(str)}).astype({"item": "int32"})
    if meta is None:
        return items.assign(text="", image_url=None)
    m = meta.set_index("asin").reindex(items["asin"])
    text = [item_sentence(*(r if isinstance(r, str) else "" for r in row))
            for row in m[["title", "brand", "categories", "description"]].itertuples(index=False)]

    def resolve(u):
        if not isinstance(u, str) or not u:
            return None
        return urllib.parse.urljoin(meta_url, u) if meta_url else u

    return items.assign(text=text, image_url=[resolve(u) for u in m["image_url"]])


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    gc = GraphConfig.from_dict(params.get("graph"), "graph")
    sc = SplitConfig.from_dict(params.get("split"), "split")

    reviews_path = ds.raw_dir / ds.local_name(ds.reviews_url)
    raw = read_reviews(reviews_path, allow_truncated=ds.allow_truncated)
    unique = dedupe(raw)
    try:
        core = k_core(unique, gc.k_core)
    except DataError as e:
        raise DataError(f"{reviews_path}: {e}") from None
    core, users, asins = reindex(core)
    inter = split(core, sc.method, sc.seed)[["user", "item", "rating", "timestamp", "split"]]
    inter = inter.astype({"rating": "float32", "timestamp": "int64"})

    meta = None
    if ds.meta_url:
        meta = read_metadata(ds.raw_dir / ds.local_name(ds.meta_url))
    items = item_table(asins, meta, ds.meta_url)

    counts = inter["split"].value_counts()
    stats = {
        "dataset": ds.name,
        "raw": {"reviews": len(raw), "users": int(raw["user"].nunique()), "items": int(raw["item"].nunique())},
        "deduplicated": {"interactions": len(unique), "duplicates_dropped": len(raw) - len(unique)},
        "k_core": gc.k_core,
        "after_k_core": {"users": len(users), "items": len(asins), "interactions": len(inter),
                         "density": len(inter) / (len(users) * len(asins))},
        "split": {"method": sc.method, "seed": sc.seed} | {s: int(counts.get(s, 0)) for s in SPLITS},
        "items": {"with_metadata": int(meta["asin"].isin(asins).sum()) if meta is not None else 0,
                  "with_text": int((items["text"] != "").sum()),
                  "with_image_url": int(items["image_url"].notna().sum())},
    }
    artifacts.write_parquet(inter, artifacts.INTERACTIONS)
    artifacts.write_parquet(items, artifacts.ITEMS)
    write_json(artifacts.GRAPH_STATS, stats)
    a = stats["after_k_core"]
    print(f"{ds.name}: {a['users']} users, {a['items']} items, {a['interactions']} interactions "
          f"after {gc.k_core}-core; split {stats['split']}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"graph stage failed: {e}")
