"""Run SEA's ablations as queued DVC experiments and write a comparison table.

    python scripts/ablations.py                        # the 8 variants, params.yaml's seeds
    python scripts/ablations.py --seeds 1 2 3          # each variant over 3 seeds (mean ± std)
    python scripts/ablations.py -S train.max_epochs=5  # extra overrides for every variant
    python scripts/ablations.py --collect-only         # rebuild the table from finished runs

Each variant is `dvc exp run --queue -n abl-<variant> -S model.name=sea -S ...` on top of
the committed params; `dvc exp run --run-all` then runs them one after another (only train
and evaluate re-run: the data and feature stages come from the DVC cache). Each finished
experiment's reports/metrics.json (the mean over seeds) and reports/metrics_detail.json
(std over seeds, most popular) are read from its experiment commit. The table goes to
reports/ablations.md and reports/ablations.json. Needs a git identity and a commit to
queue experiments from (git add new files first). The runner is sea/experiments.py, shared
with scripts/compare.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's sea/, also without an install

from sea import experiments  # noqa: E402
from sea.cli import USER_ERRORS, run_main  # noqa: E402
from sea.errors import DataError  # noqa: E402
from sea.files import write_json, write_text  # noqa: E402

#: every variant trains SEA; variant -> its overrides on top of that
MODEL = ["model.name=sea"]
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
SPLITS = ("valid", "test")


def experiment_overrides(seeds: list[int] | None, extra: list[str]) -> dict[str, list[str]]:
    """Experiment name -> every override it is queued with."""
    seeds_override = [f"train.seeds=[{','.join(map(str, seeds))}]"] if seeds else []
    return {PREFIX + v: [*MODEL, *sets, *seeds_override, *extra] for v, sets in VARIANTS.items()}


def read_json(rev: str, path: str, name: str) -> dict:
    try:
        return json.loads(experiments.show_file(rev, path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} of experiment {name} ({rev[:7]}): not valid JSON: {e}") from None


def collect(commits: dict[str, str] | None = None) -> dict[str, dict]:
    """Per variant: metrics.json ({split: {metric: mean over seeds}}) plus ``std`` (over
    seeds), ``most_popular`` and ``seeds`` from metrics_detail.json. ``commits``: name ->
    sha from the run (default: the experiments on HEAD)."""
    commits = commits or experiments.finished([PREFIX + v for v in VARIANTS])
    out = {}
    for variant in VARIANTS:
        name = PREFIX + variant
        metrics = read_json(commits[name], "reports/metrics.json", name)
        detail = read_json(commits[name], "reports/metrics_detail.json", name)
        missing = [f"{s}/{c}" for s in SPLITS for c in COLUMNS if c not in metrics.get(s, {})]
        if missing:
            raise DataError(f"reports/metrics.json of experiment {name} ({commits[name][:7]}) lacks {missing}")
        out[variant] = {s: metrics[s] for s in SPLITS} | {
            "std": detail.get("std", {}),
            "most_popular": detail.get("most_popular", {}),
            "seeds": sorted(int(s) for s in detail.get("seeds", {})),
            "overrides": VARIANTS[variant],
        }
    return out


def cell(result: dict, split: str, key: str) -> str:
    mean = result[split][key]
    std = result["std"].get(split, {}).get(key) if len(result["seeds"]) > 1 else None
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def table(results: dict[str, dict]) -> str:
    header = ["variant", "overrides"] + [f"{s} {c}" for s in SPLITS for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, r in results.items():
        cells = [variant, ", ".join(f"`{s}`" for s in r["overrides"]) or "(params.yaml)"]
        cells += [cell(r, s, c) for s in SPLITS for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    pop = next(iter(results.values()))["most_popular"]
    if pop:
        lines.append("| most popular | | " + " | ".join(f"{pop[s][c]:.4f}" for s in SPLITS for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", help="train each variant with these seeds")
    parser.add_argument(
        "-S",
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra param override for every variant (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at a time (default 1)")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table")
    parser.add_argument("--out", type=Path, default=Path("reports/ablations.md"))
    args = parser.parse_args(argv)
    commits = (
        None
        if args.collect_only
        else experiments.run_variants(experiment_overrides(args.seeds, args.extra), jobs=args.jobs)
    )
    results = collect(commits)
    seeds = sorted({len(r["seeds"]) for r in results.values()})
    command = shlex.join(["python", "scripts/ablations.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join(
        [
            "# SEA ablations",
            "",
            f"Full-ranking metrics at each run's best validation epoch; mean ± std over seeds where "
            f"several were run (seeds per variant: {', '.join(map(str, seeds))}). Every variant trains "
            f"`model.name=sea`. Extra overrides for every variant: "
            f"{', '.join(f'`{s}`' for s in args.extra) or 'none'}. Generated by `{command}`.",
            "",
            table(results),
            "",
        ]
    )
    write_text(args.out, text)
    write_json(args.out.with_suffix(".json"), results)
    print(text)


if __name__ == "__main__":
    run_main(main, "ablations", (*USER_ERRORS, experiments.ExperimentError))
