"""Build the documentation's results page from the committed reports.

    python scripts/results_page.py          # writes docs/results.md and docs/results/*.png

Reads reports/report.md (the dataset and its features), reports/compare.json and
reports/compare_plots/ (the comparison of scripts/compare.py and its figures) and
reports/tuning/<model>.json (each model's search). Writes docs/results.md and copies the
figures into docs/results/, so that `mkdocs build` needs nothing outside docs/. Run it after
scripts/compare.py; tests/test_results_page.py fails while the committed page is stale.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's sea/, also without an install

from sea.cli import USER_ERRORS, run_main  # noqa: E402
from sea.compare import MOST_POPULAR  # noqa: E402
from sea.errors import DataError  # noqa: E402
from sea.files import atomic_path, write_text  # noqa: E402

REPORT = Path("reports/report.md")
COMPARE = Path("reports/compare.json")
FIGURES = Path("reports/compare_plots")
TUNING = Path("reports/tuning")
MODELS = Path("docs/models")
FIGURE_CAPTIONS = {
    "selection": "The selection metric per variant on the test split (mean ± std over seeds); a filled mark "
    "when both paired tests against the baseline find a difference.",
    "deltas": "The per-user differences against the baseline that the paired tests are computed from.",
    "curves": "The validation curve of every variant (mean over seeds).",
    "tuning": "Each model's hyper-parameter search: every trial's validation curve, the pruned ones, the pick.",
}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path.as_posix()}: cannot read it: {e}") from None


def sections(markdown: str, names: tuple[str, ...]) -> str:
    """The ``## <name>`` sections of a markdown report (headings one level down), with the
    paragraphs between them that are not headings."""
    out, keep = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() in names
            if keep:
                out += ["", "#" + line]
            continue
        if keep:
            out.append(line)
    return "\n".join(out).strip() + "\n"


def model_of(overrides: list[str]) -> str | None:
    return dict(o.split("=", 1) for o in overrides if "=" in o).get("model.name")


def variant_link(name: str, overrides: list[str], root: Path) -> str:
    """A variant's name linked to its model's page (when the page exists)."""
    if name == MOST_POPULAR:
        return "most popular"
    model = model_of(overrides)
    if model and (root / MODELS / f"{model}.md").is_file():
        return f"[{name}](models/{model}.md)"
    return name


def _num(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def comparison_table(comp: dict, root: Path) -> list[str]:
    select, baseline = comp["select"], comp["baseline"]
    tests = comp["tests"].get("test", {})
    order = sorted(comp["rows"], key=lambda v: (-comp["rows"][v]["test"][select]["mean"], v))
    lines = [
        f"| variant | test {select} | valid {select} | Δ test vs {baseline} | p (t-test) | p (Wilcoxon) |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        row = comp["rows"][name]
        cells = []
        for split in ("test", "valid"):
            s = row[split][select]
            cells.append(_num(s["mean"]) + ("" if s["std"] is None else f" ± {_num(s['std'])}"))
        t = tests.get(name, {}).get(select)
        if name == baseline:
            cells += ["baseline", "—", "—"]
        elif t is None:
            cells += ["—", "—", "—"]
        else:
            rel = f" ({t['delta'] / t['baseline_mean']:+.1%})" if t["baseline_mean"] else ""
            cells += [f"{t['delta']:+.4f}{rel}", _p(t["t_pvalue"]), _p(t["wilcoxon_pvalue"])]
        label = variant_link(name, row["overrides"], root)
        lines.append("| " + " | ".join([f"**{label}**" if name == baseline else label, *cells]) + " |")
    return lines


def models_table(comp: dict, root: Path) -> list[str]:
    """One row per variant: its model's page, whether that model was searched, and the
    overrides the variant was queued with (its tuned configuration included)."""
    lines = ["| variant | model | searched | overrides |", "|---|---|---|---|"]
    for name, row in comp["rows"].items():
        model = model_of(row["overrides"])
        if not model:
            continue
        label = f"[{model}](models/{model}.md)" if (root / MODELS / f"{model}.md").is_file() else model
        searched = "yes" if (root / TUNING / f"{model}.json").is_file() else "no"
        overrides = ", ".join(f"`{o}`" for o in row["overrides"])
        lines.append(f"| {name} | {label} | {searched} | {overrides} |")
    return lines


def search_table(root: Path) -> list[str]:
    lines = [
        "| model | trials | pruned | pick | validation at the pick (mean ± std over seeds) |",
        "|---|---|---|---|---|",
    ]
    for path in sorted((root / TUNING).glob("*.json")):
        report = read_json(path)
        picked = report["selection"]["selected"]
        pruned = sum(t["state"] == "pruned" for t in report["trials"])
        params = ", ".join(f"`{k}={v}`" for k, v in picked["params"].items())
        cand = next((c for c in report["selection"]["candidates"] if c["trial"] == picked["trial"]), None)
        value = "—" if cand is None else f"{_num(cand['mean'])} ± {_num(cand['std'])}"
        model = path.stem
        label = f"[{model}](models/{model}.md)" if (root / MODELS / f"{model}.md").is_file() else model
        lines.append(f"| {label} | {len(report['trials'])} | {pruned} | #{picked['trial']}: {params} | {value} |")
    return lines


def page(root: Path, figures: list[str]) -> str:
    comp = read_json(root / COMPARE)
    try:
        report = (root / REPORT).read_text()
    except OSError as e:
        raise DataError(f"{REPORT.as_posix()}: cannot read it: {e}") from None
    n_tests = sum(len(v) for v in comp["tests"].values())
    seeds = sorted({tuple(r["seeds"]) for n, r in comp["rows"].items() if n != MOST_POPULAR})
    text = [
        "# Results on the bundled sample",
        "",
        "Built by `python scripts/results_page.py` from the committed reports (`reports/report.md`, "
        "`reports/compare.json`, `reports/compare_plots/`, `reports/tuning/`); do not edit it by hand. "
        "How the numbers are made: [Comparing models](comparing.md) and [Tuning](tuning.md).",
        "",
        "## Dataset",
        "",
        sections(report, ("Data", "Features")),
        "## Models",
        "",
        f"{len(comp['rows']) - 1} variants and the most-popular baseline, each trained with the seeds "
        f'{"; ".join(", ".join(map(str, s)) for s in seeds)}. "searched": the model\'s hyper-parameter search is '
        "below (Searches); the overrides are those the variant was queued with, its tuned configuration included.",
        "",
        *models_table(comp, root),
        "",
        "## Tuned comparison",
        "",
        f"Sorted by test {comp['select']} (the selection metric `eval.select`, chosen on validation only). "
        f"Δ and the p-values compare each variant with **{comp['baseline']}**, paired over users; they are "
        f"uncorrected, so for a family-wise 5 % level compare them with {0.05 / max(n_tests, 1):.3g} "
        f"(Bonferroni over {n_tests} comparisons). Every metric of both splits: `reports/compare.md`.",
        "",
        *comparison_table(comp, root),
        "",
    ]
    for name in figures:
        if name != "tuning":
            text += [f"![{name}](results/{name}.png)", "", FIGURE_CAPTIONS[name], ""]
    text += ["## Searches", "", *search_table(root), ""]
    if "tuning" in figures:
        text += ["![tuning](results/tuning.png)", "", FIGURE_CAPTIONS["tuning"], ""]
    return "\n".join(text)


def build(root: Path, out: Path) -> list[Path]:
    """Write ``out`` (the page) and the figures beside it in ``out``'s stem folder."""
    figures = [n for n in FIGURE_CAPTIONS if (root / FIGURES / f"{n}.png").is_file()]
    folder = out.with_suffix("")
    written = []
    for name in figures:
        target = folder / f"{name}.png"
        with atomic_path(target) as tmp:
            shutil.copyfile(root / FIGURES / f"{name}.png", tmp)
        written.append(target)
    for stale in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        if stale not in written:
            stale.unlink()
    write_text(out, page(root, figures))
    return [out, *written]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="the page (default docs/results.md)")
    args = parser.parse_args(argv)
    for path in build(args.root, args.root / args.out):
        print(f"wrote {path.as_posix()}")


if __name__ == "__main__":
    run_main(main, "results_page", USER_ERRORS)
