"""Stage image_features: fetch item images (cached and resumable, concurrent per host,
retried, capped in size and time, stopping early when offline; see sea.features.fetch)
and encode them with open_clip while they arrive (params features.image); missing, refused or undecodable
images get the mean vector. The image URLs come from the downloaded metadata, so they
are not trusted: only public http(s) hosts, and local files only inside the folder the
metadata came from (see sea.features.fetch.ImageFetcher; params allow_private_hosts and
allow_files_outside opt out). With ``pretrained: none`` the encoder is randomly
initialised and says so. With ``dataset.source: mmrec`` the MMRec folder's
image_feat.npy is taken instead.

``python pipeline/image_features.py --fetch-only`` fills the image cache
(``$SEA_IMAGE_CACHE``, default data/cache/images) and encodes nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import DatasetConfig, ImageFeatureConfig, load_params
from sea.data.mmrec import precomputed_features
from sea.features.fetch import CACHE_ENV, FetchPolicy, ImageFetcher
from sea.features.image import encode_images, load_clip
from sea.io import MB, FetchError, local_path


def dataset_root(meta_url: str | None) -> Path | None:
    """The folder the metadata dump came from, when it is a local file (its relative image
    links point into it); None for http(s) metadata, whose links are http(s) too."""
    path = local_path(meta_url) if meta_url else None
    return path.parent.resolve() if path is not None else None


def image_cache() -> Path:
    """The image cache folder: ``$SEA_IMAGE_CACHE``, else data/cache/images (never a DVC
    output: it only holds verified copies of what the URLs serve, reusable across runs
    and machines)."""
    return Path(os.environ.get(CACHE_ENV) or artifacts.IMAGE_CACHE)


def fetch_policy(cfg: ImageFeatureConfig) -> FetchPolicy:
    return FetchPolicy(timeout=cfg.timeout, max_bytes=int(cfg.max_image_mb * MB),
                       allow_private_hosts=cfg.allow_private_hosts, workers=cfg.workers, per_host=cfg.per_host,
                       retries=cfg.retries, backoff=cfg.backoff, max_wait=cfg.max_wait,
                       offline_after=cfg.offline_after)


def check_coverage(fetcher: ImageFetcher, cfg: ImageFeatureConfig) -> None:
    """Stop with one line when fewer items got an image file than ``min_coverage`` asks."""
    got, wanted = sum(p is not None for p in fetcher.result), fetcher.n_with_url
    if wanted and got < cfg.min_coverage * wanted:
        raise FetchError(f"only {got} of {wanted} item images could be fetched ({got / wanted:.1%}), below "
                         f"features.image.min_coverage {cfg.min_coverage:g}; {fetcher.report()}")


def encode(items: pd.DataFrame, cfg: ImageFeatureConfig, root: Path | None):
    """Fetch in the background while the encoder consumes the images in item order."""
    urls = [u if isinstance(u, str) and u else None for u in items["image_url"]]
    with ImageFetcher(urls, image_cache(), fetch_policy(cfg), base_dir=Path("."), dataset_root=root,
                      allow_files_outside=cfg.allow_files_outside) as fetcher:
        model, preprocess, clip_info = load_clip(cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed)
        if cfg.min_coverage > 0:
            fetcher.wait()  # fail before encoding anything
            check_coverage(fetcher, cfg)
        matrix, info = encode_images(fetcher, model, preprocess, batch_size=cfg.batch_size, device=cfg.device)
    print(fetcher.report())
    fetcher.warn()
    return matrix, clip_info | info | fetcher.summary()


def fetch_only() -> None:
    """``--fetch-only``: fill the image cache for the current item table, encode nothing
    (e.g. on a networked machine, before moving the cache to an offline one)."""
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    urls = [u if isinstance(u, str) and u else None for u in items["image_url"]]
    with ImageFetcher(urls, image_cache(), fetch_policy(cfg), dataset_root=dataset_root(ds.meta_url),
                      allow_files_outside=cfg.allow_files_outside) as fetcher:
        fetcher.wait()
    print(fetcher.report())
    print(f"-> {image_cache()}")
    check_coverage(fetcher, cfg)


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    if ds.source == "mmrec":
        matrix, info = precomputed_features(ds.raw_dir, "image", len(items))
    else:
        matrix, info = encode(items, cfg, dataset_root(ds.meta_url))
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    run_stage(fetch_only if sys.argv[1:] == ["--fetch-only"] else main, "image_features")
