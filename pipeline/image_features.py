"""Stage image_features: fetch item images (cached, concurrent, capped in size and time)
and encode them with open_clip (params features.image); missing, refused or undecodable
images get the mean vector. The image URLs come from the downloaded metadata, so they
are not trusted: only public http(s) hosts, and local files only inside the folder the
metadata came from (see sea.features.image.fetch_images; params allow_private_hosts and
allow_files_outside opt out). With ``pretrained: none`` the encoder is randomly
initialised and says so. With ``dataset.source: mmrec`` the MMRec folder's
image_feat.npy is taken instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import DatasetConfig, ImageFeatureConfig, load_params
from sea.data.catalog import resolve
from sea.data.mmrec import precomputed_features
from sea.features.image import encode_images, fetch_images, load_clip
from sea.io import MB, local_path


def dataset_root(ds: DatasetConfig) -> Path | None:
    """The folder the metadata dump came from (params or catalog), when it is a local file
    (its relative image links point into it); None for http(s) metadata, whose links are
    http(s) too."""
    meta = [f for f in resolve(ds) if f.role == "meta"] if ds.metadata else []
    path = local_path(meta[0].url) if meta else None
    return path.parent.resolve() if path is not None else None


def encode(items: pd.DataFrame, cfg: ImageFeatureConfig, root: Path | None):
    urls = [u if isinstance(u, str) and u else None for u in items["image_url"]]
    paths, failures = fetch_images(
        urls, artifacts.IMAGE_CACHE, base_dir=Path("."), dataset_root=root, timeout=cfg.timeout,
        max_bytes=int(cfg.max_image_mb * MB), allow_private_hosts=cfg.allow_private_hosts,
        allow_files_outside=cfg.allow_files_outside, workers=cfg.workers)
    model, preprocess, clip_info = load_clip(cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed)
    matrix, info = encode_images(paths, model, preprocess, batch_size=cfg.batch_size, device=cfg.device)
    return matrix, clip_info | info | {"n_with_url": sum(u is not None for u in urls),
                                       "n_fetched": sum(p is not None for p in paths),
                                       "fetch_failures": failures}


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    if ds.source == "mmrec":
        matrix, info = precomputed_features(ds.raw_dir, "image", len(items))
    else:
        matrix, info = encode(items, cfg, dataset_root(ds))
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    run_stage(main, "image_features")
