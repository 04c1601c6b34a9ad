"""Stage image_features: fetch the images of data/processed/items.parquet and encode
them with open_clip, or read the 2014 CNN vectors or an MMRec folder's image_feat.npy
(params [features.image]), into data/features/image.npy and image.json. See
docs/stages.md and docs/features.md; image URLs are untrusted input (docs/bad-input.md).

``python pipeline/image_features.py --fetch-only`` fills the image cache
(``$SEA_IMAGE_CACHE``, default data/cache/images) and encodes nothing."""

from __future__ import annotations

from sea.runtime import describe, start_stage

start_stage("image_features")  # first, before torch computes anything: params.yaml [compute]

import os
import sys
from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import load_params
from sea.data.catalog import DatasetConfig, image_features_url, resolve
from sea.data.mmrec import precomputed_features
from sea.errors import ChecksumError, ConfigError, FetchError, FetchTimeoutError, TooLargeError, shown
from sea.features import empty_features
from sea.features.cnn import obtain_cnn_file, read_cnn_features
from sea.features.image import ImageFeatureConfig, encode_images, encode_images_sharded, load_clip
from sea.files import MB
from sea.net.images import CACHE_ENV, FetchPolicy, ImageFetcher
from sea.net.urls import local_path


def dataset_root(ds: DatasetConfig) -> Path | None:
    """The folder the metadata dump came from (params or catalog), when it is a local file
    (its relative image links point into it); None for http(s) metadata, whose links are
    http(s) too."""
    meta = [f for f in resolve(ds) if f.role == "meta"] if ds.metadata else []
    path = local_path(meta[0].url) if meta else None
    return path.parent.resolve() if path is not None else None


def image_cache() -> Path:
    """The image cache folder: ``$SEA_IMAGE_CACHE``, else data/cache/images (never a DVC
    output: it only holds verified copies of what the URLs serve, reusable across runs
    and machines)."""
    return Path(os.environ.get(CACHE_ENV) or artifacts.IMAGE_CACHE)


def fetch_policy(cfg: ImageFeatureConfig) -> FetchPolicy:
    return FetchPolicy(
        timeout=cfg.timeout,
        max_bytes=int(cfg.max_image_mb * MB),
        allow_private_hosts=cfg.allow_private_hosts,
        workers=cfg.workers,
        per_host=cfg.per_host,
        retries=cfg.retries,
        backoff=cfg.backoff,
        max_wait=cfg.max_wait,
        offline_after=cfg.offline_after,
    )


def check_coverage(fetcher: ImageFetcher, cfg: ImageFeatureConfig) -> None:
    """Stop with one line when fewer items got an image file than ``min_coverage`` asks."""
    got, wanted = fetcher.n_fetched, fetcher.n_with_url
    if wanted and got < cfg.min_coverage * wanted:
        raise FetchError(
            f"only {got} of {wanted} item images could be fetched ({got / wanted:.1%}), below "
            f"features.image.min_coverage {cfg.min_coverage:g}; {fetcher.report()}"
        )


def image_urls(items: pd.DataFrame) -> list[str | None]:
    """Each item's image URL, None where it has none."""
    return [u if isinstance(u, str) and u else None for u in items["image_url"]]


def image_fetcher(urls: list[str | None], ds: DatasetConfig, cfg: ImageFeatureConfig) -> ImageFetcher:
    """The fetcher of the stage (and of ``--fetch-only``): the cache, the policy of
    ``features.image`` and the dataset's own folder for local image files."""
    return ImageFetcher(
        urls,
        image_cache(),
        fetch_policy(cfg),
        dataset_root=dataset_root(ds),
        allow_files_outside=cfg.allow_files_outside,
    )


def encode(urls: list[str | None], ds: DatasetConfig, cfg: ImageFeatureConfig):
    """Fetch in the background while the encoder consumes the images in item order."""
    with image_fetcher(urls, ds, cfg) as fetcher:
        if cfg.min_coverage > 0:
            fetcher.wait()  # fail before encoding anything
            check_coverage(fetcher, cfg)
        if cfg.processes == 1:
            model, preprocess, clip_info = load_clip(
                cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed, precision=cfg.precision
            )
            matrix, info = encode_images(
                fetcher, model, preprocess, batch_size=cfg.batch_size, device=cfg.device, workers=cfg.workers
            )
            info = clip_info | info
        else:  # the ranks split the batches: encode_images_sharded waits for every file first
            matrix, info = encode_images_sharded(
                fetcher,
                cfg.model,
                cfg.pretrained,
                processes=cfg.processes,
                seed=cfg.seed,
                precision=cfg.precision,
                batch_size=cfg.batch_size,
                device=cfg.device,
                workers=cfg.workers,
            )
    print(fetcher.report())
    fetcher.warn()
    return matrix, info | describe() | fetcher.summary()


def fetch_only() -> None:
    """``--fetch-only``: fill the image cache for the current item table, encode nothing
    (e.g. on a networked machine, before moving the cache to an offline one)."""
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    with image_fetcher(image_urls(pd.read_parquet(artifacts.ITEMS)), ds, cfg) as fetcher:
        fetcher.wait()
    print(fetcher.report())
    print(f"-> {image_cache()}")
    check_coverage(fetcher, cfg)


CNN_NOTE = (
    "image features are the 4096-d CNN vectors distributed with the Amazon 2014 dumps "
    "(image_features_<Category>.b), the image features of MMRec and SEA's paper"
)


def cnn_url(ds: DatasetConfig, cfg: ImageFeatureConfig) -> str:
    """``features.image.cnn_url``, or else the catalog's CNN feature file of ``dataset.name``."""
    url = cfg.cnn_url or image_features_url(ds)
    if not url:
        raise ConfigError(
            f"params.yaml [features.image]: source: amazon_cnn needs cnn_url: dataset {shown(ds.name)} has "
            f"no CNN image feature file in the catalog (only the 2014 release has them)"
        )
    return url


def read_cnn(items: pd.DataFrame, cfg: ImageFeatureConfig, url: str):
    """The dumps' CNN vectors of the items (features.image.source: amazon_cnn) from ``url``."""
    if not cfg.cnn_sha256:
        print(
            f"warning: no features.image.cnn_sha256 in params.yaml: {url} is not verified (pin it from "
            f"data/features/image.json)",
            file=sys.stderr,
        )
    limits = {"max_bytes": int(cfg.cnn_max_mb * MB), "total_timeout": cfg.cnn_timeout}
    try:
        path, downloaded = obtain_cnn_file(url, cfg.cnn_sha256, **limits)
    except TooLargeError as e:
        raise TooLargeError(f"{e} (features.image.cnn_max_mb: {cfg.cnn_max_mb:g})") from None
    except FetchTimeoutError as e:
        raise FetchTimeoutError(f"{e} (features.image.cnn_timeout: {cfg.cnn_timeout:g})") from None
    name = url if downloaded else path.name  # record an http(s) URL; of a local file only its name
    asins = items["asin"].tolist()
    try:
        matrix, info = read_cnn_features(path, asins, expected_sha256=cfg.cnn_sha256, name=name)
    except ChecksumError:
        if not downloaded:
            raise
        # the cached download is not the file cnn_sha256 names (it changed): fetch it again
        path, _ = obtain_cnn_file(url, cfg.cnn_sha256, refresh=True, **limits)
        matrix, info = read_cnn_features(path, asins, expected_sha256=cfg.cnn_sha256, name=name)
    return matrix, {"model": "amazon_cnn", "pretrained": "precomputed", "note": CNN_NOTE} | info


def main() -> None:
    params = load_params()
    ds = DatasetConfig.from_dict(params["dataset"], "dataset")
    cfg = ImageFeatureConfig.from_dict(params["features"]["image"], "features.image")
    items = pd.read_parquet(artifacts.ITEMS)
    if ds.source == "mmrec":
        if cfg.source == "amazon_cnn":
            raise ConfigError(
                "params.yaml [features.image]: source: amazon_cnn reads Amazon dumps' items; "
                "with dataset.source: mmrec the folder's image_feat.npy is used (set source: clip)"
            )
        matrix, info = precomputed_features(ds.raw_dir, "image", len(items))
    elif cfg.source == "amazon_cnn":
        matrix, info = read_cnn(items, cfg, cnn_url(ds, cfg))
    elif not any(urls := image_urls(items)):
        matrix, info = empty_features("image", len(items))  # no metadata: a model reading images refuses it
    else:
        matrix, info = encode(urls, ds, cfg)
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    run_stage(fetch_only if sys.argv[1:] == ["--fetch-only"] else main, "image_features")
