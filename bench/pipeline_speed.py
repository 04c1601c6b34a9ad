"""Wall time of the bundled sample's whole pipeline, as issue 9 measures it (goal: <= 75 s
on 2 CPU cores), and of each stage alone.

    python bench/pipeline_speed.py                 # `dvc repro -f` once, then every stage alone
    python bench/pipeline_speed.py --runs 5        # five forced runs: each, and their median
    python bench/pipeline_speed.py --no-stages

Runs in this checkout: `dvc repro -f` rewrites every output (the same bytes, on the machine
the committed dvc.lock was made on). Each stage alone is `python pipeline/<stage>.py` in the
DAG's order, after the forced runs, so its inputs exist. Prints the seconds, the machine
(CPU model, cores), the torch thread count and the commit. Timings on a shared machine
drift by about 10 %, so several runs say more than one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import commit as bench_commit

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(cmd: list[str]) -> float:
    """Seconds ``cmd`` took in the repo root; exits with its output if it fails."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1, help="forced runs of the whole pipeline")
    p.add_argument("--no-stages", action="store_true", help="skip timing each stage alone")
    args = p.parse_args()
    import torch

    commit = bench_commit()
    print(
        f"device: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
        f"commit {commit or '?'}"
    )
    runs = [timed([sys.executable, "-m", "dvc", "repro", "-f"]) for _ in range(args.runs)]
    print(
        "dvc repro -f: "
        + ", ".join(f"{t:.1f} s" for t in runs)
        + (f"; median {statistics.median(runs):.1f} s" if len(runs) > 1 else "")
    )
    if args.no_stages:
        return
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = stage["cmd"].split()  # python pipeline/<stage>.py, with this interpreter
        print(f"  {name}: {timed([sys.executable, *cmd[1:]]):.1f} s alone")


if __name__ == "__main__":
    main()
