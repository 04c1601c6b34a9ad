"""Time the graph stage (parse, dedupe, k-core, split, metadata) on dumps of a real size.

    python bench/make_dumps.py                          # once: Clothing-size dumps in bench/data/clothing/
    python bench/graph_speed.py                         # runs pipeline/graph.py on them
    python bench/make_dumps.py --reviews 3000000 --users 420000 --items 250000 --meta-lines 300000 --out bench/data/r3m
    python bench/graph_speed.py --dumps bench/data/r3m --old-ref a5bc9c7    # and the stage as it was at a5bc9c7
    # issue 21's goal: 67M reviews (about 12 GB of gzip in bench/data, git-ignored; delete after)
    python bench/make_dumps.py --reviews 67000000 --users 9380000 --items 5580000 \
        --meta-lines 20000000 --out bench/data/r67m
    python bench/graph_speed.py --dumps bench/data/r3m bench/data/r67m --old-ref a5bc9c7

The stage runs as in the pipeline (``python pipeline/graph.py`` in a scratch folder whose
``data/raw/<name>/`` links to the dumps), so the figures include start-up and writing the
tables. For each folder of ``--dumps`` (one run each) it prints wall seconds and the peak
resident memory of the stage process, the device (CPU count) and the commit; with
``--old-ref`` it also runs the stage's code of that commit (``pipeline/`` and ``sea/`` from
``git archive``) on the same dumps and params, and prints its figures beside; leave it out
where the old path cannot run (it holds about 400 bytes a review; ``--old-max-gb`` skips
it on larger dumps) and says whether the two wrote the same bytes. ``--batch-mb`` sets
``graph.batch_mb``. Record the figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml
from common import commit as bench_commit

ROOT = Path(__file__).resolve().parents[1]


def run_stage(code: Path, dumps: Path, params: dict) -> tuple[float, float, float, str, dict[str, str]]:
    """Run ``code``/pipeline/graph.py on ``dumps``: (wall seconds, CPU seconds, peak RSS in MB,
    its last line of output, the sha256 of each file it wrote to data/processed/)."""
    files = [dumps / "reviews_Clothing_5.json.gz", dumps / "meta_Clothing.json.gz"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "data" / "raw" / params["dataset"]["name"]
        raw.mkdir(parents=True)
        for f in files:
            (raw / f.name).symlink_to(f.resolve())
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        env = os.environ | {"PYTHONPATH": str(code), "TQDM_DISABLE": "1"}
        start = time.perf_counter()
        with open(Path(tmp) / "out.log", "w+") as log:
            proc = subprocess.Popen(
                [sys.executable, str(code / "pipeline" / "graph.py")],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            log.seek(0)
            out = log.read()
        written = {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((Path(tmp) / "data" / "processed").glob("*"))
            if f.is_file()
        }
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"graph stage ({code}) failed:\n{out[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.strip().splitlines()[-1], written


def old_code(ref: str, into: Path) -> Path:
    """``pipeline/`` and ``sea/`` of commit ``ref``, unpacked into ``into``."""
    archive = subprocess.run(["git", "archive", ref, "pipeline", "sea"], cwd=ROOT, capture_output=True, check=True)
    tar = into / "old.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dumps", type=Path, nargs="+", default=[ROOT / "bench" / "data" / "clothing"])
    p.add_argument("--old-ref", help="also run the graph stage of this commit (where it can still run)")
    p.add_argument(
        "--old-max-gb",
        type=float,
        default=2.0,
        help="run the old path only on dumps whose reviews file is at most this many GB (gzip; default 2: "
        "the 3M-review dump is 0.45 GB, and the old path needs about 400 bytes a review)",
    )
    p.add_argument("--batch-mb", type=int, default=None, help="graph.batch_mb (default: params.yaml's)")
    args = p.parse_args()
    for d in args.dumps:
        if not ((d / "reviews_Clothing_5.json.gz").is_file() and (d / "meta_Clothing.json.gz").is_file()):
            sys.exit(f"{d}: no dumps; run python bench/make_dumps.py first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # not "clothing": that is a catalog entry (sea/data/catalog.yaml), whose files have other names
    params["dataset"] |= {
        "name": "bench_clothing",
        "reviews_url": "reviews_Clothing_5.json.gz",
        "meta_url": "meta_Clothing.json.gz",
        "reviews_sha256": None,
        "meta_sha256": None,
    }
    if args.batch_mb is not None:
        params["graph"]["batch_mb"] = args.batch_mb
    old_params = params | {"graph": {k: v for k, v in params["graph"].items() if k != "batch_mb"}}
    commit = bench_commit()
    with tempfile.TemporaryDirectory() as tmp:
        old = old_code(args.old_ref, Path(tmp)) if args.old_ref else None
        for d in args.dumps:
            size = (d / "reviews_Clothing_5.json.gz").stat().st_size
            seconds, cpu, peak, line, written = run_stage(ROOT, d, params)
            print(line)
            print(
                f"{d.name}: graph stage {seconds:.1f} s ({cpu:.1f} s CPU), peak RSS {peak:,.0f} MB (batch_mb "
                f"{params['graph'].get('batch_mb')}); {os.cpu_count()} CPUs; commit {commit}; reviews {size:,} B gzip"
            )
            if old is not None and size > args.old_max_gb * 1e9:
                print(f"{d.name}: old path ({args.old_ref}) not run: reviews over --old-max-gb {args.old_max_gb}")
            elif old is not None:
                old_seconds, old_cpu, old_peak, _, old_written = run_stage(old, d, old_params)
                differ = sorted(f for f in old_written.keys() | written.keys() if old_written.get(f) != written.get(f))
                print(
                    f"{d.name}: old path ({args.old_ref}) {old_seconds:.1f} s ({old_cpu:.1f} s CPU), "
                    f"peak RSS {old_peak:,.0f} MB: {old_seconds / seconds:.2f}x the time "
                    f"({old_cpu / cpu:.2f}x the CPU), {old_peak / peak:.2f}x the memory; outputs "
                    + (f"DIFFER: {', '.join(differ)}" if differ else f"byte-identical ({len(written)} files)")
                )


if __name__ == "__main__":
    main()
