"""Stage image_features: fetch item images (cached, concurrent, with timeouts) and encode
them with open_clip (params features.image); missing or undecodable images get the mean
vector. With ``pretrained: none`` the encoder is randomly initialised and says so."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.config import ImageFeatureConfig, load_params
from sea.features.image import encode_images, fetch_images, load_clip


def main() -> None:
    cfg = ImageFeatureConfig.from_dict(load_params()["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    urls = [u if isinstance(u, str) and u else None for u in items["image_url"]]
    paths = fetch_images(urls, artifacts.IMAGE_CACHE, base_dir=Path("."), timeout=cfg.timeout, workers=cfg.workers)
    model, preprocess, clip_info = load_clip(cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed)
    matrix, info = encode_images(paths, model, preprocess, batch_size=cfg.batch_size, device=cfg.device)
    info = clip_info | info | {"n_with_url": sum(u is not None for u in urls),
                               "n_fetched": sum(p is not None for p in paths)}
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    main()
