"""Stage download: fetch the review and metadata dumps named in params [dataset] into
data/raw/<dataset>/, verifying each sha256. The folder appears whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from sea.config import DatasetConfig, load_params
from sea.io import FetchError, fetch, sha256_file


def main() -> None:
    cfg = DatasetConfig.from_dict(load_params()["dataset"], "dataset")
    dest = cfg.raw_dir
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        sources = {}
        for kind, url, sha in (("reviews", cfg.reviews_url, cfg.reviews_sha256),
                               ("meta", cfg.meta_url, cfg.meta_sha256)):
            if not url:
                continue
            if not sha:
                print(f"warning: no dataset.{kind}_sha256 in params.yaml: {url} is not verified", file=sys.stderr)
            path = fetch(url, tmp / cfg.local_name(url), sha)
            sources[kind] = {"url": url, "file": path.name, "sha256": sha256_file(path),
                             "bytes": path.stat().st_size}
            print(f"{kind}: {url} -> {dest / path.name} ({path.stat().st_size:,} bytes)")
        (tmp / "SOURCE.json").write_text(json.dumps(sources, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


if __name__ == "__main__":
    try:
        main()
    except FetchError as e:
        sys.exit(f"download failed: {e}")
