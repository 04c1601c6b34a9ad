"""Run SEA's ablations as queued DVC experiments and write a comparison table.

    python scripts/ablations.py                        # the 8 variants, params.yaml's seeds
    python scripts/ablations.py --seeds 1 2 3          # each variant over 3 seeds (mean ± std)
    python scripts/ablations.py -S train.max_epochs=5  # extra overrides for every variant
    python scripts/ablations.py --collect-only         # rebuild the table from finished runs

Each variant is `dvc exp run --queue -n abl-<variant> -S ...` on top of the committed
params; `dvc exp run --run-all` then runs them one after another (only train and evaluate
re-run: the data and feature stages come from the DVC cache). The table goes to
reports/ablations.md and reports/ablations.json. Needs a git identity and a commit to
queue experiments from (git add new files first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_club": ["loss.club_weight=0"],
    "no_solosim": ["loss.solosim_weight=0"],
    "no_club_no_solosim": ["loss.club_weight=0", "loss.solosim_weight=0"],
    "l2_distance": ["loss.distance=l2"],
    "reference_pairing": ["club.pairing=reference"],
    "text_only": ["model.modalities=[text]"],
    "image_only": ["model.modalities=[image]"],
}
PREFIX = "abl-"
COLUMNS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    print("$ dvc " + " ".join(args), flush=True)
    return subprocess.run(["dvc", *args], check=check, text=True)


def queue_and_run(seeds: list[int] | None, extra: list[str]) -> None:
    names = [PREFIX + v for v in VARIANTS]
    dvc("exp", "remove", *names, check=False)  # earlier runs of the same names
    for variant, sets in VARIANTS.items():
        sets = sets + ([f"train.seeds=[{','.join(map(str, seeds))}]"] if seeds else []) + extra
        dvc("exp", "run", "--queue", "-n", PREFIX + variant, *[a for s in sets for a in ("-S", s)])
    dvc("exp", "run", "--run-all")


def collect() -> dict[str, dict]:
    """Metrics of the finished abl-* experiments of the current commit, read from git."""
    out = {}
    for variant in VARIANTS:
        name = PREFIX + variant
        proc = subprocess.run(["git", "show", f"refs/exps/{_exp_ref(name)}:reports/metrics_detail.json"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            out[variant] = json.loads(proc.stdout)
        else:
            print(f"warning: no finished experiment {name}", file=sys.stderr)
    return out


def _exp_ref(name: str) -> str:
    """The ref path of experiment ``name`` on the current commit: <sha[:2]>/<sha[2:]>/<name>."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    return f"{head[:2]}/{head[2:]}/{name}"


def cell(metrics: dict, split: str, key: str) -> str:
    mean = metrics["mean"][split][key]
    std = (metrics["std"] if len(metrics["seeds"]) > 1 else {}).get(split, {}).get(key)
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def table(results: dict[str, dict]) -> str:
    header = ["variant", "overrides"] + [f"valid {c}" for c in COLUMNS] + [f"test {c}" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, m in results.items():
        cells = [variant, ", ".join(f"`{s}`" for s in VARIANTS[variant]) or "(params.yaml)"]
        cells += [cell(m, "valid", c) for c in COLUMNS] + [cell(m, "test", c) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    pop = next(iter(results.values()))["most_popular"]
    lines.append("| most popular | | " + " | ".join(f"{pop[s][c]:.4f}" for s in ("valid", "test") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", help="train each variant with these seeds")
    parser.add_argument("-S", "--set", dest="extra", action="append", default=[], help="extra param override")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table")
    parser.add_argument("--out", type=Path, default=Path("reports/ablations.md"))
    args = parser.parse_args()
    if not args.collect_only:
        queue_and_run(args.seeds, args.extra)
    results = collect()
    if not results:
        sys.exit("no finished ablation experiments to report")
    seeds = {len(m.get("seeds", {})) for m in results.values()}
    text = "\n".join([
        "# SEA ablations",
        "",
        f"Full-ranking metrics at each run's best validation epoch; mean ± std over seeds where "
        f"several were run (seeds per variant: {', '.join(map(str, sorted(seeds)))}). Extra overrides for every variant: "
        f"{', '.join(f'`{s}`' for s in args.extra) or 'none'}. Generated by `python scripts/ablations.py`.",
        "",
        table(results),
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
