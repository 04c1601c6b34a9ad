"""The real pipeline: stage scripts on bad input, and one end-to-end `dvc repro` in a
temporary copy of the repository (then a no-op repro, an experiment and a metrics diff, and
a second clone fed through a DVC remote)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from shell import copy_tree, run

from sea import experiments

ROOT = Path(__file__).resolve().parents[1]


STAGES = ("download", "graph", "text_features", "image_features", "export_mmrec", "train", "evaluate")


def stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / "pipeline" / f"{name}.py")], cwd, check=False)


def write_params(cwd: Path, **dataset) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = dataset
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def graph_failure(cwd: Path, reviews: Path, k_core: int | None = None) -> str:
    """Download ``reviews``, run the graph stage, check it failed leaving nothing; its stderr."""
    write_params(cwd, name="bad", reviews_url=str(reviews), reviews_sha256=sha(reviews))
    if k_core is not None:
        params = yaml.safe_load((cwd / "params.yaml").read_text())
        params["graph"]["k_core"] = k_core
        (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage("download", cwd).returncode == 0
    proc = stage("graph", cwd)
    assert proc.returncode != 0
    assert leftovers(cwd / "data/processed") == []
    return proc.stderr


# ------------------------------------------------------------ bad input, stage by stage


def test_download_with_wrong_sha256_leaves_nothing(tmp_path):
    src = ROOT / "data/sample/reviews_Sample_5.json.gz"
    write_params(tmp_path, name="bad", reviews_url=str(src), reviews_sha256="0" * 64)
    proc = stage("download", tmp_path)
    assert proc.returncode != 0
    assert "sha256 mismatch" in proc.stderr and "reviews_Sample_5.json.gz" in proc.stderr
    assert leftovers(tmp_path / "data/raw") == []


def test_download_of_unreachable_url_fails_clearly(tmp_path):
    write_params(tmp_path, name="gone", reviews_url="http://127.0.0.1:9/reviews.json.gz")
    proc = stage("download", tmp_path)
    assert proc.returncode != 0
    assert "http://127.0.0.1:9/reviews.json.gz" in proc.stderr
    assert leftovers(tmp_path / "data/raw") == []


def test_download_over_http_then_graph(tmp_path, serve_dir):
    """The download stage fetches over real HTTP and the graph stage parses what arrived."""
    src = ROOT / "data/sample"
    base = serve_dir(src)
    reviews, meta = src / "reviews_Sample_5.json.gz", src / "meta_Sample.json.gz"
    write_params(
        tmp_path,
        name="http",
        reviews_url=f"{base}/{reviews.name}",
        reviews_sha256=sha(reviews),
        meta_url=f"{base}/{meta.name}",
        meta_sha256=sha(meta),
    )
    assert stage("download", tmp_path).returncode == 0
    raw = tmp_path / "data/raw/http"
    assert sha(raw / reviews.name) == sha(reviews)
    assert json.loads((raw / "SOURCE.json").read_text())["meta"]["sha256"] == sha(meta)
    proc = stage("graph", tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    items = pd.read_parquet(tmp_path / "data/processed/items.parquet")
    # relative image links resolve against the metadata's own (http) URL
    assert items["image_url"].dropna().str.startswith(f"{base}/images/").all()


def test_graph_on_truncated_gzip_names_the_file(tmp_path, amazon_real):
    stderr = graph_failure(tmp_path, amazon_real / "2014/digital_music/reviews_Digital_Music_5.truncated.json.gz")
    assert "reviews_Digital_Music_5.truncated.json.gz" in stderr and "allow_truncated" in stderr


def test_graph_with_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "reviews_bad.json.gz"
    good = json.dumps({"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1005177600})
    bad.write_bytes(gzip.compress(f"{good}\n{good}\n{{not json\n".encode(), mtime=0))
    assert "reviews_bad.json.gz:3" in graph_failure(tmp_path, bad)


def test_graph_that_k_core_empties(tmp_path, amazon_real):
    stderr = graph_failure(tmp_path, amazon_real / "2018/all_beauty/All_Beauty_5.json.gz", k_core=50)
    assert "All_Beauty_5.json.gz" in stderr and "50-core" in stderr


@pytest.mark.parametrize(
    "name, section, values, message",
    [
        ("graph", "split", {"seed": -1}, "params.yaml [split]: seed must be >= 0"),
        ("graph", "dataset", {"name": ".."}, "params.yaml [dataset]: name must be one plain folder name"),
        ("text_features", "features", {"text": {"batch_size": -1}}, "params.yaml [features.text]: batch_size"),
        ("train", "eval", {"select": "ndcg@50"}, "params.yaml [eval]: select 'ndcg@50' needs 50 in topk"),
    ],
)
def test_bad_param_is_one_line_before_any_work(tmp_path, name, section, values, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in values.items():
        if isinstance(value, dict):
            params[section][key] |= value
        else:
            params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage(name, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"{name} stage failed: " + proc.stderr.split("failed: ", 1)[1].strip()]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(tmp_path / "data") == [] and leftovers(tmp_path / "models") == []


def test_unknown_param_is_rejected(tmp_path):
    write_params(tmp_path, name="x", reviews_url="a.json", colour="red")
    proc = stage("download", tmp_path)
    assert proc.returncode != 0 and "unknown key" in proc.stderr and "colour" in proc.stderr


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The current tree (tracked and untracked, not ignored) as a fresh git repository at
    another path, with the committed dvc.lock and reports: what a new user's clone holds."""
    dest = copy_tree(ROOT, tmp_path_factory.mktemp("elsewhere") / "a clone")
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


def git_status(cwd: Path) -> str:
    return run(["git", "status", "--porcelain"], cwd).stdout


@pytest.mark.slow
def test_fresh_clone_reproduces_the_committed_outputs_byte_for_byte(project):
    """`dvc repro` on a clone at another path rebuilds exactly the committed dvc.lock and
    reports (same hashes of every cached output), leaves git and DVC clean, and a forced
    re-run at another thread count (compute.threads: 1, not a dependency) gives the same
    bytes again: with the portable kernels the committed outputs come out on any x86-64 CPU
    with AVX2 (tests/test_cross_cpu.py), at any thread count."""
    assert git_status(project) == ""
    proc = run(["dvc", "repro"], project)
    # every stage with cached outputs runs; evaluate's outputs are in git and its inputs
    # come out byte-identical to dvc.lock, so DVC rightly skips it
    for name in STAGES[:-1]:
        assert f"Running stage '{name}'" in proc.stdout, proc.stdout
    assert "Stage 'evaluate' didn't change, skipping" in proc.stdout, proc.stdout
    assert git_status(project) == "", run(["git", "diff"], project).stdout[-3000:]
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], project).stdout

    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  threads: auto", "  threads: 1", 1))
    forced = run(["dvc", "repro", "-f"], project)
    assert "Running stage 'evaluate'" in forced.stdout, forced.stdout
    assert git_status(project) == " M params.yaml\n", run(["git", "diff"], project).stdout[-3000:]
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], project).stdout

    # switching commits and checking out the data works without "Checkout failed"
    checkout = run(["dvc", "checkout"], project)
    assert "failed" not in (checkout.stdout + checkout.stderr).lower()


@pytest.mark.slow
def test_experiments_and_branches(project):
    run(["dvc", "repro"], project)  # a no-op after the test above; the whole run alone
    metrics = json.loads((project / "reports/metrics.json").read_text())
    detail = json.loads((project / "reports/metrics_detail.json").read_text())
    model, pop = metrics["test"], detail["most_popular"]["test"]
    assert set(model) >= {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20)}
    assert model["recall@20"] > 1.3 * pop["recall@20"], (model, pop)
    report = (project / "reports/report.md").read_text()
    assert "randomly initialised" in report and "no pretrained visual meaning" in report
    assert (project / "reports/learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout
    assert "up to date" in again.stdout

    # a queued experiment runs in a temporary copy elsewhere: only train and evaluate re-run
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline", "--allow-empty"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "club01", "-S", "loss.club_weight=0.1"], project)
    run(["dvc", "exp", "run", "--run-all"], project)
    logs = run(["dvc", "queue", "logs", "club01"], project).stdout
    assert "Running stage 'train'" in logs and "Running stage 'evaluate'" in logs, logs
    for upstream in STAGES[:5]:
        assert f"Running stage '{upstream}'" not in logs, logs

    # the same experiment on a branch in the workspace, then compare branches
    run(["git", "checkout", "-qb", "club"], project)
    exp = run(["dvc", "exp", "run", "-S", "loss.club_weight=0.1"], project)
    # the queued run above trained these very params: DVC's run cache may restore them
    for name in ("train", "evaluate"):
        assert f"Running stage '{name}'" in exp.stdout or f"Stage '{name}' is cached - skipping run" in exp.stdout, (
            exp.stdout
        )
    for upstream in STAGES[:5]:
        assert f"Running stage '{upstream}'" not in exp.stdout, exp.stdout
    assert yaml.safe_load((project / "params.yaml").read_text())["loss"]["club_weight"] == 0.1
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "club_weight 0.1"], project)
    diff = run(["dvc", "metrics", "diff", "main", "club", "--json"], project)
    changes = json.loads(diff.stdout)["reports/metrics.json"]
    assert any(v.get("diff") for v in changes.values()), changes
    run(["git", "checkout", "-q", "main"], project)
    checkout = run(["dvc", "checkout"], project)
    assert "failed" not in (checkout.stdout + checkout.stderr).lower()
    assert git_status(project) == ""


@pytest.mark.slow
def test_a_search_is_a_dvc_stage_outside_the_main_pipeline(project):
    """`dvc repro tuning/dvc.yaml:tune@bprmf` runs the search as a DVC stage of its own:
    reports without timings, recorded in tuning/dvc.lock, a no-op when nothing changed;
    the main pipeline neither runs it nor re-runs anything because of it."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"] |= {"top": 1, "seeds": [1], "max_epochs": 2, "spaces": {"bprmf": {"reg_weight": [1e-1, 1e-3]}}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    target = "tuning/dvc.yaml:tune@bprmf"
    first = run(["dvc", "repro", target], project)
    assert f"Running stage '{target}'" in first.stdout, first.stdout
    report = json.loads((project / "reports/tuning/bprmf.json").read_text())
    assert sorted(t["params"]["reg_weight"] for t in report["trials"]) == [0.001, 0.1]
    assert all("seconds" not in t for t in report["trials"])
    timings = json.loads((project / "logs/tuning/bprmf.json").read_text())
    assert set(timings["trial_seconds"]) == {"0", "1"}
    lock = yaml.safe_load((project / "tuning/dvc.lock").read_text())["stages"]["tune@bprmf"]
    assert {o["path"] for o in lock["outs"]} == {"reports/tuning/bprmf.json", "reports/tuning/bprmf.md"}
    assert "Running stage" not in run(["dvc", "repro", target], project).stdout
    main = run(["dvc", "repro"], project)  # the main pipeline: untouched by the search and its params
    assert "Running stage" not in main.stdout and "tune@" not in main.stdout, main.stdout
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], project).stdout
    assert "up to date" in run(["dvc", "status", target], project).stdout


@pytest.mark.slow
def test_ablation_table(project):
    """Every ablation variant runs as a queued DVC experiment and lands in the table."""
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "before ablations", "--allow-empty"], project)
    run([sys.executable, "scripts/ablations.py", "-S", "train.max_epochs=1", "-S", "club.steps=1"], project)
    table = (project / "reports/ablations.md").read_text()
    results = json.loads((project / "reports/ablations.json").read_text())
    variants = [
        "full",
        "no_club",
        "no_solosim",
        "no_club_no_solosim",
        "l2_distance",
        "reference_pairing",
        "text_only",
        "image_only",
    ]
    assert list(results) == variants
    for v in variants:
        assert f"| {v} |" in table
        assert 0 <= results[v]["test"]["recall@20"] <= 1
    assert results["text_only"]["test"] != results["full"]["test"]


def test_empty_image_features_are_refused_by_training(tmp_path):
    """Offline on a real dump no image arrives: the image stage writes flagged zeros and
    the train stage refuses them with the remedy, instead of training on nothing."""
    from sea.artifacts import read_features, write_features
    from sea.errors import DataError

    write_features("image", np.zeros((4, 8), np.float32), {"n_items": 4, "n_decoded": 0}, root=tmp_path)
    write_features("text", np.ones((4, 3), np.float32), {"n_items": 4, "n_with_text": 4}, root=tmp_path)
    assert read_features(["text"], 4, root=tmp_path)["text"].shape == (4, 3)
    with pytest.raises(DataError, match="leave image out of model.modalities"):
        read_features(["image", "text"], 4, root=tmp_path)


def lock_md5(lock: dict, stage: str, path: str) -> str:
    """The md5 dvc.lock records for output ``path`` of ``stage``."""
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


@pytest.mark.slow
def test_a_lab_shares_data_models_and_experiments_through_a_dvc_remote(project, tmp_path):
    """docs/sharing.md on a real local remote: clone A runs the sample and pushes; clone B,
    at another path, pulls and `dvc repro` recomputes nothing; an experiment queued and run
    in A reaches B with `dvc exp push`/`dvc exp pull`, its model included."""
    a, remote, lab = project, tmp_path / "dvc-remote", tmp_path / "lab.git"
    run(["dvc", "repro"], a)  # the sample, once (a no-op after the tests above)
    run(["dvc", "remote", "add", "-d", "lab", str(remote)], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "the lab's remote"], a)
    run(["dvc", "push"], a)
    run(["git", "init", "-q", "--bare", "-b", "main", str(lab)], tmp_path)
    run(["git", "remote", "add", "lab", str(lab)], a)
    run(["git", "push", "-q", "lab", "HEAD:main"], a)

    b = tmp_path / "another machine" / "clone b"
    run(["git", "clone", "-q", "-o", "lab", str(lab), str(b)], tmp_path)
    run(["git", "config", "user.email", "b@example.invalid"], b)
    run(["git", "config", "user.name", "B"], b)
    run(["dvc", "pull"], b)
    again = run(["dvc", "repro"], b)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout, again.stdout
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], b).stdout  # the main pipeline (tuning/ is apart)
    lock = yaml.safe_load((b / "dvc.lock").read_text())
    for stage, path in [("train", "models/model.safetensors"), ("text_features", "data/features/text.npy")]:
        assert sha(b / path) == sha(a / path)
        assert hashlib.md5((b / path).read_bytes()).hexdigest() == lock_md5(lock, stage, path)
    assert git_status(b) == ""

    # an experiment queued in A, its commit and its outputs pushed; B pulls it
    run(["dvc", "exp", "run", "--queue", "-n", "one-epoch", "-S", "train.max_epochs=1"], a)
    run(["dvc", "exp", "run", "--run-all"], a)
    run(["dvc", "exp", "push", "lab", "one-epoch"], a)
    run(["dvc", "exp", "pull", "lab", "one-epoch"], b)
    rev_a = experiments.experiment_commit("one-epoch", a)
    rev_b = experiments.experiment_commit("one-epoch", b)
    assert rev_a and rev_a == rev_b
    exp_lock = yaml.safe_load(experiments.show_file(rev_b, "dvc.lock", b))
    model = lock_md5(exp_lock, "train", "models/model.safetensors")
    assert model != lock_md5(lock, "train", "models/model.safetensors")  # one epoch: another model
    assert (b / ".dvc/cache/files/md5" / model[:2] / model[2:]).is_file()  # its bytes came along
    run(["dvc", "exp", "apply", "one-epoch"], b)
    assert hashlib.md5((b / "models/model.safetensors").read_bytes()).hexdigest() == model
    assert json.loads((b / "reports/metrics.json").read_text()) == json.loads(
        experiments.show_file(rev_a, "reports/metrics.json", a)
    )
