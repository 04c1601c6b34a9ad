"""The comparison: statistics against independent computations, pairing by user, rendering;
the experiment runner on a tiny real git+DVC repo; and (slow) scripts/compare.py end to end
on a copy of this repository."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from shell import copy_tree, env, git_repo, run

from sea import compare, experiments
from sea.compare import MOST_POPULAR, paired_test
from sea.errors import DataError
from sea.models.base import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["recall@10", "ndcg@10"]


def per_user(
    model: str,
    values: dict[tuple[int, str], dict[int, float]],
    pop: dict[str, dict[int, float]] | None = None,
    metrics: list[str] = METRICS,
) -> pd.DataFrame:
    """A per-user frame: ``values[(seed, split)][user]`` is the first metric, the second is
    half of it; ``pop[split][user]`` the most-popular rows (written once per seed)."""
    rows = []
    seeds = sorted({s for s, _ in values})
    for (seed, split), users in values.items():
        for user, v in users.items():
            rows.append({"model": model, "seed": seed, "split": split, "user": user, metrics[0]: v, metrics[1]: v / 2})
    for split, users in (pop or {}).items():
        for seed in seeds:
            for user, v in users.items():
                rows.append(
                    {
                        "model": MOST_POPULAR,
                        "seed": seed,
                        "split": split,
                        "user": user,
                        metrics[0]: v,
                        metrics[1]: v / 2,
                    }
                )
    frame = pd.DataFrame(rows).astype({"seed": "int64", "user": "int32"})
    return compare.validate(frame, f"<{model}>")


def both_splits(by_seed: dict[int, list[float]]) -> dict[tuple[int, str], dict[int, float]]:
    """The same per-user values (users 0..n-1) in valid and test, per seed."""
    return {(seed, split): dict(enumerate(v)) for seed, v in by_seed.items() for split in ("valid", "test")}


# ------------------------------------------------------------------ mean ± std over seeds


def test_mean_and_std_over_seeds_by_hand():
    frame = per_user("bprmf", both_splits({1: [0.1, 0.2, 0.3, 0.4], 2: [0.2, 0.2, 0.2, 0.2], 3: [0.0, 0.3, 0.3, 0.6]}))
    s = compare.summarise(frame[frame["split"] == "test"], METRICS)["recall@10"]
    # per-seed means 0.25, 0.20, 0.30 -> mean 0.25; deviations 0, -0.05, 0.05 -> var 0.005/2
    assert s.mean == pytest.approx(0.25)
    assert s.std == pytest.approx(0.05)
    assert s.n_seeds == 3
    assert compare.summarise(frame[frame["split"] == "test"], METRICS)["ndcg@10"].std == pytest.approx(0.025)


def test_one_seed_has_no_std_and_shows_a_dash():
    a = per_user("bprmf", both_splits({7: [0.5, 0.25]}), pop={"valid": {0: 0.1, 1: 0.1}, "test": {0: 0.1, 1: 0.1}})
    comp = compare.compare({"a": a}, "a", "recall@10")
    stat = comp.rows[0].stats["test"]["recall@10"]
    assert stat.mean == pytest.approx(0.375) and math.isnan(stat.std) and stat.n_seeds == 1
    md = compare.render_markdown(comp)
    assert "| **a** (baseline) | 0.3750 | 0.1875 | — | — | — | — |" in md
    data = compare.to_json(comp)
    assert data["rows"]["a"]["test"]["recall@10"] == {"mean": 0.375, "std": None, "n_seeds": 1}
    assert data["rows"]["a"]["seeds"] == [7]


# ------------------------------------------------------------------ paired tests


def test_paired_t_test_matches_the_formula():
    rng = np.random.default_rng(0)
    users = pd.Index(np.arange(40), name="user")
    base = pd.Series(rng.random(40), index=users)
    var = pd.Series(base.to_numpy() + rng.normal(0.05, 0.1, 40), index=users)
    d = var.to_numpy() - base.to_numpy()
    n = len(d)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    p = 2 * stats.t.sf(abs(t), df=n - 1)
    result = paired_test(var, base)
    assert result.t_statistic == pytest.approx(t, rel=1e-10)
    assert result.t_pvalue == pytest.approx(p, rel=1e-8)
    assert result.delta == pytest.approx(d.mean())
    assert result.baseline_mean == pytest.approx(base.mean())
    assert (result.n_users, result.n_dropped) == (40, 0)


def exact_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank test, by enumerating every sign pattern of the
    ranks (distinct, non-zero |d|): 2 · min(P(W+ ≤ w), P(W+ ≥ w)), at most 1."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[d > 0].sum()
    totals = np.array(
        [
            sum(r for r, s in zip(ranks, signs, strict=True) if s)
            for signs in itertools.product([False, True], repeat=len(d))
        ]
    )
    return min(1.0, 2 * min((totals <= w).mean(), (totals >= w).mean()))


@pytest.mark.parametrize(
    "d",
    [
        [0.1, 0.2, 0.3, 0.4, 0.5],  # all positive: p = 2/2^5
        [0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7],
        [-0.05, -0.15, 0.25, -0.35, -0.45, -0.55, 0.65, -0.75],
    ],
)
def test_wilcoxon_matches_its_definition(d):
    d = np.array(d)
    users = pd.Index(np.arange(len(d)) * 3, name="user")
    base = pd.Series(np.linspace(0.2, 0.9, len(d)), index=users)
    result = paired_test(pd.Series(base.to_numpy() + d, index=users), base)
    assert result.wilcoxon_pvalue == pytest.approx(exact_wilcoxon_p(d), rel=1e-9)
    assert result.wilcoxon_statistic == min(
        (np.argsort(np.argsort(np.abs(d))) + 1)[d > 0].sum(), (np.argsort(np.argsort(np.abs(d))) + 1)[d < 0].sum()
    )
    if len(d) == 5:
        assert result.wilcoxon_pvalue == pytest.approx(2 / 32)


def test_identical_results_give_p_one_not_an_error():
    users = pd.Index(range(6), name="user")
    s = pd.Series([0.0, 0.5, 0.5, 1.0, 0.0, 0.25], index=users)
    result = paired_test(s, s.copy())
    assert (result.delta, result.t_pvalue, result.wilcoxon_pvalue, result.n_users) == (0.0, 1.0, 1.0, 6)


def test_fewer_than_two_users_give_no_p_value():
    one = paired_test(pd.Series([0.5], index=[3]), pd.Series([0.25], index=[3]))
    assert one.n_users == 1 and one.delta == 0.25 and math.isnan(one.t_pvalue) and math.isnan(one.wilcoxon_pvalue)
    none = paired_test(pd.Series([0.5], index=[3]), pd.Series([0.25], index=[4]))
    assert (none.n_users, none.n_dropped) == (0, 2) and math.isnan(none.delta)


def test_pairing_averages_seeds_per_user_and_drops_unpaired_users():
    # variant: users 0..5, two seeds; baseline: users 2..7, one seed
    var = per_user(
        "sea",
        {
            (1, "test"): {u: 0.1 * u for u in range(6)},
            (2, "test"): {u: 0.1 * u + 0.2 for u in range(6)},
            (1, "valid"): {0: 0.5},
            (2, "valid"): {0: 0.5},
        },
    )
    base = per_user("bprmf", {(5, "test"): {u: 0.05 * u for u in range(2, 8)}, (5, "valid"): {0: 0.5}})
    comp = compare.compare({"sea": var, "bprmf": base}, "bprmf", "recall@10")
    t = comp.tests["test"]["sea"]["recall@10"]
    # paired users 2..5: variant mean over seeds 0.1u + 0.1, baseline 0.05u -> d = 0.05u + 0.1
    d = np.array([0.05 * u + 0.1 for u in range(2, 6)])
    assert (t.n_users, t.n_dropped) == (4, 4)
    assert t.delta == pytest.approx(d.mean())
    assert t.baseline_mean == pytest.approx(np.mean([0.05 * u for u in range(2, 6)]))
    assert t.t_pvalue == pytest.approx(2 * stats.t.sf(d.mean() / (d.std(ddof=1) / 2), df=3))
    assert "bprmf" not in comp.tests["test"] and set(comp.tests) == {"test"}


# ------------------------------------------------------------------ the comparison and its report


@pytest.fixture
def three_variants() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 30
    pop = {s: dict(enumerate(rng.random(n) * 0.2)) for s in ("valid", "test")}
    frames = {}
    for name, shift in (("lightgcn", 0.0), ("sea", 0.08), ("bprmf", -0.02)):
        values = {
            (seed, split): dict(enumerate(np.clip(rng.random(n) * 0.5 + shift, 0, 1)))
            for seed in (1, 2, 3)
            for split in ("valid", "test")
        }
        frames[name] = per_user(name, values, pop)
    return frames


def test_report_holds_the_numbers(three_variants):
    comp = compare.compare(
        three_variants,
        "lightgcn",
        "recall@10",
        overrides={"sea": ["model.name=sea"]},
        extra_overrides=["train.max_epochs=1"],
    )
    assert [r.name for r in comp.rows] == ["lightgcn", "sea", "bprmf", MOST_POPULAR]
    md = compare.render_markdown(comp, command="python scripts/compare.py --seeds 1 2 3")
    data = compare.to_json(comp)

    sea = three_variants["sea"]
    test = sea[(sea["split"] == "test") & (sea["model"] == "sea")]
    per_seed = test.groupby("seed")["recall@10"].mean().to_numpy()
    mean, std = per_seed.mean(), per_seed.std(ddof=1)
    assert data["rows"]["sea"]["test"]["recall@10"]["mean"] == pytest.approx(mean)
    assert data["rows"]["sea"]["test"]["recall@10"]["std"] == pytest.approx(std)
    assert data["rows"]["sea"]["seeds"] == [1, 2, 3]

    base = three_variants["lightgcn"]
    x = test.groupby("user")["recall@10"].mean().sort_index().to_numpy()
    b = base[(base["split"] == "test") & (base["model"] == "lightgcn")].groupby("user")["recall@10"].mean().to_numpy()
    t_p, w_p = stats.ttest_rel(x, b).pvalue, stats.wilcoxon(x - b).pvalue
    tested = data["tests"]["test"]["sea"]["recall@10"]
    assert tested["t_pvalue"] == pytest.approx(t_p) and tested["wilcoxon_pvalue"] == pytest.approx(w_p)
    assert tested["n_users"] == 30 and tested["delta"] == pytest.approx((x - b).mean())

    sea_line = next(line for line in md.split("## test")[1].splitlines() if line.startswith("| sea |"))
    assert f"{mean:.4f} ± {std:.4f}" in sea_line
    assert f"{(x - b).mean():+.4f} ({(x - b).mean() / b.mean():+.1%})" in sea_line
    assert compare.format_p(t_p) in sea_line and compare.format_p(w_p) in sea_line
    assert sea_line.endswith("| 30 |")
    assert "| **lightgcn** (baseline) |" in md and "| most popular |" in md
    assert md.count("## valid") == 1 and md.count("## test") == 1
    valid_header = md.split("## valid")[1].split("\n")[2]
    assert "p (t-test)" not in valid_header  # significance only on test
    assert "uncorrected" in md and "3 comparisons" in md and "ttest_rel" in md and "wilcoxon" in md
    assert "sea: 1, 2, 3" in md and "`train.max_epochs=1`" in md and "python scripts/compare.py --seeds 1 2 3" in md

    pop = data["rows"][MOST_POPULAR]["test"]["recall@10"]
    assert pop["std"] is None
    pop_rows = base[(base["model"] == MOST_POPULAR) & (base["split"] == "test") & (base["seed"] == 1)]
    assert pop["mean"] == pytest.approx(pop_rows["recall@10"].mean())
    json.dumps(data, allow_nan=False)  # valid JSON: no NaN


def test_most_popular_can_be_the_baseline(three_variants):
    comp = compare.compare(three_variants, MOST_POPULAR, "ndcg@10")
    assert set(comp.tests["test"]) == {"lightgcn", "sea", "bprmf"}
    assert comp.tests["test"]["sea"]["ndcg@10"].delta > 0


def test_most_popular_must_agree_between_variants(three_variants):
    other = three_variants["sea"].copy()
    other.loc[other["model"] == MOST_POPULAR, "recall@10"] += 0.01
    with pytest.raises(DataError, match="most-popular baseline differs"):
        compare.compare({"lightgcn": three_variants["lightgcn"], "sea": other}, "lightgcn", "recall@10")


def test_bad_inputs_are_data_errors(three_variants):
    good = three_variants["sea"]
    with pytest.raises(DataError, match=r"<x>: missing column\(s\) \['user'\]"):
        compare.validate(good.drop(columns="user"), "<x>")
    with pytest.raises(DataError, match="duplicate rows"):
        compare.validate(pd.concat([good, good.iloc[:1]]), "<x>")
    with pytest.raises(DataError, match="non-finite"):
        compare.validate(good.assign(**{"recall@10": np.nan}), "<x>")
    with pytest.raises(DataError, match="one trained model"):
        compare.validate(pd.concat([good, good[good["model"] == "sea"].assign(model="other")]), "<x>")
    with pytest.raises(DataError, match="not a readable parquet file"):
        compare.read_per_user(b"not parquet", "exp abc:reports/per_user.parquet")
    buf = io.BytesIO()
    good.to_parquet(buf)
    pd.testing.assert_frame_equal(compare.read_per_user(buf.getvalue(), "<x>"), good)
    with pytest.raises(DataError, match="selection metric 'map@20'"):
        compare.compare(three_variants, "lightgcn", "map@20")
    with pytest.raises(DataError, match="baseline 'vbpr'"):
        compare.compare(three_variants, "vbpr", "recall@10")
    with pytest.raises(DataError, match="has metrics"):
        compare.compare({"a": good, "b": good.drop(columns="ndcg@10")}, "a", "recall@10")


# ------------------------------------------------------------------ scripts/compare.py's arguments


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_queues_each_variant_with_seeds_and_extras():
    script = load_script()
    queued = script.experiment_overrides(["vbpr", "vbpr_sea"], [1, 2], ["train.max_epochs=1"])
    assert queued == {
        "cmp-vbpr": ["model.name=vbpr", "vbpr.separation=none", "train.seeds=[1,2]", "train.max_epochs=1"],
        "cmp-vbpr_sea": ["model.name=vbpr", "vbpr.separation=sea", "train.seeds=[1,2]", "train.max_epochs=1"],
    }
    args = script.parse_args([])
    assert args.variants == list(script.VARIANTS)  # every variant by default
    assert set(REGISTRY) <= set(args.variants), "a model without a variant of its own"
    assert (args.baseline, args.seeds, args.extra) == ("lightgcn", [1, 2, 3], [])
    assert script.parse_args(["--variants", "sea", "bprmf", "--baseline", "most_popular"]).baseline == "most_popular"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variants", "sea", "gru4rec"], "unknown variant"),
        (["--variants", "sea", "bprmf"], "--baseline lightgcn is not among"),
        (["--variants", "sea", "sea", "--baseline", "sea"], "twice"),
    ],
)
def test_script_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_script().parse_args(argv)
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ the runner on a tiny repo


TINY_STAGE = """\
import json, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))
if p["a"] < 0:
    sys.exit("negative a")
if p["a"] == 50:
    time.sleep(600)
json.dump({"a": p["a"], "b": p["b"]}, open("out.json", "w"))
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> Path:
    """A git+DVC repo with one stage writing params a and b to a git-tracked out.json."""
    git_repo(tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("a: 1\nb: x\n")
    (tmp_path / "stage.py").write_text(TINY_STAGE)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "s": {
                        "cmd": f"{sys.executable} stage.py",
                        "deps": ["stage.py"],
                        "params": ["a", "b"],
                        "metrics": [{"out.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    run(["dvc", "repro", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "tiny"], tmp_path)
    monkeypatch.setenv("PATH", env()["PATH"])
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    return tmp_path


@pytest.mark.slow
def test_runner_queues_runs_and_reads_back(tiny: Path):
    commits = experiments.run_variants({"t-two": ["a=2"], "t-three": ["a=3", "b=y"]}, cwd=tiny)
    assert set(commits) == {"t-two", "t-three"}
    assert json.loads(experiments.show_file(commits["t-three"], "out.json", tiny)) == {"a": 3, "b": "y"}
    assert json.loads(experiments.show_file(commits["t-two"], "out.json", tiny)) == {"a": 2, "b": "x"}
    assert json.loads((tiny / "out.json").read_text()) == {"a": 1, "b": "x"}  # workspace untouched
    assert "up to date" in run(["dvc", "repro"], tiny).stdout
    with pytest.raises(experiments.ExperimentError, match="not in commit"):
        experiments.show_file(commits["t-two"], "missing.json", tiny)

    # the same names again replace the earlier experiments
    again = experiments.run_variants({"t-two": ["a=20"]}, cwd=tiny)
    assert json.loads(experiments.show_file(again["t-two"], "out.json", tiny))["a"] == 20
    assert experiments.experiment_commit("t-two", tiny) == again["t-two"] != commits["t-two"]

    # a commit made after queueing (while the experiments run) does not lose them
    base = experiments.queue({"t-four": ["a=4"]}, tiny)
    (tiny / "notes.txt").write_text("committed while the experiments ran\n")
    run(["git", "add", "notes.txt"], tiny)
    run(["git", "commit", "-qm", "later"], tiny)
    four = experiments.run_all(["t-four"], tiny, baseline=base)
    assert json.loads(experiments.show_file(four["t-four"], "out.json", tiny))["a"] == 4

    # a failing experiment is reported by name (dvc itself exits 0)
    with pytest.raises(experiments.ExperimentError, match=r"no finished experiment \['t-bad'\]"):
        experiments.run_variants({"t-bad": ["a=-1"]}, cwd=tiny)
    tasks, active = experiments.queue_status(tiny)
    assert active == 0
    assert {(t.name, t.status) for t in tasks} >= {("t-bad", "Failed"), ("t-three", "Success")}


@pytest.mark.slow
def test_queued_leftovers_of_the_same_name_are_removed(tiny: Path):
    run(["dvc", "exp", "run", "--queue", "-n", "t-left", "-S", "a=5"], tiny)
    run(["dvc", "exp", "run", "--queue", "-n", "t-other", "-S", "a=6"], tiny)
    experiments.clean_queue(["t-left"], tiny)
    queued = {t.name for t in experiments.queue_status(tiny)[0] if t.status == "Queued"}
    assert queued == {"t-other"}


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (a crash of everything it started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the crashed run's processes")
def test_a_task_left_running_by_a_crash_is_cleared(tiny: Path):
    """A run killed mid-experiment leaves its task "Running" with no worker; the next run
    clears it instead of waiting for it forever."""
    run(["dvc", "exp", "run", "--queue", "-n", "t-crash", "-S", "a=50"], tiny)
    crashed = subprocess.Popen(
        ["dvc", "exp", "run", "--run-all"],
        cwd=tiny,
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # a guard against hanging, not a timing check
        while not any(t.status == "Running" for t in experiments.queue_status(tiny)[0]):
            assert time.monotonic() < deadline and crashed.poll() is None, "the experiment never started"
            time.sleep(1)
    finally:
        kill_session(crashed.pid)
        crashed.wait()
    tasks, active = experiments.queue_status(tiny)
    assert active == 0 and [(t.name, t.status) for t in tasks] == [("t-crash", "Running")]

    experiments.clean_queue(["t-next"], tiny)
    assert experiments.queue_status(tiny)[0] == []
    commits = experiments.run_variants({"t-next": ["a=4"]}, cwd=tiny)
    assert json.loads(experiments.show_file(commits["t-next"], "out.json", tiny))["a"] == 4


def test_runner_refuses_bad_names_and_overrides(tiny: Path):
    from sea.errors import ConfigError

    with pytest.raises(ConfigError, match="experiment name"):
        experiments.check_variants({"bad name": []})
    with pytest.raises(ConfigError, match="not of the form"):
        experiments.check_variants({"ok": ["a"]})
    experiments.check_variants({"cmp-vbpr_sea": ["vbpr.separation=sea", "train.seeds=[1,2]"]})


def test_runner_needs_a_git_identity(tiny: Path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    run(["git", "config", "--unset", "user.email"], tiny)
    with pytest.raises(experiments.ExperimentError, match="git identity"):
        experiments.check_ready(tiny)


# ------------------------------------------------------------------ end to end


def copy_repo(dest: Path) -> Path:
    """A git repository holding the current tree (tracked and untracked, not ignored)."""
    copy_tree(ROOT, dest)
    for f in ("dvc.lock", "reports/metrics.json"):  # start from a never-run pipeline
        (dest / f).unlink(missing_ok=True)
    return dest


@pytest.mark.slow
def test_compare_end_to_end(tmp_path: Path):
    """Two variants × two seeds as queued experiments; the report; the workspace unchanged."""
    project = copy_repo(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["max_epochs"] = 1  # the workspace run only has to exist, not to be good
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "copy"], project)
    lock = (project / "dvc.lock").read_bytes()

    proc = run(
        [
            sys.executable,
            "scripts/compare.py",
            "--variants",
            "bprmf",
            "lightgcn",
            "--seeds",
            "1",
            "2",
            "-S",
            "train.max_epochs=1",
        ],
        project,
    )
    for upstream in ("download", "graph", "text_features", "image_features"):
        assert f"Running stage '{upstream}'" not in proc.stdout, proc.stdout
    data = json.loads((project / "reports/compare.json").read_text())
    md = (project / "reports/compare.md").read_text()
    assert list(data["rows"]) == ["bprmf", "lightgcn", MOST_POPULAR]
    assert data["baseline"] == "lightgcn" and data["select"] == params["eval"]["select"]
    for v in ("bprmf", "lightgcn"):
        assert data["rows"][v]["seeds"] == [1, 2]
        assert data["rows"][v]["test"]["recall@20"]["std"] is not None
        assert 0 <= data["rows"][v]["test"]["recall@20"]["mean"] <= 1
    t = data["tests"]["test"]["bprmf"][data["select"]]
    assert t["n_users"] > 100 and t["n_dropped"] == 0 and 0 <= t["t_pvalue"] <= 1
    assert "| bprmf |" in md and "| **lightgcn** (baseline) |" in md and "| most popular |" in md
    # the figures and their data, from the experiments' per-user results and histories
    plots = project / "reports/compare_plots"
    for name in ("selection", "deltas", "curves"):
        assert (plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG" and f"(compare_plots/{name}.png)" in md
    deltas = pd.read_csv(plots / "deltas.csv").set_index("variant")
    assert set(deltas.index) == {"bprmf", MOST_POPULAR} and deltas.loc["bprmf", "n_users"] == t["n_users"]
    assert math.isclose(deltas.loc["bprmf", "mean"], t["delta"], rel_tol=1e-6)
    curves = pd.read_csv(plots / "curves.csv")
    assert sorted(set(zip(curves["variant"], curves["seed"]))) == [
        ("bprmf", 1),
        ("bprmf", 2),
        ("lightgcn", 1),
        ("lightgcn", 2),
    ]

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout, again.stdout
    assert (project / "dvc.lock").read_bytes() == lock

    # the report again from the finished experiments, without training
    (project / "reports/compare.json").unlink()
    run(
        [
            sys.executable,
            "scripts/compare.py",
            "--variants",
            "bprmf",
            "lightgcn",
            "--seeds",
            "1",
            "2",
            "--collect-only",
        ],
        project,
    )
    assert json.loads((project / "reports/compare.json").read_text())["rows"] == data["rows"]
