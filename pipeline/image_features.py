"""Stage image_features: fetch item images (cached, concurrent, with timeouts) and encode
them with open_clip (params features.image); missing or undecodable images get the mean
vector. With ``pretrained: none`` the encoder is randomly initialised and says so. With
``dataset.source: mmrec`` the MMRec folder's image_feat.npy is taken instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.config import DatasetConfig, ImageFeatureConfig, load_params
from sea.data.mmrec import precomputed_features
from sea.features.image import encode_images, fetch_images, load_clip


def encode(items: pd.DataFrame, cfg: ImageFeatureConfig):
    urls = [u if isinstance(u, str) and u else None for u in items["image_url"]]
    paths = fetch_images(urls, artifacts.IMAGE_CACHE, base_dir=Path("."), timeout=cfg.timeout, workers=cfg.workers)
    model, preprocess, clip_info = load_clip(cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed)
    matrix, info = encode_images(paths, model, preprocess, batch_size=cfg.batch_size, device=cfg.device)
    return matrix, clip_info | info | {"n_with_url": sum(u is not None for u in urls),
                                       "n_fetched": sum(p is not None for p in paths)}


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    if ds.source == "mmrec":
        matrix, info = precomputed_features(ds.raw_dir, "image", len(items))
    else:
        matrix, info = encode(items, cfg)
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    main()
