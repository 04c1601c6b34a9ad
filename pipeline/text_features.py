"""Stage text_features: encode each item's sentence of data/processed/items.parquet with
sentence-transformers (params [features.text]; the MMRec folder's text_feat.npy with
``dataset.source: mmrec``) into data/features/text.npy and text.json. See docs/stages.md
and docs/features.md."""

from __future__ import annotations

from sea.runtime import describe, start_stage

start_stage("text_features")  # first, before torch computes anything: params.yaml [compute]

import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import load_params
from sea.data.catalog import DatasetConfig
from sea.data.mmrec import precomputed_features
from sea.features import empty_features
from sea.features.text import TextFeatureConfig, encode_texts


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = TextFeatureConfig.from_dict(params["features"]["text"], "features.text")
    items = pd.read_parquet(artifacts.ITEMS)
    if ds.source == "mmrec":
        matrix, info = precomputed_features(ds.raw_dir, "text", len(items))
    else:
        texts = [t if isinstance(t, str) and t.strip() else None for t in items["text"]]
        if any(texts):
            matrix, info = encode_texts(
                texts,
                cfg.model,
                batch_size=cfg.batch_size,
                device=cfg.device,
                precision=cfg.precision,
                processes=cfg.processes,
            )
            info |= describe()
        else:  # a dataset without metadata: nothing to encode; a model that reads text refuses it
            matrix, info = empty_features("text", len(items))
    artifacts.write_features("text", matrix, info)
    print(f"text features {matrix.shape}: {info}")


if __name__ == "__main__":
    run_stage(main, "text_features")
