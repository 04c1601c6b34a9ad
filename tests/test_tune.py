"""The hyper-parameter search (sea/tune.py, scripts/tune.py) with real Optuna and real
training on a hand-sized graph: spaces and their one-line refusals, the grid, a killed
search resumed, no test metrics in the search, the selection over seeds, the pruner, the
reports and compare.py --tuned."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from sea import tune
from sea.config import load_params
from sea.errors import ConfigError
from sea.models.base import REGISTRY, GraphData
from tests.test_trainer import planted_interactions, write_processed

ROOT = Path(__file__).resolve().parents[1]


def params_for(space: dict | None = None, **settings) -> dict:
    """BPR-MF on the planted graph; ``settings`` go to the tune section."""
    return {
        "model": {"name": "bprmf"},
        "bprmf": {"embedding_dim": 8},
        "train": {"device": "cpu", "lr": 0.05, "batch_size": 64, "max_epochs": 6, "patience": 50, "seed": 0},
        "eval": {"topk": [5, 10], "select": "recall@10"},
        "tune": {"sampler": "grid", "pruner": "none", "top": 1, "seeds": [1]}
        | settings
        | {"spaces": {"bprmf": space or {"reg_weight": [0.0, 0.1], "embedding_dim": [4, 8]}}},
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_processed(tmp_path, planted_interactions(), 30)
    return tmp_path


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ------------------------------------------------------------------ spaces


def test_the_committed_params_and_the_published_grids():
    config = tune.TuneConfig.from_dict(load_params(ROOT / "params.yaml").get("tune"), "tune")
    sizes = {m: len(tune.grid_points(config.space(m))) for m in config.spaces}
    assert sizes["lightgcn"] == 20 and sizes["bprmf"] == sizes["vbpr"] == 7 and sizes["freedom"] == 8
    assert config.space("lightgcn")["reg_weight"].values == (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert config.space("freedom")["reg_weight"].values == (0.0, 1e-5, 1e-4, 1e-3)
    assert {"bprmf", "lightgcn", "vbpr", "freedom", "sea", "lirdrec", "simplex"} <= set(config.spaces)


def test_every_registered_model_has_a_documented_space_that_params_yaml_holds():
    """Each model's own grid (its ``search_space``) is non-empty, valid for its section,
    written out in params.yaml's tune.spaces, and in docs/tuning.md's table; every model
    has its tune@<model> stage in tuning/dvc.yaml."""
    committed = load_params(ROOT / "params.yaml")["tune"]["spaces"]
    table = (ROOT / "docs/tuning.md").read_text()
    stages = yaml.safe_load((ROOT / "tuning/dvc.yaml").read_text())["stages"]["tune"]["foreach"]
    assert set(REGISTRY) == set(tune.default_spaces()) == set(committed) == set(stages)
    config = tune.TuneConfig.from_dict({}, "tune")
    for name, cls in REGISTRY.items():
        assert committed[name] == cls.search_space, name
        assert 2 <= len(tune.grid_points(config.space(name))) <= 20, name
        assert f"\n| {name} | " in table, name


@pytest.mark.parametrize(
    "spaces, sampler, message",
    [
        ({"nope": {"x": [1]}}, "grid", "spaces.nope: 'nope' is not a known model"),
        ({"bprmf": {"layers": [1, 2]}}, "grid", "spaces.bprmf.layers: 'layers' is not a field of [bprmf]"),
        ({"bprmf": {"reg_weight": []}}, "grid", "spaces.bprmf.reg_weight: the list of values is empty"),
        ({"bprmf": {"reg_weight": {"low": 1.0, "high": 0.1}}}, "tpe", "low 1.0 > high 0.1"),
        (
            {"bprmf": {"reg_weight": [0.1, -1.0]}},
            "grid",
            "{reg_weight: -1.0} is refused: [bprmf]: reg_weight must be >= 0",
        ),
        ({"bprmf": {"reg_weight": {"low": 0.0, "high": 1.0}}}, "grid", "the grid sampler needs lists"),
        ({"bprmf": {"train.seed": [1, 2]}}, "grid", "train.seed is not something a search varies"),
        ({"bprmf": {"eval.select": ["recall@5"]}}, "grid", "names section 'eval'"),
        ({"bprmf": {"reg_weight": 0.1}}, "grid", "expected a list of values or {low, high, log}"),
    ],
)
def test_a_bad_space_is_one_line(spaces, sampler, message):
    params = params_for() | {"tune": {"sampler": sampler, "spaces": spaces}}
    with pytest.raises(ConfigError) as e:
        tune.Search.prepare(params, "bprmf")
    text = str(e.value)
    assert text.startswith("params.yaml [tune]: ") and "\n" not in text
    assert message in text


def test_points_are_checked_with_the_whole_setup():
    # each value alone is fine for [train]; sampler cross_batch needs loss.kind softmax
    params = params_for({"train.sampler": ["uniform", "cross_batch"]})
    with pytest.raises(ConfigError, match=r"^params.yaml \[tune\]: spaces.bprmf: .*cross_batch.* is refused"):
        tune.Search.prepare(params, "bprmf")


def test_ranges_are_sampled_in_their_type(root):
    space = {"reg_weight": {"low": 1e-4, "high": 1e-1, "log": True}, "embedding_dim": {"low": 4, "high": 8}}
    params = params_for(space)
    search = tune.Search.prepare(params, "bprmf", root=root, sampler="random", trials=2)
    assert search.space["embedding_dim"].integer and not search.space["reg_weight"].integer
    tune.run_worker(search)
    trials = search.study().get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    assert all(isinstance(t.params["embedding_dim"], int) and 1e-4 <= t.params["reg_weight"] <= 0.1 for t in trials)


# ------------------------------------------------------------------ the grid


def test_a_2x2_grid_runs_its_4_points_once(root):
    search = tune.Search.prepare(params_for(), "bprmf", root=root)
    assert search.total == 4
    tune.run_worker(search)
    study = search.study()
    assert states(study) == {"COMPLETE": 4}
    points = sorted((t.params["reg_weight"], t.params["embedding_dim"]) for t in study.trials)
    assert points == [(0.0, 4), (0.0, 8), (0.1, 4), (0.1, 8)]
    assert (root / search.journal).is_file() and search.journal.parts[:3] == ("data", "cache", "tuning")
    curve = study.trials[0].user_attrs["curve"]
    assert [e for e, _ in curve] == list(range(1, 7))  # every evaluation, on validation
    tune.run_worker(search)  # run again: nothing left to do
    assert states(search.study()) == {"COMPLETE": 4}


def completed(search: tune.Search) -> list:
    """The completed trials, read without writing to the journal (a study not yet created: none)."""
    try:
        study = optuna.load_study(study_name=search.study_name, storage=search.storage())
    except KeyError:
        return []
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_a_killed_search_resumes_with_the_missing_trials_only(root):
    params = params_for({"reg_weight": [0.0, 0.01, 0.1], "embedding_dim": [4, 8]})  # 6 points of about 1 s (40 epochs)
    params["train"] |= {"max_epochs": 40, "patience": 1000}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    search = tune.Search.prepare(params, "bprmf", root=root)
    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "tune.py"), "--model", "bprmf"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    journal, deadline = root / search.journal, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if journal.is_file() and completed(search):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    before = {t.number: (t.params, t.value) for t in search.study().get_trials(states=(TrialState.COMPLETE,))}
    assert 1 <= len(before) < 6, "the search ended before it could be killed"

    running = [t.number for t in search.study().get_trials(states=(TrialState.RUNNING,))]
    with tune.study_lock(search):  # as scripts/tune.py does: no worker runs; a lock the kill left is removed
        assert tune.recover(search) == running  # what the kill interrupted
        assert tune.recover(search) == []  # noted once
    tune.run_worker(search)
    study = search.study()
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.params["reg_weight"], t.params["embedding_dim"]) for t in complete) == sorted(
        (r, d) for r in (0.0, 0.01, 0.1) for d in (4, 8)
    )  # every point once: the finished ones were not run again
    assert {t.number: (t.params, t.value) for t in complete if t.number in before} == before
    assert states(study) == {"COMPLETE": 6} | ({"RUNNING": len(running)} if running else {})
    assert study.user_attrs.get("interrupted", []) == running


# ------------------------------------------------------------------ no test metrics in the search


class NoTest(dict):
    """The CSR matrices of the splits; reading the test split's raises unless allowed."""

    allowed = False

    def __getitem__(self, split):
        if split == "test" and not NoTest.allowed:
            raise AssertionError("the search read the test split")
        return super().__getitem__(split)


def guarded(data: GraphData) -> GraphData:
    data.csr = NoTest(data.csr)
    return data


def test_nothing_reads_the_test_split_before_the_pick(root, monkeypatch):
    monkeypatch.setattr(NoTest, "allowed", False)
    search = tune.Search.prepare(params_for(top=2, seeds=[1, 2]), "bprmf", root=root)
    data = guarded(search.load_data())
    tune.run_worker(search, data=data)
    study = search.study()
    pick, candidates = tune.select(search, study, data, log=lambda _: None)
    assert len(candidates) == 2 and all(r.test is None for c in candidates for r in c.runs)
    with pytest.raises(AssertionError, match="read the test split"):
        tune.test_metrics(search, pick, data)  # the guard works
    NoTest.allowed = True
    tune.test_metrics(search, pick, data)
    assert all({"recall@5", "recall@10", "ndcg@5", "ndcg@10"} <= set(r.test) for r in pick.runs)

    rep = tune.report(search, study, pick, candidates)
    assert "test" not in json.dumps(rep["trials"]) and "test" not in json.dumps(rep["selection"]["candidates"])
    json_path, md_path = tune.write_reports(rep, root)
    assert str(root) not in json_path.read_text() and str(root) not in md_path.read_text()  # no absolute paths
    md = md_path.read_text()
    assert "dvc exp run -S model.name=bprmf -S bprmf.reg_weight=" in md and "'train.seeds=[1,2]'" in md
    assert len(json.loads(json_path.read_text())["trials"]) == 4


# ------------------------------------------------------------------ the selection


def test_the_pick_is_the_best_mean_validation_over_seeds(root, monkeypatch):
    search = tune.Search.prepare(params_for(top=3, seeds=[1, 2, 3]), "bprmf", root=root)
    study = optuna.create_study(direction="maximize")
    dist = {"reg_weight": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for value, reg in [(0.9, 0.1), (0.8, 0.2), (0.7, 0.3), (0.6, 0.4)]:  # trial 0 is the best single run
        study.add_trial(optuna.trial.create_trial(params={"reg_weight": reg}, distributions=dist, value=value))
    by_seed = {0.1: [0.9, 0.1, 0.1], 0.2: [0.5, 0.5, 0.6], 0.3: [0.5, 0.5, 0.5], 0.4: [1.0, 1.0, 1.0]}
    trained = []

    def fake(search, data, values, seed):
        trained.append(values["reg_weight"])
        return tune.SeedRun(seed, 1, 1, {"recall@10": by_seed[values["reg_weight"]][seed - 1]}, {})

    monkeypatch.setattr(tune, "train_seed", fake)
    pick, candidates = tune.select(search, study, data=None, log=lambda _: None)
    assert sorted(set(trained)) == [0.1, 0.2, 0.3]  # the top 3 trials only (0.4 ranked 4th)
    assert pick.trial == 1 and pick.values == {"reg_weight": 0.2}  # mean 0.533 beats 0.367 and 0.5
    assert [c.trial for c in candidates] == [0, 1, 2]


def test_a_killed_selection_resumes_without_retraining_its_finished_seeds(root):
    """Each finished re-run is kept beside the study: a second selection trains only the
    seeds whose file is missing or unreadable, and picks the same, with the same states."""
    search = tune.Search.prepare(params_for(top=2, seeds=[1, 2]), "bprmf", root=root)
    data = search.load_data()
    tune.run_worker(search, data=data)
    study = search.study()
    pick, candidates = tune.select(search, study, data, log=lambda _: None)
    files = {(c.trial, r.seed): tune.rerun_file(search, c.trial, r.seed) for c in candidates for r in c.runs}
    assert len(files) == 4 and all(f.is_file() for f in files.values())
    (lost, broken, *kept) = sorted(files)
    files[lost].unlink()  # as a kill before its write
    files[broken].write_bytes(b"not a safetensors file")
    stamps = {k: files[k].stat().st_mtime_ns for k in kept}

    again, candidates2 = tune.select(search, study, data, log=lambda _: None)
    assert {k: files[k].stat().st_mtime_ns for k in kept} == stamps  # read, not trained again
    assert files[lost].is_file() and files[broken].read_bytes()[:8] != b"not a sa"
    assert (again.trial, again.values) == (pick.trial, pick.values)
    assert [[r.valid for r in c.runs] for c in candidates2] == [[r.valid for r in c.runs] for c in candidates]
    for r1, r2 in zip(pick.runs, again.runs):
        assert r1.state.keys() == r2.state.keys() and all(torch.equal(r1.state[k], r2.state[k]) for k in r1.state)


# ------------------------------------------------------------------ pruning


def test_the_median_pruner_stops_a_clearly_worse_trial(root):
    params = params_for({"train.lr": [0.05, 1e-9]}, pruner="median", startup_trials=1, warmup_epochs=0)
    params["train"] |= {"max_epochs": 8}
    search = tune.Search.prepare(params, "bprmf", root=root)
    assert isinstance(search.pruner(), optuna.pruners.MedianPruner)
    study = optuna.create_study(direction="maximize", pruner=search.pruner())
    study.enqueue_trial({"train.lr": 0.05})  # a learning trial first, then one that cannot learn
    study.enqueue_trial({"train.lr": 1e-9})
    study.optimize(tune.Objective(search, search.load_data()), n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and good.user_attrs["epochs"] == 8
    assert bad.state == TrialState.PRUNED and bad.user_attrs["epochs"] < 8
    assert len(bad.user_attrs["curve"]) == bad.user_attrs["epochs"]


def test_fit_without_on_eval_is_unchanged(root):
    from sea.train import build_model, fit, seed_everything

    search = tune.Search.prepare(params_for(), "bprmf", root=root)
    data, setup = search.load_data(), search.setup({}, trial=True)

    def once(**kwargs):
        seed_everything(3)
        result = fit(build_model(data, setup), data, setup, 3, log=lambda _: None, **kwargs)
        return result.history, result.best_state

    (h1, s1), (h2, s2) = once(), once(on_eval=lambda epoch, valid: False, progress=False)
    assert h1 == h2 and all(torch.equal(s1[k], s2[k]) for k in s1)


# ------------------------------------------------------------------ compare.py --tuned


def test_compare_takes_the_tuned_configuration(tmp_path):
    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "reports" / "tuning").mkdir(parents=True)
    overrides = ["model.name=vbpr", "vbpr.reg_weight=0.01", "vbpr.separation=sea"]
    selected = {"trial": 4, "overrides": overrides}
    (tmp_path / "reports/tuning/vbpr.json").write_text(json.dumps({"selection": {"selected": selected}}))
    tuned = script.tuned_overrides(["vbpr", "vbpr_sea", "lightgcn"], tmp_path)
    assert list(tuned) == ["vbpr"]  # vbpr_sea sets its own separation; lightgcn has no report
    assert tuned["vbpr"]["overrides"] == ["vbpr.reg_weight=0.01"]  # the variant's own keys stay its own
    queued = script.experiment_overrides(["vbpr", "lightgcn"], [1], [], {"vbpr": tuned["vbpr"]["overrides"]})
    assert queued["cmp-vbpr"] == ["model.name=vbpr", "vbpr.separation=none", "vbpr.reg_weight=0.01", "train.seeds=[1]"]
    assert queued["cmp-lightgcn"] == ["model.name=lightgcn", "train.seeds=[1]"]
    note = script.tuned_note(["vbpr", "lightgcn"], tuned)
    assert "vbpr (" in note and "trial 4" in note and "params.yaml's values: lightgcn" in note


# ------------------------------------------------------------------ the command


def test_the_command_with_two_worker_processes(root):
    params = params_for(top=2, seeds=[1, 2], processes=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--model", "bprmf"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dvc exp run -S model.name=bprmf" in done.stdout
    rep = json.loads((root / "reports/tuning/bprmf.json").read_text())
    trials = [t for t in rep["trials"] if "duplicate_of" not in t]
    assert sorted((t["params"]["reg_weight"], t["params"]["embedding_dim"]) for t in trials) == [
        (0.0, 4),
        (0.0, 8),
        (0.1, 4),
        (0.1, 8),
    ]
    assert {t["state"] for t in trials} == {"complete"} and rep["settings"]["processes"] == 2
    assert len(rep["selection"]["candidates"]) == 2 and set(rep["selection"]["selected"]["seeds"]) == {"1", "2"}
    assert (root / "reports/tuning/bprmf.md").is_file()
    bad = subprocess.run([*command, "--processes", "0"], cwd=root, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["tune failed: --processes must be at least 1"]
