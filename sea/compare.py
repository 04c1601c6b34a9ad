"""Compare trained variants from their per-user metrics: mean ± std over seeds, and paired
significance tests over users against a baseline variant.

The input of every function is the evaluate stage's ``reports/per_user.parquet`` of one
variant (one trained model, several seeds): columns ``model``, ``seed``, ``split``,
``user`` and one float column per metric (``recall@10``, ``ndcg@20``, ...), one row per
(model, seed, split, user) for the users with at least one held-out item in that split.
Rows with ``model == "most_popular"`` are the popularity baseline, evaluated on the same
data.

- **Mean ± std:** per seed, the metric is averaged over users (what ``metrics.json``
  reports per seed); the row shows the mean of those per-seed values and their sample
  standard deviation (ddof=1; NaN, shown "—", with one seed).
- **Paired tests:** per user, the metric is averaged over the variant's seeds; users
  present for both the variant and the baseline are paired (the others are counted as
  dropped); the differences d = variant − baseline go to a two-sided paired t-test
  (:func:`scipy.stats.ttest_rel`) and a two-sided Wilcoxon signed-rank test
  (:func:`scipy.stats.wilcoxon`, zero differences dropped). All-zero differences give
  p = 1. The p-values are not corrected for multiple comparisons.

Nothing here runs DVC or git: :mod:`sea.experiments` fetches the frames,
``scripts/compare.py`` ties the two together.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow
from scipy import stats

from sea.errors import DataError

MOST_POPULAR = "most_popular"
SPLITS = ("valid", "test")
KEYS = ("model", "seed", "split", "user")
METRIC = re.compile(r"^(recall|ndcg|precision|map|hit)@(\d+)$")


@dataclass(frozen=True)
class Stat:
    """One metric of one row: mean over seeds and sample std over seeds (NaN: one seed)."""

    mean: float
    std: float
    n_seeds: int


@dataclass(frozen=True)
class PairedTest:
    """A variant against the baseline on one metric, paired by user.

    ``delta`` is the mean over paired users of (variant − baseline), each user's value
    averaged over seeds first; ``baseline_mean`` the baseline's mean on those users.
    ``n_users`` users are paired; ``n_dropped`` appear in only one of the two.
    """

    delta: float
    baseline_mean: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    n_users: int
    n_dropped: int


@dataclass
class Row:
    """One line of the table: a variant (or the most-popular baseline)."""

    name: str
    seeds: list[int]
    stats: dict[str, dict[str, Stat]]  # split -> metric -> Stat
    overrides: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Everything the report shows. ``tests[split][row][metric]`` compares each row other
    than the baseline with the baseline (for the splits in ``test_splits``)."""

    baseline: str
    select: str
    metrics: list[str]
    rows: list[Row]
    tests: dict[str, dict[str, dict[str, PairedTest]]]
    extra_overrides: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ reading and checking


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a per-user frame, in their order."""
    return [c for c in frame.columns if METRIC.match(str(c))]


def validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a per-user frame read from ``source``; DataError naming ``source`` otherwise.

    Returns the frame with ``seed`` and ``user`` as int64 and ``model``/``split`` as str.
    """
    missing = [k for k in KEYS if k not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; expected {list(KEYS)} and metric columns")
    metrics = metric_columns(frame)
    if not metrics:
        raise DataError(f"{source}: no metric columns (named like recall@20) among {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{source}: no rows")
    for key in ("seed", "user"):
        if not pd.api.types.is_integer_dtype(frame[key]):
            raise DataError(f"{source}: column {key!r} must be integer, not {frame[key].dtype}")
    bad_split = sorted(set(frame["split"].astype(str)) - set(SPLITS))
    if bad_split:
        raise DataError(f"{source}: unknown split(s) {bad_split}; expected {list(SPLITS)}")
    values = frame[metrics].to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise DataError(
            f"{source}: non-finite metric values in {[c for c in metrics if not np.isfinite(frame[c]).all()]}"
        )
    out = frame.astype({"seed": "int64", "user": "int64", "model": str, "split": str})
    dup = out.duplicated(list(KEYS))
    if dup.any():
        first = out[dup].iloc[0]
        raise DataError(
            f"{source}: {int(dup.sum())} duplicate rows, e.g. model={first['model']} "
            f"seed={first['seed']} split={first['split']} user={first['user']}"
        )
    trained = sorted(set(out["model"]) - {MOST_POPULAR})
    if len(trained) != 1:
        raise DataError(f"{source}: expected one trained model besides {MOST_POPULAR!r}, found {trained}")
    return out


# ------------------------------------------------------------------ statistics


def seed_means(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per seed, each metric averaged over users (rows of one model and one split)."""
    return rows.groupby("seed")[metrics].mean().sort_index()


def summarise(rows: pd.DataFrame, metrics: list[str]) -> dict[str, Stat]:
    """Mean over seeds of the per-seed user averages, and their sample std (ddof=1)."""
    per_seed = seed_means(rows, metrics)
    n = len(per_seed)
    return {
        m: Stat(float(per_seed[m].mean()), float(per_seed[m].std(ddof=1)) if n > 1 else math.nan, n) for m in metrics
    }


def user_means(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per user, the metric averaged over seeds (rows of one model and one split)."""
    return rows.groupby("user")[metric].mean()


def paired_test(variant: pd.Series, baseline: pd.Series) -> PairedTest:
    """Paired two-sided t-test and Wilcoxon signed-rank test over the users in both series.

    Both series are indexed by user. All-zero differences give p = 1 for both tests (the
    variants agree on every user); fewer than two paired users give NaN p-values.
    """
    common = variant.index.intersection(baseline.index)
    dropped = len(variant.index.union(baseline.index)) - len(common)
    x = variant.loc[common].to_numpy(np.float64)
    y = baseline.loc[common].to_numpy(np.float64)
    d = x - y
    n = len(d)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, dropped)
    if not d.any():
        t_stat, t_p, w_stat, w_p = 0.0, 1.0, 0.0, 1.0
    elif n < 2:
        t_stat, t_p, w_stat, w_p = math.nan, math.nan, math.nan, math.nan
    else:
        t = stats.ttest_rel(x, y)
        w = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        t_stat, t_p, w_stat, w_p = float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue)
    return PairedTest(float(d.mean()), float(y.mean()), t_stat, t_p, w_stat, w_p, n, dropped)


# ------------------------------------------------------------------ the comparison


def _trained_rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    return frame[(frame["model"] != MOST_POPULAR) & (frame["split"] == split)]


def _most_popular(frames: dict[str, pd.DataFrame], metrics: list[str]) -> pd.DataFrame | None:
    """The most-popular rows, one value per (split, user); the same in every variant."""
    found: list[tuple[str, pd.DataFrame]] = []
    for name, frame in frames.items():
        pop = frame[frame["model"] == MOST_POPULAR]
        if not pop.empty:
            found.append((name, pop.groupby(["split", "user"])[metrics].mean().sort_index()))
    if not found:
        return None
    first_name, first = found[0]
    for name, other in found[1:]:
        if not (other.index.equals(first.index) and np.allclose(other.to_numpy(), first.to_numpy(), atol=1e-9)):
            raise DataError(
                f"the most-popular baseline differs between variants {first_name!r} and {name!r}: "
                "they were evaluated on different data or eval params"
            )
    return first.reset_index().assign(model=MOST_POPULAR, seed=0)


def _rows_of(frames: dict[str, pd.DataFrame], pop: pd.DataFrame | None, name: str, split: str) -> pd.DataFrame:
    """The rows of variant ``name`` (or of the most-popular baseline) on ``split``."""
    if name == MOST_POPULAR:
        return pop[pop["split"] == split]
    return _trained_rows(frames[name], split)


def user_deltas(frames: dict[str, pd.DataFrame], baseline: str, metric: str, split: str = "test") -> pd.DataFrame:
    """Per variant (and the most-popular baseline) and paired user, variant − baseline on
    ``metric``, each user's value first averaged over seeds: the differences the paired
    tests of :func:`compare` are computed from. Columns ``variant``, ``user``, ``delta``."""
    metrics = next(iter(frames.values()))
    pop = _most_popular(frames, metric_columns(metrics))
    names = list(frames) + ([MOST_POPULAR] if pop is not None else [])
    if baseline not in names:
        raise DataError(f"baseline {baseline!r} is not among the variants {names}")
    base = user_means(_rows_of(frames, pop, baseline, split), metric)
    parts = []
    for name in names:
        if name == baseline:
            continue
        mine = user_means(_rows_of(frames, pop, name, split), metric)
        common = mine.index.intersection(base.index)
        d = mine.loc[common].to_numpy(np.float64) - base.loc[common].to_numpy(np.float64)
        parts.append(pd.DataFrame({"variant": name, "user": common.to_numpy(np.int64), "delta": d}))
    return pd.concat(parts, ignore_index=True)


def compare(
    frames: dict[str, pd.DataFrame],
    baseline: str,
    select: str,
    overrides: dict[str, list[str]] | None = None,
    extra_overrides: list[str] | None = None,
    test_splits: tuple[str, ...] = ("test",),
) -> Comparison:
    """Summarise every variant and test each against ``baseline`` on every metric.

    ``frames`` maps a variant name to its validated per-user frame (:func:`validate`).
    ``baseline`` is one of those names or ``"most_popular"``. ``select`` is the metric
    the report highlights (``eval.select``). The most-popular baseline becomes the last row.
    """
    if not frames:
        raise DataError("no variants to compare")
    metric_sets = {name: metric_columns(f) for name, f in frames.items()}
    metrics = next(iter(metric_sets.values()))
    for name, ms in metric_sets.items():
        if ms != metrics:
            raise DataError(f"variant {name!r} has metrics {ms}, but {next(iter(frames))!r} has {metrics}")
    if select not in metrics:
        raise DataError(f"selection metric {select!r} is not among the per-user metrics {metrics}")

    if MOST_POPULAR in frames:
        raise DataError(f"a variant may not be called {MOST_POPULAR!r}")
    pop = _most_popular(frames, metrics)
    names = list(frames) + ([MOST_POPULAR] if pop is not None else [])
    if baseline not in names:
        raise DataError(f"baseline {baseline!r} is not among the variants {names}")

    def rows_of(name: str, split: str) -> pd.DataFrame:
        return _rows_of(frames, pop, name, split)

    overrides = overrides or {}
    rows = []
    for name in names:
        stat = {}
        for split in SPLITS:
            part = rows_of(name, split)
            if part.empty:
                raise DataError(f"variant {name!r} has no rows for split {split!r}")
            stat[split] = summarise(part, metrics)  # most popular: one value per user, so no std
        seeds = (
            []
            if name == MOST_POPULAR
            else sorted(int(s) for s in frames[name].loc[frames[name]["model"] != MOST_POPULAR, "seed"].unique())
        )
        rows.append(Row(name, seeds, stat, list(overrides.get(name, []))))

    tests: dict[str, dict[str, dict[str, PairedTest]]] = {}
    for split in test_splits:
        base = rows_of(baseline, split)
        tests[split] = {
            name: {m: paired_test(user_means(rows_of(name, split), m), user_means(base, m)) for m in metrics}
            for name in names
            if name != baseline
        }
    return Comparison(baseline, select, metrics, rows, tests, list(extra_overrides or []))


# ------------------------------------------------------------------ rendering


def _num(x: float, digits: int = 4) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _cell(s: Stat) -> str:
    return _num(s.mean) + ("" if math.isnan(s.std) else f" ± {_num(s.std)}")


def _delta(t: PairedTest) -> str:
    if math.isnan(t.delta):
        return "—"
    rel = f" ({t.delta / t.baseline_mean:+.1%})" if t.baseline_mean else ""
    return f"{t.delta:+.4f}{rel}"


def format_p(p: float) -> str:
    """A p-value for the table: three decimals, or scientific below 0.001."""
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _label(name: str) -> str:
    return "most popular" if name == MOST_POPULAR else name


def render_markdown(comp: Comparison, title: str = "Model comparison", command: str = "") -> str:
    """The report: one table per split, then the legend."""
    lines = [f"# {title}", ""]
    for split in SPLITS:
        tested = split in comp.tests
        header = ["variant", *comp.metrics]
        if tested:
            header += [f"Δ {comp.select} vs {_label(comp.baseline)}", "p (t-test)", "p (Wilcoxon)", "n users"]
        lines += [f"## {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in comp.rows:
            label = f"**{_label(row.name)}** (baseline)" if row.name == comp.baseline else _label(row.name)
            cells = [label] + [_cell(row.stats[split][m]) for m in comp.metrics]
            if tested:
                t = comp.tests[split].get(row.name, {}).get(comp.select)
                cells += (
                    ["—"] * 4
                    if t is None
                    else [_delta(t), format_p(t.t_pvalue), format_p(t.wilcoxon_pvalue), str(t.n_users)]
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _legend(comp, command)
    return "\n".join(lines) + "\n"


def _legend(comp: Comparison, command: str) -> list[str]:
    variants = [r for r in comp.rows if r.name != MOST_POPULAR]
    n_tests = sum(1 for split in comp.tests for _ in comp.tests[split])
    tests = next(iter(comp.tests.values()), {})
    n_users = sorted({t[comp.select].n_users for t in tests.values()})
    dropped = sorted({t[comp.select].n_dropped for t in tests.values()})
    seeds = "; ".join(f"{r.name}: {', '.join(map(str, r.seeds))}" for r in variants)
    out = [
        "## How to read this",
        "",
        "- **Cells:** mean ± sample standard deviation over seeds. Each seed's value is the metric "
        "averaged over the users with at least one held-out item in that split (as in "
        '`reports/metrics.json`); the std is that of the per-seed values (ddof = 1), "—" with one seed. '
        "The most-popular baseline is deterministic and has no std. Every model is evaluated at its "
        "best validation epoch, so test numbers were never used for selection.",
        f"- **Δ:** variant − baseline ({_label(comp.baseline)}) on {comp.select} (the selection metric "
        "`eval.select`), over the users both were evaluated on, each user's value first averaged over "
        "that model's seeds; in brackets relative to the baseline.",
        "- **Significance:** paired over users. p (t-test) is the two-sided paired t-test "
        "(`scipy.stats.ttest_rel`), p (Wilcoxon) the two-sided Wilcoxon signed-rank test "
        "(`scipy.stats.wilcoxon`, users with zero difference dropped; identical results on every "
        "user give p = 1). Users are the samples: a small p says the difference is consistent across "
        "this dataset's users, not that it holds across training seeds (the ± column speaks to that).",
        f"- **Multiple comparisons:** p-values are uncorrected. This table makes {n_tests} comparisons "
        f"against the baseline on {comp.select}; for a family-wise 5% level (Bonferroni) compare them "
        f"with {0.05 / max(n_tests, 1):.3g}.",
        f"- **n users:** {', '.join(map(str, n_users)) or '—'} paired users per comparison"
        + (f"; users present for only one of the two: {', '.join(map(str, dropped))}" if any(dropped) else "")
        + ".",
        f"- **Seeds:** {seeds}.",
    ]
    if any(r.overrides for r in comp.rows) or comp.extra_overrides:
        out.append(
            "- **Variants:** "
            + "; ".join(f"{r.name}: {', '.join(f'`{o}`' for o in r.overrides) or 'params.yaml'}" for r in variants)
            + "."
        )
        out.append(f"- **Overrides for every variant:** {', '.join(f'`{o}`' for o in comp.extra_overrides) or 'none'}.")
    if command:
        out.append(f"- Generated by `{command}`.")
    return out


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def to_json(comp: Comparison) -> dict:
    """The same numbers as the markdown, machine-readable (NaN becomes null)."""
    return {
        "baseline": comp.baseline,
        "select": comp.select,
        "metrics": comp.metrics,
        "extra_overrides": comp.extra_overrides,
        "rows": {
            r.name: {
                "seeds": r.seeds,
                "overrides": r.overrides,
                **{
                    split: {
                        m: {"mean": s.mean, "std": _clean(s.std), "n_seeds": s.n_seeds}
                        for m, s in r.stats[split].items()
                    }
                    for split in SPLITS
                },
            }
            for r in comp.rows
        },
        "tests": {
            split: {
                name: {
                    m: {k: _clean(v) if isinstance(v, float) else v for k, v in vars(t).items()}
                    for m, t in per_metric.items()
                }
                for name, per_metric in per_row.items()
            }
            for split, per_row in comp.tests.items()
        },
        "method": {
            "std": "sample std (ddof=1) of the per-seed means over users; null with one seed",
            "pairing": "per user, mean over seeds; users present in both variant and baseline",
            "t_test": "scipy.stats.ttest_rel, two-sided",
            "wilcoxon": "scipy.stats.wilcoxon, two-sided, zero_method='wilcox'",
            "all_zero_differences": "p = 1",
            "multiple_comparisons": "uncorrected",
        },
    }


def read_per_user(data: bytes, source: str) -> pd.DataFrame:
    """A validated per-user frame from the bytes of a ``per_user.parquet`` file."""
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{source}: not a readable parquet file: {e}") from None
    return validate(frame, source)
