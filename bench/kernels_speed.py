"""What the reproducible defaults cost: each computing stage of the bundled sample timed
under several settings in one run, turn by turn (issue 16).

    python bench/kernels_speed.py                       # portable, intel and native, float32
    python bench/kernels_speed.py --rounds 2 --bf16     # and bfloat16 encoders (native)
    python bench/kernels_speed.py --kernels portable intel

Copies this working tree to a temporary folder, runs `dvc repro` there once (the stages'
inputs), then for each round runs text_features, image_features, train and evaluate alone
(`python pipeline/<stage>.py`) under each setting: `compute.kernels` portable, intel or native,
the encoders' `precision` float32 (or bfloat16 with --bf16). Prints seconds per stage and
setting (median over rounds), each setting's total against portable float32 (the
defaults), the machine and the commit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, stage_env
from common import commit as bench_commit
from pipeline_speed import cpu_model

STAGES = ("text_features", "image_features", "train", "evaluate")


def run(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        env=stage_env(cwd),
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def set_params(repo: Path, kernels: str, precision: str) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["compute"]["kernels"] = kernels
    for encoder in ("text", "image"):
        params["features"][encoder]["precision"] = precision
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="rounds of every setting (median reported)")
    p.add_argument("--bf16", action="store_true", help="also time native kernels with bfloat16 encoders")
    p.add_argument(
        "--kernels",
        nargs="+",
        default=["portable", "intel", "native"],
        choices=["portable", "intel", "native"],
        help="the compute.kernels values to time (float32)",
    )
    args = p.parse_args()
    settings = [(k, "float32") for k in args.kernels] + ([("native", "bfloat16")] if args.bf16 else [])
    print(f"device: {cpu_model()}, {os.cpu_count()} cores; commit {bench_commit()}; {args.rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="sea-kernels-bench-") as tmp:
        repo = Path(tmp) / "repo"
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for f in files:
            if (ROOT / f).is_file():
                (repo / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, repo / f)
        run(["git", "init", "-q"], repo)
        run([sys.executable, "-m", "dvc", "repro", "--no-commit"], repo)
        times: dict[tuple[str, str], dict[str, list[float]]] = {s: {st: [] for st in STAGES} for s in settings}
        for _ in range(args.rounds):
            for setting in settings:
                set_params(repo, *setting)
                for stage in STAGES:
                    times[setting][stage].append(run([sys.executable, f"pipeline/{stage}.py"], repo))
    base = None
    for setting in settings:
        med = {st: statistics.median(v) for st, v in times[setting].items()}
        total = sum(med.values())
        base = base or total
        print(
            f"kernels {setting[0]:8s} encoders {setting[1]:8s}: "
            + ", ".join(f"{st} {t:.1f} s" for st, t in med.items())
            + f"; total {total:.1f} s ({base / total:.2f}x the defaults' speed)"
        )


if __name__ == "__main__":
    main()
