"""Stage download: fetch the review and metadata dumps named in params [dataset] into
data/raw/<dataset>/, verifying each sha256 (or, with ``source: mmrec``, copy the MMRec
folder's files there). Each dump is capped in size (``max_download_mb``) and in total time
(``download_timeout``), retried ``download_retries`` times; an http(s) download that breaks
off (or a killed run) is resumed from where it stopped (HTTP Range, validated with the
server's ETag or Last-Modified). The folder appears whole or not at all, and nothing
outside it and data/cache/downloads/ is ever replaced or deleted."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from sea.cli import run_stage
from sea.config import ConfigError, DatasetConfig, load_params
from sea.data.mmrec import FEATURE_FILES, inter_file
from sea.io import MB, DataError, FetchTimeoutError, TooLargeError, atomic_dir, fetch, is_plain_name, sha256_file

RAW = Path("data/raw")
#: Partial http(s) downloads (``<sha1 of URL>.part`` and ``.json``), resumed by the next
#: run; outside data/raw so DVC never caches one, removed once their dump is complete.
PARTIAL = Path("data/cache/downloads")
SOURCE_FILE = "SOURCE.json"


def raw_folder(cfg: DatasetConfig) -> Path:
    """data/raw/<name>, once ``name`` is checked to be one plain folder name: ``.`` or ``..``
    would make the stage replace data/raw itself (every other dataset) or data/."""
    if not is_plain_name(cfg.name):
        raise ConfigError(f"params.yaml [dataset]: name must be one plain folder name "
                          f"(not empty, '.', '..', or with '/', '\\' or NUL), got {cfg.name!r}")
    return RAW / cfg.name


def dump_files(cfg: DatasetConfig) -> list[tuple[str, str, str | None, str]]:
    """``(kind, url, sha256, local file name)`` per dump; refuses names that are not plain
    file names or that two URLs share (the second would overwrite the first)."""
    dumps = [(kind, url, sha) for kind, url, sha in (("reviews", cfg.reviews_url, cfg.reviews_sha256),
                                                      ("meta", cfg.meta_url, cfg.meta_sha256)) if url]
    named = []
    for kind, url, sha in dumps:
        name = cfg.local_name(url)
        if not is_plain_name(name) or name == SOURCE_FILE:
            raise ConfigError(f"params.yaml [dataset]: {kind}_url {url!r} does not end in a usable file name "
                              f"(got {name!r}); it is saved under data/raw/<name>/ by that name")
        named.append((kind, url, sha, name))
    if len(named) == 2 and named[0][3] == named[1][3]:
        raise ConfigError(f"params.yaml [dataset]: reviews_url and meta_url both end in the file name "
                          f"{named[0][3]!r}; one would overwrite the other in data/raw/{cfg.name}/ "
                          "(serve them under different names)")
    return named


def fetch_dumps(cfg: DatasetConfig, dest: Path) -> dict:
    sources = {}
    for kind, url, sha, name in dump_files(cfg):
        if not sha:
            print(f"warning: no dataset.{kind}_sha256 in params.yaml: {url} is not verified", file=sys.stderr)
        try:
            path = fetch(url, dest / name, sha, max_bytes=int(cfg.max_download_mb * MB),
                         total_timeout=cfg.download_timeout, retries=cfg.download_retries + 1,
                         partial_dir=PARTIAL)
        except TooLargeError as e:
            raise TooLargeError(f"{e} (dataset.max_download_mb: {cfg.max_download_mb:g})") from None
        except FetchTimeoutError as e:
            raise FetchTimeoutError(f"{e} (dataset.download_timeout: {cfg.download_timeout:g})") from None
        sources[kind] = {"url": url, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        print(f"{kind}: {url} ({path.stat().st_size:,} bytes)")
    return sources


def copy_mmrec(cfg: DatasetConfig, dest: Path) -> dict:
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset.path is not a folder (source: mmrec)")
    files = [inter_file(folder)] + [folder / f for f in FEATURE_FILES.values()]
    files += sorted(folder.glob("*_id_mapping.csv"))
    sources = {}
    for f in files:
        if not f.exists():
            raise DataError(f"{f}: missing from the MMRec folder")
        shutil.copyfile(f, dest / f.name)
        sources[f.name] = {"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size}
        print(f"mmrec: {f} ({f.stat().st_size:,} bytes)")
    return sources


def main() -> None:
    cfg = DatasetConfig.from_dict(load_params()["dataset"], "dataset")
    target = raw_folder(cfg)
    if cfg.source != "mmrec":
        dump_files(cfg)  # refuse bad file names before touching anything
    with atomic_dir(target) as tmp:
        sources = copy_mmrec(cfg, tmp) if cfg.source == "mmrec" else fetch_dumps(cfg, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"source": cfg.source} | sources, indent=2) + "\n")
    print(f"-> {target}")


if __name__ == "__main__":
    run_stage(main, "download")
