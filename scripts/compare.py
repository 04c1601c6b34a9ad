"""Train several models on the same data, several seeds each, and compare them.

    python scripts/compare.py                               # all variants, seeds 1 2 3, vs lightgcn
    python scripts/compare.py --variants lightgcn sea --seeds 1 2 3 4 5
    python scripts/compare.py --baseline bprmf -S train.max_epochs=5
    python scripts/compare.py --collect-only                # rebuild the report from finished runs
    python scripts/compare.py --tuned                       # each model at its tuned configuration
    python scripts/compare.py --figures-only                # redraw the figures from committed files

Each variant is a queued DVC experiment `cmp-<variant>` (`dvc exp run --queue -n
cmp-<variant> -S model.name=... -S 'train.seeds=[1,2,3]' ...`) on top of the committed
params; `dvc exp run --run-all` runs them one after another. Only train and evaluate
re-run (data and features come from the DVC cache), in temporary copies of the repo, so
the workspace is untouched and `dvc repro` stays a no-op. The script then reads each
experiment's reports/per_user.parquet from its experiment commit and writes
reports/compare.md and reports/compare.json: per variant and metric the mean ± std over
seeds, and, on the test split, the paired t-test and Wilcoxon test over users of every
variant against the baseline (see sea/compare.py).

With --tuned, a variant named after a model (every model in sea/models/), and the Mirror
Gradient variants, also get the overrides of the configuration scripts/tune.py selected for
that model (reports/tuning/<model>.json), when that report exists; the report says which
variants were tuned (docs/tuning.md).

Beside the report, reports/compare_plots/ gets the figures and their data (sea/compare_plots.py):
the selection metric per variant with its paired tests, the per-user differences against
the baseline, every variant's validation curve (from each experiment's reports/history.csv)
and each model's search (reports/tuning/). --figures-only redraws the PNGs from compare.json
and the CSV files there, without git or DVC.

Needs a git identity and a commit to queue from (git add new files first).
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's sea/, also without an install

from sea import compare, compare_plots, experiments  # noqa: E402
from sea.cli import USER_ERRORS, run_main  # noqa: E402
from sea.errors import (
    ConfigError,  # noqa: E402
    DataError,  # noqa: E402
)
from sea.files import write_json, write_text  # noqa: E402
from sea.metrics import EvalConfig  # noqa: E402

#: variant -> overrides on top of params.yaml (explicit, so params.yaml's defaults cannot
#: turn a plain model into its +SEA version)
VARIANTS: dict[str, list[str]] = {
    "bprmf": ["model.name=bprmf"],
    "lightgcn": ["model.name=lightgcn"],
    "vbpr": ["model.name=vbpr", "vbpr.separation=none"],
    "vbpr_sea": ["model.name=vbpr", "vbpr.separation=sea"],
    "freedom": ["model.name=freedom", "freedom.separation=none"],
    "freedom_sea": ["model.name=freedom", "freedom.separation=sea"],
    "lattice": ["model.name=lattice", "lattice.separation=none"],
    "bm3": ["model.name=bm3", "bm3.separation=none"],
    "mgcn": ["model.name=mgcn", "mgcn.separation=none"],
    "gume": ["model.name=gume"],
    "lgmrec": ["model.name=lgmrec", "lgmrec.separation=none"],
    "dragon": ["model.name=dragon", "dragon.separation=none"],
    "cohesion": ["model.name=cohesion"],
    "dualgnn": ["model.name=dualgnn", "dualgnn.separation=none"],
    "mentor": ["model.name=mentor"],
    "layergcn": ["model.name=layergcn"],
    "selfcf": ["model.name=selfcf"],
    "mmgcn": ["model.name=mmgcn"],
    "grcn": ["model.name=grcn"],
    "slmrec": ["model.name=slmrec"],
    "mvgae": ["model.name=mvgae"],
    "damrs": ["model.name=damrs"],
    "smore": ["model.name=smore", "smore.separation=none"],
    "mmgcf": ["model.name=mmgcf", "mmgcf.separation=none"],
    "pgl": ["model.name=pgl"],
    "itemknncbf": ["model.name=itemknncbf"],
    "sea": ["model.name=sea"],
    "lirdrec": ["model.name=lirdrec"],
    "simplex": ["model.name=simplex", "loss.kind=auto", "train.negatives=100"],  # CCL, 100 negatives
    "lightgcn_ccl": ["model.name=lightgcn", "loss.kind=ccl", "train.negatives=100"],
    "lightgcn_cbns": ["model.name=lightgcn", "loss.kind=softmax", "train.sampler=cross_batch"],
    "lightgcn_mg": ["model.name=lightgcn", "train.mirror_gradient=true"],  # Mirror Gradient (WWW 2024)
    "freedom_mg": ["model.name=freedom", "freedom.separation=none", "train.mirror_gradient=true"],
}
#: Variants that differ from their model only in how it trains (Mirror Gradient): with
#: --tuned they take that model's tuned configuration too.
TUNED_AS: dict[str, str] = {"lightgcn_mg": "lightgcn", "freedom_mg": "freedom"}
PREFIX = "cmp-"
PER_USER = "reports/per_user.parquet"
HISTORY = "reports/history.csv"
FIGURES_HEADING = "## Figures\n"  # the report's last section (sea/compare_plots.py figures_markdown)
TUNING = Path("reports/tuning")  # scripts/tune.py's reports, <model>.json


def experiment_overrides(
    variants: list[str], seeds: list[int], extra: list[str], tuned: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Experiment name -> every override it is queued with (``tuned``: variant -> the
    overrides of its tuned configuration, after the variant's own)."""
    seeds_override = f"train.seeds=[{','.join(map(str, seeds))}]"
    tuned = tuned or {}
    return {PREFIX + v: [*VARIANTS[v], *tuned.get(v, []), seeds_override, *extra] for v in variants}


def tuned_overrides(variants: list[str], root: Path = Path(".")) -> dict[str, dict]:
    """Variant -> its model's selected configuration (``trial``, ``overrides``, ``path``) from
    reports/tuning/<model>.json, for the variants named after a model that has one. Keys the
    variant sets itself (``vbpr.separation``) stay the variant's; ``model.name`` is dropped."""
    out = {}
    for v in variants:
        model = dict(o.split("=", 1) for o in VARIANTS[v]).get("model.name")
        if model != TUNED_AS.get(v, v):
            continue  # a variant with its own settings (loss, separation) was not what was tuned
        path = root / TUNING / f"{model}.json"
        if not path.is_file():
            continue
        try:
            selected = json.loads(path.read_text())["selection"]["selected"]
            found = {"trial": selected["trial"], "overrides": list(selected["overrides"]), "path": path.as_posix()}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path.as_posix()}: not a report of scripts/tune.py: {e}") from None
        own = {o.split("=", 1)[0] for o in VARIANTS[v]}
        found["overrides"] = [o for o in found["overrides"] if o.split("=", 1)[0] not in own]
        out[v] = found
    return out


def selection_metric(commits: dict[str, str]) -> str:
    """``eval.select`` of the experiments (read from their params.yaml); the same for all."""
    found = {}
    for name, rev in commits.items():
        params = yaml.safe_load(experiments.show_file(rev, "params.yaml")) or {}
        found[name] = EvalConfig.from_dict(params.get("eval"), "eval").select
    if len(set(found.values())) != 1:
        raise ConfigError(f"eval.select differs between the experiments: {found}")
    return next(iter(found.values()))


def collect(variants: list[str], commits: dict[str, str] | None = None) -> tuple[dict, dict[str, str]]:
    """The per-user frame of each variant's finished experiment, and its commit
    (``commits``: name -> sha from the run; default: the experiments on HEAD)."""
    commits = commits or experiments.finished([PREFIX + v for v in variants])
    frames = {}
    for v in variants:
        rev = commits[PREFIX + v]
        source = f"{PER_USER} of experiment {PREFIX + v} ({rev[:7]})"
        frame = compare.read_per_user(experiments.show_file(rev, PER_USER), source)
        model = next(m for m in frame["model"].unique() if m != compare.MOST_POPULAR)
        expected = dict(o.split("=", 1) for o in VARIANTS[v]).get("model.name")
        if expected is not None and model != expected:
            raise DataError(f"{source}: holds model {model!r}, but variant {v!r} trains {expected!r}")
        frames[v] = frame
    return frames, commits


def histories(variants: list[str], commits: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Each variant's training history (reports/history.csv of its experiment commit)."""
    out = {}
    for v in variants:
        rev = commits[PREFIX + v]
        data = experiments.show_file(rev, HISTORY)
        try:
            out[v] = pd.read_csv(io.BytesIO(data))
        except (ValueError, pd.errors.ParserError) as e:
            raise DataError(f"{HISTORY} of experiment {PREFIX + v} ({rev[:7]}): not a readable CSV: {e}") from None
    return out


def figures_folder(out: Path) -> Path:
    """Where the figures of the report ``out`` go: reports/compare.md -> reports/compare_plots/."""
    return out.with_name(out.stem + "_plots")


def tuned_note(variants: list[str], tuned: dict[str, dict]) -> str:
    """The report's line saying which variants ran at a tuned configuration."""
    done = [f"{v} ({tuned[v]['path']}, trial {tuned[v]['trial']})" for v in variants if v in tuned]
    rest = [v for v in variants if v not in tuned]
    return (
        f"- **Tuned** (`--tuned`): {', '.join(done) or 'none'}; at params.yaml's values: {', '.join(rest) or 'none'}.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"variants to train and compare (default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--baseline",
        default="lightgcn",
        help="variant the others are tested against (or most_popular); default lightgcn",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds per variant (default 1 2 3)")
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
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the report from finished runs")
    parser.add_argument(
        "--figures-only",
        action="store_true",
        help="only redraw the figures from the report's JSON and the CSV files beside it",
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="train each variant named after a model at the configuration in reports/tuning/<model>.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/compare.md"),
        help="markdown report; the JSON goes beside it (default reports/compare.md)",
    )
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if len(set(args.variants)) != len(args.variants):
        parser.error("--variants lists a variant twice")
    if args.baseline not in [*args.variants, compare.MOST_POPULAR]:
        parser.error(f"--baseline {args.baseline} is not among --variants {args.variants} (or most_popular)")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def redraw(out: Path) -> list[Path]:
    """--figures-only: the PNGs again from ``out``'s JSON and the CSV files beside it, the
    selection CSV from the JSON, and the report's figures section (its last) rewritten."""
    source = out.with_suffix(".json")
    try:
        comp = json.loads(source.read_text())
        text = out.read_text()
    except (OSError, ValueError) as e:
        raise DataError(f"{source.as_posix()}: cannot read the comparison: {e}") from None
    folder = figures_folder(out)
    compare_plots.write_tables(folder, comp)
    written = compare_plots.draw(folder, comp, TUNING)
    text = text.split("\n" + FIGURES_HEADING, 1)[0]
    write_text(out, text + "\n" + compare_plots.figures_markdown(written, out.parent))
    return written


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.figures_only:
        for png in redraw(args.out):
            print(f"wrote {png.as_posix()}")
        return
    tuned = tuned_overrides(args.variants) if args.tuned else {}
    if args.tuned:
        for v in args.variants:
            t = tuned.get(v)
            print(f"{v}: " + (f"tuned ({t['path']}, trial {t['trial']})" if t else "not tuned (params.yaml)"))
    tuned_sets = {v: t["overrides"] for v, t in tuned.items()}
    queued = experiment_overrides(args.variants, args.seeds, args.extra, tuned_sets)
    commits = None if args.collect_only else experiments.run_variants(queued, jobs=args.jobs)
    frames, commits = collect(args.variants, commits)
    comp = compare.compare(
        frames,
        args.baseline,
        selection_metric(commits),
        overrides={v: [*VARIANTS[v], *tuned_sets.get(v, [])] for v in args.variants},
        extra_overrides=args.extra,
    )
    command = shlex.join(["python", "scripts/compare.py", *(sys.argv[1:] if argv is None else argv)])
    text = compare.render_markdown(comp, "Model comparison", command)
    if args.tuned:
        text += tuned_note(args.variants, tuned)
    data = compare.to_json(comp)
    folder = figures_folder(args.out)
    compare_plots.write_tables(
        folder,
        data,
        deltas=compare.user_deltas(frames, args.baseline, comp.select),
        curves=compare_plots.curve_table(histories(args.variants, commits), comp.select),
    )
    written = compare_plots.draw(folder, data, TUNING)
    text += "\n" + compare_plots.figures_markdown(written, args.out.parent)
    write_text(args.out, text)
    write_json(args.out.with_suffix(".json"), data)
    print(text)


if __name__ == "__main__":
    run_main(main, "compare", (*USER_ERRORS, experiments.ExperimentError))
