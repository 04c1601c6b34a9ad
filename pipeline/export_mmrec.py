"""Stage export_mmrec: write data/processed/ and data/features/ as an MMRec folder,
data/mmrec/<dataset.name>/. See docs/stages.md and docs/datasets.md (MMRec format)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import load_params
from sea.data.catalog import DatasetConfig
from sea.data.mmrec import FEATURE_FILES, write_folder
from sea.files import atomic_dir


def main() -> None:
    ds = DatasetConfig.from_dict(load_params()["dataset"], "dataset")
    dest = artifacts.MMREC / ds.name
    inter = pd.read_parquet(artifacts.INTERACTIONS)
    items = pd.read_parquet(artifacts.ITEMS)
    features = {m: np.load(artifacts.FEATURES / f"{m}.npy", allow_pickle=False) for m in FEATURE_FILES}
    with atomic_dir(dest) as tmp:
        write_folder(tmp, ds.name, inter, features, items["asin"])
    print(f"MMRec folder {dest}: {len(inter)} interactions, features { {m: x.shape for m, x in features.items()} }")


if __name__ == "__main__":
    run_stage(main, "export_mmrec")
