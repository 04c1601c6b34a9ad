"""Wall time of `scripts/compare.py --jobs N` on two variants, at one or more commits, each
in a fresh clone (issue 16: several training processes on one machine must not
oversubscribe its cores).

    python bench/jobs_speed.py --revs 6ed2587 HEAD           # before and after, 2 jobs
    python bench/jobs_speed.py --revs HEAD --jobs 1 2        # one job at a time vs two

For each commit: clone it to a temporary folder, fill the DVC cache with `dvc repro`
(untimed; the experiments then re-run only train and evaluate), commit, and, in a fresh
copy of that clone for each job count (so no run reuses another's results), time
`python scripts/compare.py --variants A B --seeds 1 --jobs N --baseline A`. Prints the
seconds per commit and job count, the machine and this checkout's commit. Run it on an
otherwise idle machine: any other load changes the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, stage_env
from common import commit as bench_commit
from pipeline_speed import cpu_model


def run(cmd: list[str], cwd: Path) -> float:
    """Seconds ``cmd`` took in ``cwd``; exits with its output if it fails."""
    t = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        env=stage_env(cwd),
    )
    if proc.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} in {cwd} failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        )
    return time.perf_counter() - t


def clone(rev: str, dest: Path) -> Path:
    """A clone of this repository at ``rev`` with a filled DVC cache and a git identity."""
    run(["git", "clone", "-q", str(ROOT), str(dest)], ROOT)
    run(["git", "checkout", "-q", rev], dest)
    run(["git", "config", "user.name", "bench"], dest)
    run(["git", "config", "user.email", "bench@localhost"], dest)
    run([sys.executable, "-m", "dvc", "repro"], dest)
    run(["git", "commit", "-qam", "repro here", "--allow-empty"], dest)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--revs", nargs="+", default=["HEAD"], help="commits to measure (default HEAD)")
    p.add_argument("--jobs", type=int, nargs="+", default=[2], help="--jobs values (default 2)")
    p.add_argument("--variants", nargs=2, default=["lightgcn", "sea"], help="two compare.py variants")
    args = p.parse_args()
    print(
        f"device: {cpu_model()}, {os.cpu_count()} cores; commit {bench_commit()}; "
        f"compare.py --variants {' '.join(args.variants)} --seeds 1"
    )
    for rev in args.revs:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="sea-jobs-bench-") as tmp:
            prepared = clone(sha, Path(tmp) / "repo")
            for jobs in args.jobs:
                # each count in its own copy: DVC's run-cache would restore the first run's results
                repo = Path(tmp) / f"jobs{jobs}"
                shutil.copytree(prepared, repo, symlinks=True)
                seconds = run(
                    [
                        sys.executable,
                        "scripts/compare.py",
                        "--variants",
                        *args.variants,
                        "--seeds",
                        "1",
                        "--baseline",
                        args.variants[0],
                        "--jobs",
                        str(jobs),
                    ],
                    repo,
                )
                print(f"  {rev} ({sha}): --jobs {jobs}: {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
