"""Figures of a model comparison (``scripts/compare.py``): PNGs for offline reading and the
small CSV files behind them, which are also the data of ``dvc plots`` (``dvc.yaml``).

Written into one folder beside ``reports/compare.md`` (``reports/compare_plots/``):

- ``selection.csv`` / ``selection.png``: per variant the selection metric on the test split,
  mean ± std over seeds, with the paired tests against the baseline (from ``compare.json``);
- ``deltas.csv`` / ``deltas.png``: per variant the distribution of the per-user differences
  variant − baseline that those tests are computed from (quantiles, users better/worse/tied);
- ``curves.csv`` / ``curves.png``: the validation curve of the selection metric of every
  variant (every seed in the CSV, the mean over seeds in the PNG);
- ``tuning.png``: each model's hyper-parameter search (``reports/tuning/<model>.json``):
  every trial's validation curve, the pruned ones, and the configuration picked.

``deltas`` and ``curves`` need the experiments' per-user results and training histories,
which only the collect step sees; :func:`draw` redraws every figure from the CSV files
that exist, so the PNGs can be rebuilt from committed files alone.

The PNGs are deterministic: no software or date fields in their metadata, rows in a fixed
order (sorted by value, ties by name), text laid out in columns so that labels never overlap.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from sea.compare import MOST_POPULAR
from sea.errors import DataError
from sea.files import atomic_path, write_text

SELECTION = "selection"
DELTAS = "deltas"
CURVES = "curves"
TUNING = "tuning"
ALPHA = 0.05  # the level of the marks; Bonferroni over the table's comparisons for the strong mark
QUANTILES = {"p5": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "p95": 0.95}
ROW_INCHES = 0.26  # height of one variant's row: fontsize 9 labels never touch


def label(name: str) -> str:
    """A variant's name as the figures show it."""
    return "most popular" if name == MOST_POPULAR else name


# ------------------------------------------------------------------ tables


def selection_table(comp: dict, split: str = "test") -> pd.DataFrame:
    """One row per variant of ``compare.json`` (``comp``): mean and std over seeds of the
    selection metric on ``split`` and its paired tests against the baseline. ``level``: 2 when
    both tests are below ALPHA / (number of comparisons) (Bonferroni), 1 when both are below
    ALPHA uncorrected, 0 otherwise (and for the baseline). Sorted by mean, best first."""
    select, baseline = comp["select"], comp["baseline"]
    tests = comp.get("tests", {}).get(split, {})
    n_tests = sum(len(per_row) for per_row in comp.get("tests", {}).values())
    strong = ALPHA / max(n_tests, 1)
    rows = []
    for name, row in comp["rows"].items():
        stat = row[split][select]
        t = tests.get(name, {}).get(select)
        ps = [] if t is None else [t["t_pvalue"], t["wilcoxon_pvalue"]]
        worst = max(ps) if ps and None not in ps else math.nan
        level = 2 if worst < strong else 1 if worst < ALPHA else 0
        rows.append(
            {
                "variant": name,
                "mean": stat["mean"],
                "std": stat["std"] if stat["std"] is not None else math.nan,
                "n_seeds": stat["n_seeds"],
                "delta": t["delta"] if t and t["delta"] is not None else math.nan,
                "relative": t["delta"] / t["baseline_mean"] if t and t["baseline_mean"] else math.nan,
                "t_pvalue": t["t_pvalue"] if t and t["t_pvalue"] is not None else math.nan,
                "wilcoxon_pvalue": t["wilcoxon_pvalue"] if t and t["wilcoxon_pvalue"] is not None else math.nan,
                "level": 0 if name == baseline else level,
                "baseline": name == baseline,
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["mean", "variant"], ascending=[False, True], kind="stable").reset_index(drop=True)


def delta_table(deltas: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the distribution of its per-user differences (columns ``variant``,
    ``user``, ``delta`` as :func:`sea.compare.user_deltas` gives them): users better, worse
    and tied, the mean and the quantiles in QUANTILES. Sorted by mean, best first."""
    rows = []
    for name, part in deltas.groupby("variant", sort=False):
        d = part["delta"].to_numpy(np.float64)
        rows.append(
            {
                "variant": name,
                "n_users": len(d),
                "better": int((d > 0).sum()),
                "worse": int((d < 0).sum()),
                "tied": int((d == 0).sum()),
                "mean": float(d.mean()),
                **{k: float(np.quantile(d, q)) for k, q in QUANTILES.items()},
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["mean", "variant"], ascending=[False, True], kind="stable").reset_index(drop=True)


def curve_table(histories: dict[str, pd.DataFrame], select: str) -> pd.DataFrame:
    """Per variant, seed and validated epoch, the validation value of ``select`` from each
    variant's ``reports/history.csv`` (columns ``variant``, ``seed``, ``epoch``, ``value``,
    ``best_epoch``)."""
    column = f"valid_{select}"
    parts = []
    for name, history in histories.items():
        missing = [c for c in ("seed", "epoch", "best_epoch", column) if c not in history.columns]
        if missing:
            raise DataError(f"reports/history.csv of variant {name!r}: missing column(s) {missing}")
        rows = history.dropna(subset=[column])
        parts.append(
            pd.DataFrame(
                {
                    "variant": name,
                    "seed": rows["seed"].astype("int64"),
                    "epoch": rows["epoch"].astype("int64"),
                    "value": rows[column].astype("float64"),
                    "best_epoch": rows["best_epoch"].astype("int64"),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------ drawing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """A deterministic PNG (no software or date fields), written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    _pyplot().close(fig)


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def selection_figure(table: pd.DataFrame, select: str, baseline: str, split: str):
    """Mean ± std over seeds per variant, best on top; colour and marker say whether the
    paired tests against the baseline find a difference; Δ and p in a column on the right."""
    plt = _pyplot()
    n = len(table)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + ROW_INCHES * n))
    y = np.arange(n)[::-1]
    colours = {2: ("tab:blue", "tab:red"), 1: ("lightsteelblue", "lightsalmon"), 0: ("grey", "grey")}
    for yi, row in zip(y, table.itertuples(), strict=True):
        better, worse = colours[int(row.level)]
        colour = "black" if row.baseline else better if row.delta > 0 else worse
        marker = "D" if row.baseline else "o"
        filled = row.baseline or row.level > 0
        ax.errorbar(
            row.mean,
            yi,
            xerr=None if math.isnan(row.std) else row.std,
            fmt=marker,
            color=colour,
            mfc=colour if filled else "white",
            capsize=3,
            markersize=6,
        )
        note = "baseline" if row.baseline else f"{row.relative:+.1%}  p {_p(row.t_pvalue)} / {_p(row.wilcoxon_pvalue)}"
        ax.annotate(note, (1.02, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    base = table.loc[table["baseline"], "mean"]
    if len(base):
        ax.axvline(float(base.iloc[0]), color="black", linestyle=":", linewidth=0.8)
    ax.set_yticks(y, [label(v) for v in table["variant"]], fontsize=9)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"{split} {select}: mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"{split} {select} per variant against {label(baseline)}\n"
        f"filled: both paired tests p < {ALPHA} (dark: also after Bonferroni); right: Δ, p t-test / Wilcoxon",
        fontsize=9,
    )
    return fig


def deltas_figure(table: pd.DataFrame, select: str, baseline: str, split: str):
    """Per variant, best mean on top: left, the share of users worse / tied / better than
    the baseline (most per-user differences of a top-K metric are exactly 0, so this is
    where the distribution shows); right, a box of the differences (25–75 %, whiskers
    5–95 %, median line, mean dot)."""
    plt = _pyplot()
    n = len(table)
    fig, (share, ax) = plt.subplots(
        1,
        2,
        figsize=(10, 1.8 + ROW_INCHES * n),
        sharey=True,
        gridspec_kw={"width_ratios": [1, 1.2]},
        layout="constrained",  # room for the suptitle, the titles and the legend below, whatever n
    )
    y = np.arange(n)[::-1]
    left = np.zeros(n)
    for column, colour in (("worse", "tab:red"), ("tied", "lightgrey"), ("better", "tab:blue")):
        part = (table[column] / table["n_users"]).to_numpy(np.float64)
        share.barh(y, part, left=left, color=colour, height=0.7, label=column)
        for yi, x0, w in zip(y, left, part, strict=True):
            if w >= 0.1:  # a label only where the segment is wide enough to hold it
                share.text(x0 + w / 2, yi, f"{w:.0%}", ha="center", va="center", fontsize=7)
        left += part
    share.axvline(0.5, color="black", linestyle=":", linewidth=0.8)
    share.set_xlim(0, 1)
    share.set_xlabel(f"share of users (of {int(table['n_users'].max())})")
    fig.legend(*share.get_legend_handles_labels(), loc="outside lower left", ncols=3, fontsize=8, frameon=False)
    share.set_title("users worse / tied / better", fontsize=9)
    boxes = [
        {
            "label": label(r.variant),
            "whislo": r.p5,
            "q1": r.q25,
            "med": r.median,
            "q3": r.q75,
            "whishi": r.p95,
            "mean": r.mean,
            "fliers": [],
        }
        for r in table.itertuples()
    ]
    ax.bxp(
        boxes,
        positions=y,
        orientation="horizontal",
        showmeans=True,
        widths=0.6,
        meanprops={"marker": "o", "markersize": 4},
    )
    ax.axvline(0, color="black", linestyle=":", linewidth=0.8)
    share.set_yticks(y, [label(v) for v in table["variant"]], fontsize=9)
    share.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"per-user {split} {select}: variant − {label(baseline)}")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("box 25–75 %, whiskers 5–95 %, dot the mean", fontsize=9)
    fig.suptitle(
        f"per-user {split} {select} against {label(baseline)} (each user's value averaged over seeds)", fontsize=10
    )
    return fig


def _palette(n: int) -> list[tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return [(cmap(i % 20), ["-", "--", ":"][i // 20 % 3]) for i in range(n)]


def curves_figure(curves: pd.DataFrame, select: str):
    """The validation curve of every variant on one axes (mean over the seeds that reached
    each epoch), each variant's best epoch marked; legend outside, best variant first."""
    plt = _pyplot()
    mean = curves.groupby(["variant", "epoch"], sort=True)["value"].mean().reset_index()
    best = mean.groupby("variant")["value"].max()
    order = sorted(best.index, key=lambda v: (-best[v], v))
    fig, ax = plt.subplots(figsize=(10, 1.5 + max(4.0, 0.2 * len(order))))
    for name, (colour, style) in zip(order, _palette(len(order)), strict=True):
        part = mean[mean["variant"] == name]
        ax.plot(
            part["epoch"], part["value"], color=colour, linestyle=style, linewidth=1.2, label=f"{name} {best[name]:.4f}"
        )
        top = part.loc[part["value"].idxmax()]
        ax.plot(top["epoch"], top["value"], marker="*", color=colour, markersize=8, linestyle="none")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {select} (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="best value")
    ax.set_title(f"validation curves of every variant ({select}; * the best epoch of the mean curve)", fontsize=9)
    return fig


def read_tuning(folder: Path) -> dict[str, dict]:
    """Model -> its search report (``reports/tuning/<model>.json``), in name order."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
            report["trials"], report["selection"]["selected"]["trial"]  # noqa: B018
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path.as_posix()}: not a report of scripts/tune.py: {e}") from None
        out[path.stem] = report
    return out


def tuning_figure(reports: dict[str, dict], columns: int = 4):
    """One panel per model: every trial's validation curve (grey; pruned ones dotted, ended
    by an x), the trial picked in colour with its best epoch starred."""
    plt = _pyplot()
    rows = math.ceil(len(reports) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.6 * columns, 2.9 * rows),
        squeeze=False,
        layout="constrained",  # room for the suptitle and every panel's title, whatever the rows
    )
    for ax, (model, report) in zip(axes.flat, reports.items()):
        picked = report["selection"]["selected"]
        n_pruned = 0
        for trial in report["trials"]:
            curve = np.asarray(trial.get("curve") or [], dtype=np.float64).reshape(-1, 2)
            if not len(curve):
                continue
            pruned = trial["state"] == "pruned"
            n_pruned += pruned
            if trial["number"] == picked["trial"]:
                continue
            ax.plot(curve[:, 0], curve[:, 1], color="grey", linewidth=0.7, linestyle=":" if pruned else "-", alpha=0.8)
            if pruned:
                ax.plot(curve[-1, 0], curve[-1, 1], marker="x", color="tab:red", markersize=4, linestyle="none")
        if not any(t.get("curve") for t in report["trials"]):  # nothing trained per epoch: one value per trial
            done = [t for t in report["trials"] if t.get("value") is not None]
            ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", color="grey", markersize=4)
            ax.set_xlabel("trial (no epochs: one value each)", fontsize=7)
        mine = next((t for t in report["trials"] if t["number"] == picked["trial"]), None)
        if mine and not mine.get("curve") and mine.get("value") is not None:
            ax.plot(mine["number"], mine["value"], marker="*", color="tab:blue", markersize=10, linestyle="none")
        elif mine:
            curve = np.asarray(mine["curve"], dtype=np.float64).reshape(-1, 2)
            ax.plot(curve[:, 0], curve[:, 1], color="tab:blue", linewidth=1.8)
            top = curve[int(np.argmax(curve[:, 1]))]
            ax.plot(top[0], top[1], marker="*", color="tab:blue", markersize=10, linestyle="none")
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in picked["params"].items())
        head = f"{model}: {len(report['trials'])} trials, {n_pruned} pruned"
        ax.set_title(head + "\n" + textwrap.shorten(f"pick #{picked['trial']}: {params}", 48), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(reports) :]:
        ax.axis("off")
    select = next(iter(reports.values()))["select"] if reports else ""
    fig.suptitle(
        f"hyper-parameter searches: validation {select} per epoch of each trial (grey; dotted and x: pruned), "
        "the pick in blue",
        fontsize=10,
    )
    return fig


# ------------------------------------------------------------------ the folder


def write_tables(
    folder: Path, comp: dict, deltas: pd.DataFrame | None = None, curves: pd.DataFrame | None = None
) -> None:
    """The CSV files of the figures (see the module docstring); ``deltas`` as
    :func:`sea.compare.user_deltas` gives them, ``curves`` as :func:`curve_table`."""
    write_text(folder / f"{SELECTION}.csv", selection_table(comp).to_csv(index=False, float_format="%.8g"))
    if deltas is not None:
        write_text(folder / f"{DELTAS}.csv", delta_table(deltas).to_csv(index=False, float_format="%.8g"))
    if curves is not None:
        write_text(folder / f"{CURVES}.csv", curves.to_csv(index=False, float_format="%.8g"))


def draw(folder: Path, comp: dict, tuning: Path | None = None, split: str = "test") -> list[Path]:
    """Every figure whose data exists in ``folder`` (and ``tuning``'s search reports);
    returns the PNGs written."""
    select, baseline = comp["select"], comp["baseline"]
    figures = {}
    if (folder / f"{SELECTION}.csv").is_file():
        figures[SELECTION] = selection_figure(pd.read_csv(folder / f"{SELECTION}.csv"), select, baseline, split)
    if (folder / f"{DELTAS}.csv").is_file():
        figures[DELTAS] = deltas_figure(pd.read_csv(folder / f"{DELTAS}.csv"), select, baseline, split)
    if (folder / f"{CURVES}.csv").is_file():
        figures[CURVES] = curves_figure(pd.read_csv(folder / f"{CURVES}.csv"), select)
    reports = read_tuning(tuning) if tuning is not None and tuning.is_dir() else {}
    if reports:
        figures[TUNING] = tuning_figure(reports)
    for name, fig in figures.items():
        _save(fig, folder / f"{name}.png")
    return [folder / f"{name}.png" for name in figures]


def figures_markdown(written: list[Path], relative_to: Path) -> str:
    """The report's section linking the figures (paths relative to the report's folder)."""
    if not written:
        return ""
    lines = ["## Figures", ""]
    for png in written:
        rel = png.relative_to(relative_to).as_posix()
        lines.append(f"![{png.stem}]({rel})")
        lines.append("")
    return "\n".join(lines)
