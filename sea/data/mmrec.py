"""MMRec's dataset folder format, the one this field exchanges (SEA's reference code reads it).

A folder ``<path>/`` holds:

- ``<name>.inter``: tab-separated with a header ``userID itemID rating timestamp x_label``;
  ids are 0-based ints, ``x_label`` 0/1/2 = train/valid/test;
- ``image_feat.npy``, ``text_feat.npy``: float32 [n_items, dim], row i = itemID i;
- optionally ``i_id_mapping.csv`` / ``u_id_mapping.csv`` (tab-separated ``asin itemID`` /
  ``userID_raw userID``) linking the ids back to Amazon's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sea.data.split import SPLITS
from sea.io import DataError, atomic_path

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


def inter_file(folder: Path) -> Path:
    """The folder's single ``*.inter`` file."""
    found = sorted(Path(folder).glob("*.inter"))
    if len(found) != 1:
        raise DataError(f"{folder}: expected exactly one *.inter file, found {[p.name for p in found]}")
    return found[0]


def read_inter(path: Path) -> pd.DataFrame:
    """An MMRec ``.inter`` file as our interactions table (user, item, rating, timestamp, split)."""
    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a tab-separated .inter file: {e}") from None
    missing = [c for c in ("userID", "itemID", "x_label") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    for col in ("userID", "itemID", "x_label"):
        if not pd.api.types.is_integer_dtype(df[col]):
            bad = df.index[pd.to_numeric(df[col], errors="coerce").isna()]
            line = int(bad[0]) + 2 if len(bad) else "?"
            raise DataError(f"{path}:{line}: column {col} must hold integers")
    if not df["x_label"].isin([0, 1, 2]).all():
        line = int(df.index[~df["x_label"].isin([0, 1, 2])][0]) + 2
        raise DataError(f"{path}:{line}: x_label must be 0, 1 or 2 (train/valid/test)")
    if len(df) == 0:
        raise DataError(f"{path}: no interactions")
    return pd.DataFrame({
        "user": df["userID"].astype("int32"),
        "item": df["itemID"].astype("int32"),
        "rating": (df["rating"] if "rating" in df else pd.Series(1.0, index=df.index)).astype("float32"),
        "timestamp": (df["timestamp"] if "timestamp" in df else pd.Series(0, index=df.index)).astype("int64"),
        "split": pd.Categorical.from_codes(df["x_label"].to_numpy(), categories=list(SPLITS)),
    })


def read_item_ids(folder: Path, n_items: int) -> pd.Series:
    """Item asins from ``i_id_mapping.csv`` when present, else the item numbers as strings."""
    path = Path(folder) / "i_id_mapping.csv"
    asins = pd.Series([str(i) for i in range(n_items)])
    if path.exists():
        mapping = pd.read_csv(path, sep="\t")
        if {"asin", "itemID"} <= set(mapping.columns):
            found = mapping.set_index("itemID")["asin"].astype(str)
            asins = found.reindex(range(n_items)).fillna(asins).reset_index(drop=True)
    return asins


def read_features(folder: Path, modality: str, n_items: int) -> np.ndarray:
    path = Path(folder) / FEATURE_FILES[modality]
    if not path.exists():
        raise DataError(f"{path}: missing ({modality} features of the MMRec folder)")
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[0] < n_items:
        raise DataError(f"{path}: expected at least {n_items} rows of features, got shape {x.shape}")
    return np.asarray(x, dtype=np.float32)


def write_folder(folder: Path, name: str, interactions: pd.DataFrame, features: dict[str, np.ndarray],
                 asins: pd.Series | None = None) -> None:
    """Write our processed dataset as an MMRec folder (each file atomically)."""
    folder = Path(folder)
    inter = pd.DataFrame({
        "userID": interactions["user"].astype(int),
        "itemID": interactions["item"].astype(int),
        "rating": interactions["rating"].astype(float),
        "timestamp": interactions["timestamp"].astype(int),
        "x_label": interactions["split"].cat.codes.astype(int),
    })
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
    x = read_features(folder, modality, n_items)[:n_items]
    info = {"model": f"precomputed ({FEATURE_FILES[modality]} of the MMRec folder)", "source": "mmrec",
            "dim": int(x.shape[1]), "n_items": n_items, "n_missing": 0}
    return x, info
