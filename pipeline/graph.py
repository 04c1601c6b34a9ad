"""Stage graph: read data/raw/<dataset.name>/ and write data/processed/ (interactions,
items and users tables, stats.json): parse, dedupe, k-core, re-index and split with a
seed, or take an official split or an MMRec folder as given. Params [dataset], [graph],
[split]. See docs/stages.md."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import load_params
from sea.data.amazon import MetadataRecords
from sea.data.amazon2023 import read_given_split
from sea.data.catalog import DatasetConfig, Download, resolve
from sea.data.graph import GraphConfig, reindex, reviews_graph
from sea.data.items import item_table, user_table
from sea.data.mmrec import inter_file, read_inter, read_item_ids
from sea.data.split import SPLITS, SplitConfig
from sea.errors import DataError
from sea.files import atomic_path, write_json
from sea.runtime import release_freed_memory


def given_split(files: dict[str, Download], ds: DatasetConfig, sc: SplitConfig) -> tuple[pd.DataFrame, dict]:
    """An official split taken as it is: no dedupe, no k-core, no re-split (the release's
    5-core filter and split rules made it); rows sorted by user, split, timestamp, item."""
    paths = {part: ds.raw_dir / files[part].name for part in SPLITS}
    df = read_given_split(paths, allow_truncated=ds.allow_truncated)
    order = df["split"].map({s: i for i, s in enumerate(SPLITS)})
    df = df.assign(_order=order).sort_values(["user", "_order", "timestamp", "item"], kind="stable")
    df["split"] = pd.Categorical(df["split"], categories=list(SPLITS))
    stats = {
        "raw": {"reviews": len(df), "users": int(df["user"].nunique()), "items": int(df["item"].nunique())},
        "deduplicated": {"interactions": len(df), "duplicates_dropped": 0},
        "k_core": f"as given (the official 5-core files of split.given: {sc.given})",
        "split": {"method": "given", "given": sc.given, "seed": None},
    }
    return df.drop(columns="_order").reset_index(drop=True), stats


def amazon_graph(
    ds: DatasetConfig, gc: GraphConfig, sc: SplitConfig, files: dict[str, Download]
) -> tuple[pd.DataFrame, pd.Index, pd.Index, dict]:
    """Parse, dedupe, k-core, re-index and split the raw Amazon reviews (or, with
    ``split.method: given``, take the official split files as they are): the interactions,
    the raw ids of users and items (position = new index) and the counts. ``files``: the
    dataset's downloads by role (:func:`sea.data.catalog.resolve`)."""
    if sc.method == "given":
        core, stats = given_split(files, ds, sc)
        core, users, asins = reindex(core)
        return core[["user", "item", "rating", "timestamp", "split"]], users, asins, stats
    path = ds.raw_dir / files["reviews"].name
    inter, users, asins, stats = reviews_graph(
        path, gc.k_core, sc.method, sc.seed, allow_truncated=ds.allow_truncated, batch_bytes=gc.batch_mb << 20
    )
    stats = {k: stats[k] for k in ("raw", "deduplicated")} | {
        "k_core": gc.k_core,
        "split": {"method": sc.method, "seed": sc.seed},
    }
    return inter, users, asins, stats


def amazon_items(ds: DatasetConfig, files: dict[str, Download], asins: pd.Index) -> tuple[pd.DataFrame, int]:
    """The item table from the metadata dump, streamed (only the reviewed products' lines
    parsed, only their sentences and image URLs kept), and how many items have a record."""
    meta_file = files.get("meta")
    if meta_file is None:
        return item_table(asins, None, None)
    records = MetadataRecords(
        ds.raw_dir / meta_file.name, asins=set(asins), allow_truncated=ds.allow_truncated, image_size=ds.image_size
    )
    return item_table(asins, records, meta_file.url)


def mmrec_user_ids(folder, n_users: int) -> list[str]:
    """Raw user ids from ``u_id_mapping.csv`` (tab-separated, a ``userID`` column and one
    other: the raw id) when present, else the user numbers as strings."""
    ids = [str(u) for u in range(n_users)]
    path = folder / "u_id_mapping.csv"
    if path.exists():
        try:
            mapping = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a tab-separated mapping: {e}") from None
        other = [c for c in mapping.columns if c != "userID"]
        if "userID" in mapping.columns and len(other) == 1:
            raw = dict(zip(mapping["userID"], mapping[other[0]]))
            ids = [raw.get(u, u) for u in ids]
    return ids


def mmrec_tables(ds: DatasetConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Take an MMRec folder's interactions and split as they are (no k-core, no re-split)."""
    path = inter_file(ds.raw_dir)
    inter = read_inter(path)
    n_items = int(inter["item"].max()) + 1
    asins = read_item_ids(ds.raw_dir, n_items)
    items = pd.DataFrame({"item": np.arange(n_items, dtype="int32"), "asin": asins, "text": "", "image_url": None})
    stats = {
        "raw": {"reviews": len(inter), "users": int(inter["user"].nunique()), "items": int(inter["item"].nunique())},
        "deduplicated": {"interactions": int((~inter.duplicated(["user", "item"])).sum()), "duplicates_dropped": 0},
        "k_core": f"as given in {path.name}",
        "split": {"method": f"as given in {path.name} (x_label)", "seed": None},
        "items": {"with_metadata": 0},
    }
    return inter, items, user_table(mmrec_user_ids(ds.raw_dir, int(inter["user"].max()) + 1)), stats


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    gc = GraphConfig.from_dict(params.get("graph"), "graph")
    sc = SplitConfig.from_dict(params.get("split"), "split")
    # interactions.parquet is written first and freed (it appears under its name only once
    # every table is written): the item table's peak does not hold it (BENCHMARKS.md)
    with atomic_path(artifacts.INTERACTIONS) as interactions:
        if ds.source == "mmrec":
            inter, items, users, stats = mmrec_tables(ds)
        else:
            files = {d.role: d for d in resolve(ds, sc.given)}
            inter, users, asins, stats = amazon_graph(ds, gc, sc, files)
        inter = inter.astype({"user": "int32", "item": "int32", "rating": "float32", "timestamp": "int64"})
        n_users, n_inter = int(inter["user"].max()) + 1, len(inter)
        counts = inter["split"].value_counts()
        inter.to_parquet(interactions, index=False)  # as artifacts.write_parquet writes it
        del inter
        if ds.source != "mmrec":
            release_freed_memory()  # the review parse's garbage, before the metadata's
            items, with_metadata = amazon_items(ds, files, asins)
            users = user_table(users)
            stats["items"] = {"with_metadata": with_metadata}

        n_items = len(items)
        stats = {"dataset": ds.name, "source": ds.source} | stats
        source_file = ds.raw_dir / artifacts.SOURCE_FILE  # how each dump was verified (download stage)
        if ds.source == "amazon" and source_file.is_file():
            recorded = json.loads(source_file.read_text())
            stats["dumps"] = {
                role: {k: f.get(k) for k in ("file", "sha256", "verified")}
                for role, f in recorded.items()
                if isinstance(f, dict)
            }
        stats["after_k_core"] = {
            "users": n_users,
            "items": n_items,
            "interactions": n_inter,
            "density": n_inter / (n_users * n_items),
        }
        stats["split"] |= {s: int(counts.get(s, 0)) for s in SPLITS}
        stats["items"] |= {
            "with_text": int((items["text"] != "").sum()),
            "with_image_url": int(items["image_url"].notna().sum()),
        }
        artifacts.write_parquet(items, artifacts.ITEMS)
        artifacts.write_parquet(users, artifacts.USERS)
        write_json(artifacts.GRAPH_STATS, stats)
    print(f"{ds.name}: {n_users} users, {n_items} items, {n_inter} interactions; split {stats['split']}")


if __name__ == "__main__":
    run_stage(main, "graph")
