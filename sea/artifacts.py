"""Where each stage's outputs live and how they are read back: the files between stages.

- ``data/raw/<dataset>/``: the downloaded dumps, unchanged (download stage).
- ``data/processed/interactions.parquet``: user (int32), item (int32), rating (float32),
  timestamp (int64), split (category train/valid/test) (graph stage).
- ``data/processed/items.parquet``: item (int32), asin, text, image_url (nullable) (graph).
- ``data/processed/users.parquet``: user (int32), reviewer_id (str) (graph).
- ``data/processed/stats.json``: counts before and after k-core, per split (graph).
- ``data/features/<modality>.npy``: float32 [n_items, dim], row i = item i, with
  ``<modality>.json`` beside it: encoder, weights, coverage counts (feature stages).
- ``data/mmrec/<dataset>/``: the processed dataset in MMRec's folder format (export_mmrec).
- ``models/model.safetensors``: per seed, the best-validation state dict, with the model's
  name and the params it was trained with (train; see :mod:`sea.checkpoint`).
- ``models/train.json``: per seed, epochs run, best epoch, its validation metrics (train).
- ``models/recommendations.parquet``: top-K per user and seed (seed, user, reviewer_id,
  rank, item, asin, score) (train).
- ``reports/history.csv``: per seed and epoch, losses and validation metrics (train).
- ``reports/``: metrics.json, metrics_detail.json, per_user.parquet, learning_curves.png,
  report.md (evaluate).
- ``logs/train_timings.json``: seconds per seed and epoch (train; not a DVC output, ignored
  by git: timings never enter hashed or committed files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sea.data.arrays import load_features
from sea.errors import DataError
from sea.files import atomic_path

SOURCE_FILE = "SOURCE.json"  # in data/raw/<name>/: where each dump came from, how it was verified
PROCESSED = Path("data/processed")
INTERACTIONS = PROCESSED / "interactions.parquet"
ITEMS = PROCESSED / "items.parquet"
USERS = PROCESSED / "users.parquet"
GRAPH_STATS = PROCESSED / "stats.json"
FEATURES = Path("data/features")
IMAGE_CACHE = Path("data/cache/images")
MMREC = Path("data/mmrec")  # export_mmrec: data/mmrec/<dataset>/
MODEL = Path("models/model.safetensors")
TRAIN_SUMMARY = Path("models/train.json")
RECOMMENDATIONS = Path("models/recommendations.parquet")
REPORTS = Path("reports")
HISTORY = REPORTS / "history.csv"
METRICS = REPORTS / "metrics.json"
METRICS_DETAIL = REPORTS / "metrics_detail.json"
PER_USER = REPORTS / "per_user.parquet"
CURVES_PNG = REPORTS / "learning_curves.png"
REPORT_MD = REPORTS / "report.md"
TRAIN_TIMINGS = Path("logs/train_timings.json")


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_features(modality: str, matrix: np.ndarray, info: dict, root: Path = FEATURES) -> None:
    """``<modality>.npy`` (float32) and ``<modality>.json``, each written atomically."""
    with atomic_path(root / f"{modality}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(matrix, dtype=np.float32))
    with atomic_path(root / f"{modality}.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def read_features(modalities: list[str], n_items: int, root: Path = FEATURES) -> dict[str, np.ndarray]:
    """Load the feature matrices (float32, C order), checking they are aligned with the item
    table, finite, not all zero, and that their encoder saw at least one real input
    (see :func:`sea.data.arrays.load_features`)."""
    out = {}
    for m in modalities:
        path = root / f"{m}.npy"
        info = read_feature_info(m, root) if (root / f"{m}.json").exists() else {}
        if info.get("n_decoded", info.get("n_with_text")) == 0:
            raise DataError(
                f"{path}: no item had a usable {m} (see {m}.json): the features are empty; "
                f"fix the inputs, or leave {m} out of model.modalities"
            )
        out[m] = load_features(path, n_items, m)
    return out


def read_feature_info(modality: str, root: Path = FEATURES) -> dict:
    return json.loads((root / f"{modality}.json").read_text())
