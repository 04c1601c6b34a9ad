"""Time the graph stage (parse, dedupe, k-core, split, metadata) on dumps of a real size.

    python bench/make_dumps.py                 # once: Clothing-size dumps in bench/data/clothing/
    python bench/graph_speed.py                # runs pipeline/graph.py on them, prints time and peak memory

The stage runs as in the pipeline (``python pipeline/graph.py`` in a scratch folder whose
``data/raw/clothing/`` links to the dumps), so the figures include start-up and writing the
tables. Prints wall seconds, peak resident memory of the stage process, the device (CPU
count) and the commit; record them in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import commit as bench_commit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dumps", type=Path, default=ROOT / "bench" / "data" / "clothing")
    args = p.parse_args()
    reviews, meta = args.dumps / "reviews_Clothing_5.json.gz", args.dumps / "meta_Clothing.json.gz"
    if not (reviews.is_file() and meta.is_file()):
        sys.exit(f"{args.dumps}: no dumps; run python bench/make_dumps.py first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # not "clothing": that is a catalog entry (sea/data/catalog.yaml), whose files have other names
    params["dataset"] |= {
        "name": "bench_clothing",
        "reviews_url": reviews.name,
        "meta_url": meta.name,
        "reviews_sha256": None,
        "meta_sha256": None,
    }
    commit = bench_commit()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "data" / "raw" / "bench_clothing"
        raw.mkdir(parents=True)
        for f in (reviews, meta):
            (raw / f.name).symlink_to(f.resolve())
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "pipeline" / "graph.py")],
            cwd=tmp,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"graph stage failed:\n{proc.stderr[-2000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(proc.stdout.strip().splitlines()[-1])
    print(
        f"graph stage: {seconds:.1f} s, peak RSS {peak_mb:,.0f} MB; "
        f"{os.cpu_count()} CPUs; commit {commit}; "
        f"reviews {reviews.stat().st_size:,} B, meta {meta.stat().st_size:,} B (gzip)"
    )


if __name__ == "__main__":
    main()
