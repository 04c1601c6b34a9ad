"""The comparison's figures (sea/compare_plots.py): their tables against hand computations,
deterministic PNGs, labels that do not overlap with many variants, and the script's
--figures-only mode on the committed reports."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sea import compare, compare_plots
from sea.compare import MOST_POPULAR

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["recall@20", "ndcg@20"]


def frame(model: str, values: dict[int, list[float]], pop: list[float]) -> pd.DataFrame:
    """A per-user frame: per seed one value per user (users 0..n-1), in both splits, with
    the most-popular rows; the second metric is half the first."""
    rows = []
    for seed, users in values.items():
        for split in ("valid", "test"):
            rows += [(model, seed, split, u, v, v / 2) for u, v in enumerate(users)]
            rows += [(MOST_POPULAR, seed, split, u, v, v / 2) for u, v in enumerate(pop)]
    out = pd.DataFrame(rows, columns=["model", "seed", "split", "user", *METRICS])
    return compare.validate(out, f"<{model}>")


@pytest.fixture
def frames() -> dict[str, pd.DataFrame]:
    pop = [0.0, 0.5, 0.0, 1.0]
    return {
        "a": frame("lightgcn", {1: [1.0, 0.5, 0.0, 1.0], 2: [0.0, 0.5, 0.0, 1.0]}, pop),
        "b": frame("bprmf", {1: [1.0, 1.0, 0.5, 0.0], 2: [1.0, 0.0, 0.5, 0.0]}, pop),
    }


def test_user_deltas_are_the_paired_differences(frames):
    deltas = compare.user_deltas(frames, "a", "recall@20")
    # by hand: a's users averaged over seeds = [0.5, 0.5, 0, 1]; b's = [1, 0.5, 0.5, 0]
    b = deltas[deltas["variant"] == "b"].set_index("user")["delta"]
    assert b.to_dict() == {0: 0.5, 1: 0.0, 2: 0.5, 3: -1.0}
    pop = deltas[deltas["variant"] == MOST_POPULAR].set_index("user")["delta"]
    assert pop.to_dict() == {0: -0.5, 1: 0.0, 2: 0.0, 3: 0.0}
    # the paired t-test of the comparison is computed from these very differences
    comp = compare.compare(frames, "a", "recall@20")
    assert math.isclose(comp.tests["test"]["b"]["recall@20"].delta, b.mean())


def test_delta_table_counts_and_quantiles():
    d = [-1.0, 0.0, 0.0, 1.0, 2.0]
    table = compare_plots.delta_table(pd.DataFrame({"variant": "x", "user": range(5), "delta": d}))
    row = table.iloc[0]
    assert (row.better, row.worse, row.tied, row.n_users) == (2, 1, 2, 5)
    assert math.isclose(row["mean"], 0.4) and row["median"] == 0.0
    assert math.isclose(row.q25, 0.0) and math.isclose(row.q75, 1.0)
    assert math.isclose(row.p5, -1.0 + 0.2 * 1.0) and math.isclose(row.p95, 1.0 + 0.8 * 1.0)  # linear interpolation


def test_selection_table_marks_significance_by_both_tests():
    comp = {
        "baseline": "base",
        "select": "recall@20",
        "rows": {
            n: {"test": {"recall@20": {"mean": m, "std": 0.01, "n_seeds": 3}}}
            for n, m in [("base", 0.3), ("strong", 0.4), ("weak", 0.35), ("mixed", 0.2), ("none", 0.31)]
        },
        "tests": {
            "test": {
                n: {"recall@20": {"delta": d, "baseline_mean": 0.3, "t_pvalue": pt, "wilcoxon_pvalue": pw}}
                for n, d, pt, pw in [
                    ("strong", 0.1, 1e-5, 1e-4),  # both below 0.05 / 4 tests
                    ("weak", 0.05, 0.02, 0.03),  # both below 0.05, not below 0.0125
                    ("mixed", -0.1, 1e-6, 0.2),  # one test only
                    ("none", 0.01, None, None),  # no p-value
                ]
            }
        },
    }
    table = compare_plots.selection_table(comp).set_index("variant")
    assert table["level"].to_dict() == {"strong": 2, "weak": 1, "none": 0, "base": 0, "mixed": 0}
    assert list(table.index) == ["strong", "weak", "none", "base", "mixed"]  # by mean, best first
    assert math.isclose(table.loc["strong", "relative"], 0.1 / 0.3)


def many(n: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """A comparison of ``n`` variants with long names, their deltas and curves."""
    rng = np.random.default_rng(0)
    names = [f"variant_with_a_long_name_{i:02d}" for i in range(n)]
    comp = {
        "baseline": names[0],
        "select": "recall@20",
        "rows": {
            v: {"test": {"recall@20": {"mean": float(rng.uniform(0.2, 0.5)), "std": 0.01, "n_seeds": 3}}} for v in names
        },
        "tests": {
            "test": {
                v: {"recall@20": {"delta": 0.01, "baseline_mean": 0.3, "t_pvalue": 0.01, "wilcoxon_pvalue": 1e-5}}
                for v in names[1:]
            }
        },
    }
    deltas = pd.DataFrame(
        [(v, u, float(rng.normal())) for v in names[1:] for u in range(50)], columns=["variant", "user", "delta"]
    )
    curves = pd.DataFrame(
        [(v, s, e, float(rng.uniform()), 3) for v in names for s in (1, 2) for e in range(1, 6)],
        columns=["variant", "seed", "epoch", "value", "best_epoch"],
    )
    return comp, deltas, curves


def overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts of ``fig`` whose rendered boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    hidden = set()  # tick labels of ticks outside the view limits are not drawn
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    hidden |= {id(tick.label1), id(tick.label2)}
    texts = [t for t in {id(t): t for t in fig.findobj(Text)}.values() if id(t) not in hidden]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b) and box_a.width and box_b.width
    ]


def test_forty_variants_or_two_give_readable_figures_and_the_same_bytes_twice(tmp_path):
    comp, deltas, curves = many(40)
    folder = tmp_path / "plots"
    compare_plots.write_tables(folder, comp, deltas=deltas, curves=curves)
    written = compare_plots.draw(folder, comp, ROOT / "reports/tuning")
    assert [p.name for p in written] == ["selection.png", "deltas.png", "curves.png", "tuning.png"]
    first = {p.name: p.read_bytes() for p in written}
    for data in first.values():
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data and b"Creation" not in data
    assert compare_plots.draw(folder, comp, ROOT / "reports/tuning") == written
    assert {p.name: p.read_bytes() for p in written} == first  # deterministic bytes

    import matplotlib.pyplot as plt

    sel = compare_plots.selection_table(comp)
    for fig in (
        compare_plots.selection_figure(sel, "recall@20", comp["baseline"], "test"),
        compare_plots.deltas_figure(compare_plots.delta_table(deltas), "recall@20", comp["baseline"], "test"),
        compare_plots.curves_figure(curves, "recall@20"),
        compare_plots.tuning_figure(compare_plots.read_tuning(ROOT / "reports/tuning")),
    ):
        assert overlaps(fig) == []
        plt.close(fig)
    comp2, deltas2, curves2 = many(2)  # and with few rows
    sel2 = compare_plots.selection_table(comp2)
    for fig in (
        compare_plots.selection_figure(sel2, "recall@20", comp2["baseline"], "test"),
        compare_plots.deltas_figure(compare_plots.delta_table(deltas2), "recall@20", comp2["baseline"], "test"),
        compare_plots.curves_figure(curves2, "recall@20"),
    ):
        assert overlaps(fig) == []
        plt.close(fig)
    ticks = compare_plots.selection_figure(sel, "recall@20", comp["baseline"], "test").axes[0].get_yticklabels()
    top_down = [t.get_text() for t in sorted(ticks, key=lambda t: -t.get_position()[1])]
    assert top_down == list(sel["variant"]) and sel["mean"].is_monotonic_decreasing  # best on top
    plt.close("all")


def test_figures_only_redraws_the_committed_report(tmp_path):
    """--figures-only on a copy of the committed reports (the JSON, the CSV files behind the
    figures) writes the same figures and figures section as committed (they are up to date)."""
    (tmp_path / "reports").mkdir()
    for rel in ("reports/compare.md", "reports/compare.json"):
        shutil.copy2(ROOT / rel, tmp_path / rel)
    shutil.copytree(ROOT / "reports/tuning", tmp_path / "reports/tuning")
    (tmp_path / "reports/compare_plots").mkdir()
    for csv in (ROOT / "reports/compare_plots").glob("*.csv"):  # the per-user deltas and curves behind two figures
        shutil.copy2(csv, tmp_path / "reports/compare_plots" / csv.name)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/compare.py"), "--figures-only"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    for rel in [
        "reports/compare.md",
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "reports/compare_plots").iterdir()),
    ]:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), f"{rel} is not up to date"
    comp = json.loads((ROOT / "reports/compare.json").read_text())
    table = pd.read_csv(ROOT / "reports/compare_plots/selection.csv")
    assert set(table["variant"]) == set(comp["rows"])
