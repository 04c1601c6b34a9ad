"""Stage image_features: fetch item images (cached, concurrent, capped in size and time)
and encode them with open_clip (params features.image); missing, refused or undecodable
images get the mean vector. The image URLs come from the downloaded metadata, so they
are not trusted: only public http(s) hosts, and local files only inside the folder the
metadata came from (see sea.features.image.fetch_images; params allow_private_hosts and
allow_files_outside opt out). With ``pretrained: none`` the encoder is randomly
initialised and says so. With ``features.image.source: amazon_cnn`` the 4096-d CNN vectors
distributed with the Amazon 2014 dumps are read from ``cnn_url`` instead (streamed, only the
dataset's items kept; sea.features.cnn), as in MMRec and SEA's paper. With
``dataset.source: mmrec`` the MMRec folder's image_feat.npy is taken instead.
``processes: N`` shards the CLIP encoding over N ranks (sea.distributed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from sea import artifacts
from sea.cli import run_stage
from sea.config import ConfigError, DatasetConfig, ImageFeatureConfig, load_params
from sea.data.catalog import image_features_url, resolve
from sea.data.mmrec import precomputed_features
from sea.distributed import threads_per_rank
from sea.features.cnn import obtain_cnn_file, read_cnn_features
from sea.features.image import encode_images, encode_images_sharded, fetch_images, load_clip
from sea.io import MB, ChecksumError, FetchTimeoutError, TooLargeError, local_path


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
    if cfg.processes == 1:
        model, preprocess, clip_info = load_clip(cfg.model, cfg.pretrained, device=cfg.device, seed=cfg.seed)
        matrix, info = encode_images(paths, model, preprocess, batch_size=cfg.batch_size, device=cfg.device,
                                     workers=cfg.workers)
        info = clip_info | info
    else:
        matrix, info = encode_images_sharded(
            paths, cfg.model, cfg.pretrained, processes=cfg.processes, seed=cfg.seed, batch_size=cfg.batch_size,
            device=cfg.device, workers=cfg.workers, threads=threads_per_rank(cfg.processes))
    return matrix, info | {"n_with_url": sum(u is not None for u in urls),
                                       "n_fetched": sum(p is not None for p in paths),
                                       "fetch_failures": failures}


CNN_NOTE = ("image features are the 4096-d CNN vectors distributed with the Amazon 2014 dumps "
            "(image_features_<Category>.b), the image features of MMRec and SEA's paper")


def cnn_url(ds: DatasetConfig, cfg: ImageFeatureConfig) -> str:
    """``features.image.cnn_url``, or else the catalog's CNN feature file of ``dataset.name``."""
    url = cfg.cnn_url or image_features_url(ds)
    if not url:
        raise ConfigError(f"params.yaml [features.image]: source: amazon_cnn needs cnn_url: dataset {ds.name!r} has "
                          f"no CNN image feature file in the catalog (only the 2014 release has them)")
    return url


def read_cnn(items: pd.DataFrame, cfg: ImageFeatureConfig, url: str):
    """The dumps' CNN vectors of the items (features.image.source: amazon_cnn) from ``url``."""
    if not cfg.cnn_sha256:
        print(f"warning: no features.image.cnn_sha256 in params.yaml: {url} is not verified (pin it from "
              f"data/features/image.json)", file=sys.stderr)
    limits = {"max_bytes": int(cfg.cnn_max_mb * MB), "total_timeout": cfg.cnn_timeout}
    try:
        path, downloaded = obtain_cnn_file(url, cfg.cnn_sha256, **limits)
    except TooLargeError as e:
        raise TooLargeError(f"{e} (features.image.cnn_max_mb: {cfg.cnn_max_mb:g})") from None
    except FetchTimeoutError as e:
        raise FetchTimeoutError(f"{e} (features.image.cnn_timeout: {cfg.cnn_timeout:g})") from None
    remote = local_path(url) is None  # record an http(s) URL; of a local file only its name
    name = url if remote else path.name
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
            raise ConfigError("params.yaml [features.image]: source: amazon_cnn reads Amazon dumps' items; "
                              "with dataset.source: mmrec the folder's image_feat.npy is used (set source: clip)")
        matrix, info = precomputed_features(ds.raw_dir, "image", len(items))
    elif cfg.source == "amazon_cnn":
        matrix, info = read_cnn(items, cfg, cnn_url(ds, cfg))
    else:
        matrix, info = encode(items, cfg, dataset_root(ds))
    artifacts.write_features("image", matrix, info)
    print(f"image features {matrix.shape}: {info}")


if __name__ == "__main__":
    run_stage(main, "image_features")
