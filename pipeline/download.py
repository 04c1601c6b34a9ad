"""Stage download: fetch the review and metadata dumps named in params [dataset] into
data/raw/<dataset>/, verifying each sha256 (or, with ``source: mmrec``, copy the MMRec
folder's files there). The folder appears whole or not at all."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from sea.config import DatasetConfig, load_params
from sea.data.mmrec import FEATURE_FILES, inter_file
from sea.io import DataError, FetchError, atomic_dir, fetch, sha256_file


def fetch_dumps(cfg: DatasetConfig, dest: Path) -> dict:
    sources = {}
    for kind, url, sha in (("reviews", cfg.reviews_url, cfg.reviews_sha256), ("meta", cfg.meta_url, cfg.meta_sha256)):
        if not url:
            continue
        if not sha:
            print(f"warning: no dataset.{kind}_sha256 in params.yaml: {url} is not verified", file=sys.stderr)
        path = fetch(url, dest / cfg.local_name(url), sha)
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
    with atomic_dir(cfg.raw_dir) as tmp:
        sources = copy_mmrec(cfg, tmp) if cfg.source == "mmrec" else fetch_dumps(cfg, tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"source": cfg.source} | sources, indent=2) + "\n")
    print(f"-> {cfg.raw_dir}")


if __name__ == "__main__":
    try:
        main()
    except (FetchError, DataError) as e:
        sys.exit(f"download failed: {e}")
