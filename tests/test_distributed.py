"""Distributed training (``train.processes``, :mod:`sea.distributed`): the train stage
relaunched under torchrun with 2 CPU processes (gloo) matches one process with the same
global batch, gives the same bytes again, runs through a multi-node c10d rendezvous on
127.0.0.1, writes a checkpoint a single process loads, and fails in one line.

Every run is the real stage script on a small synthetic dataset in a temporary folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sea import artifacts
from sea.checkpoint import load_checkpoint
from sea.distributed import World
from sea.errors import ConfigError
from sea.recommend import recommend
from sea.setup import TrainingSetup

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipeline" / "train.py"
OUTPUTS = [artifacts.MODEL, artifacts.TRAIN_SUMMARY, artifacts.RECOMMENDATIONS, artifacts.HISTORY]
#: 2 processes vs 1: the same arithmetic, except that each gradient is the sum of two
#: partial sums (and SEA's estimators see gradients that differ in the last bits), so
#: validation metrics after a few epochs agree to this much (measured: lightgcn and
#: freedom exactly, sea within 5e-4 on the bundled sample).
METRIC_TOLERANCE = 0.01


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_dataset(root: Path, n_users: int = 90, n_items: int = 90, seed: int = 0) -> None:
    """Users in 3 groups, each liking its own third of the items (learnable) plus noise:
    9 items each (6 of its group, 3 of any; 7 train, 1 valid, 1 test), and two feature
    matrices that carry the group."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = np.arange(n_items)[(np.arange(n_items) % 3) == (u % 3)]
        liked = rng.choice(group, size=6, replace=False)
        others = rng.choice(np.setdiff1d(np.arange(n_items), liked), size=3, replace=False)
        items = rng.permutation(np.concatenate([liked, others]))
        rows += [(u, int(i), s) for i, s in zip(items, ["train"] * 7 + ["valid", "test"], strict=True)]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"]).astype({"user": "int32", "item": "int32"})
    inter = inter.assign(
        rating=np.float32(5.0),
        timestamp=np.arange(len(inter), dtype=np.int64),
        split=pd.Categorical(inter["split"], categories=["train", "valid", "test"]),
    )
    (root / artifacts.PROCESSED).mkdir(parents=True)
    inter.to_parquet(root / artifacts.INTERACTIONS, index=False)
    pd.DataFrame(
        {"user": np.arange(n_users, dtype=np.int32), "reviewer_id": [f"A{u:05d}" for u in range(n_users)]}
    ).to_parquet(root / artifacts.USERS, index=False)
    pd.DataFrame(
        {
            "item": np.arange(n_items, dtype=np.int32),
            "asin": [f"B{i:05d}" for i in range(n_items)],
            "text": "",
            "image_url": None,
        }
    ).to_parquet(root / artifacts.ITEMS, index=False)
    (root / artifacts.FEATURES).mkdir(parents=True)
    onehot = np.eye(3, dtype=np.float32)[np.arange(n_items) % 3]
    for m, d in (("image", 12), ("text", 8)):
        x = np.concatenate([onehot, rng.normal(size=(n_items, d - 3)).astype(np.float32)], axis=1)
        np.save(root / artifacts.FEATURES / f"{m}.npy", x.astype(np.float32))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    write_dataset(root)
    return root


def params_for(model: str, processes: int, partition_graph: bool = False) -> dict:
    # 630 training rows in global batches of 128: the last one (118 rows) is smaller.
    return {
        "model": {"name": model},
        model: {"embedding_dim": 16} | ({"mlp_hidden_dim": 32} if model == "sea" else {}),
        "club": {"steps": 5},
        "train": {
            "device": "cpu",
            "lr": 0.01,
            "batch_size": 128,
            "max_epochs": 3,
            "patience": 10,
            "seed": 7,
            "processes": processes,
        }
        | ({"partition_graph": True} if partition_graph else {}),
        "eval": {"topk": [5, 10], "select": "recall@10"},
    }


def train(dataset: Path, dest: Path, params: dict, command: list[str] | None = None) -> subprocess.CompletedProcess:
    """The train stage in a fresh copy of ``dataset`` at ``dest``."""
    shutil.copytree(dataset, dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        command or [sys.executable, str(SCRIPT)], cwd=dest, env=env(), capture_output=True, text=True, timeout=300
    )


def trained(dataset: Path, dest: Path, params: dict) -> Path:
    proc = train(dataset, dest, params)
    assert proc.returncode == 0, f"train failed:\n{proc.stdout}\n{proc.stderr}"
    return dest


def valid_metrics(run: Path) -> pd.DataFrame:
    history = pd.read_csv(run / artifacts.HISTORY)
    return history[[c for c in history.columns if c.startswith("valid_")]]


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> dict:
    """Cache: (model, processes, partition_graph) -> the folder of that run."""
    base, cache = tmp_path_factory.mktemp("runs"), {}

    def get(model: str, processes: int, partition_graph: bool = False) -> Path:
        key = model, processes, partition_graph
        if key not in cache:
            dest = base / f"{model}-{processes}{'-divided' if partition_graph else ''}"
            cache[key] = trained(dataset, dest, params_for(*key))
        return cache[key]

    return get


@pytest.mark.parametrize("model", ["lightgcn", "sea", "freedom"])
def test_two_processes_match_one_process_with_the_same_global_batch(runs, model):
    one, two = runs(model, 1), runs(model, 2)
    m1, m2 = valid_metrics(one), valid_metrics(two)
    assert len(m1) == len(m2) == 3 and 0.05 < m1["valid_recall@10"].iloc[-1] < 0.9  # learning, not saturated
    np.testing.assert_allclose(m2.to_numpy(), m1.to_numpy(), atol=METRIC_TOLERANCE)
    # the logged losses are the global batch's (each rank's share reduced), not one rank's
    h1, h2 = pd.read_csv(one / artifacts.HISTORY), pd.read_csv(two / artifacts.HISTORY)
    np.testing.assert_allclose(h2["bpr"], h1["bpr"], rtol=1e-4)
    s1, s2 = (json.loads((r / artifacts.TRAIN_SUMMARY).read_text()) for r in (one, two))
    assert s1["parameters"] == s2["parameters"]


#: 2 processes dividing the graph vs 1: the forward is one process's, each gradient a sum
#: of two partial sums (measured on this dataset: see the test).
DIVIDED_TOLERANCE = 1e-5


@pytest.mark.parametrize("model", ["lightgcn", "sea", "freedom"])
def test_two_processes_dividing_the_graph_match_one_process(runs, model):
    one, two = runs(model, 1), runs(model, 2, True)
    m1, m2 = valid_metrics(one), valid_metrics(two)
    assert len(m2) == 3 and 0.05 < m1["valid_recall@10"].iloc[-1] < 0.9
    np.testing.assert_allclose(m2.to_numpy(), m1.to_numpy(), atol=DIVIDED_TOLERANCE)
    h1, h2 = pd.read_csv(one / artifacts.HISTORY), pd.read_csv(two / artifacts.HISTORY)
    np.testing.assert_allclose(h2["bpr"], h1["bpr"], rtol=1e-4)
    ckpt = load_checkpoint(two / artifacts.MODEL)
    assert ckpt.params["train"]["partition_graph"] is True


@pytest.mark.parametrize("partition_graph", [False, True])
def test_two_processes_give_the_same_bytes_again(runs, dataset, tmp_path, partition_graph):
    first = runs("sea", 2, partition_graph)
    again = trained(dataset, tmp_path / "again", params_for("sea", 2, partition_graph))
    for out in OUTPUTS:
        assert (again / out).read_bytes() == (first / out).read_bytes(), out


def test_checkpoint_of_two_processes_loads_in_one_process(runs):
    run = runs("lightgcn", 2)
    ckpt = load_checkpoint(run / artifacts.MODEL)
    state = ckpt.run().state_dict
    assert state and not any(k.startswith("module.") for k in state)
    assert ckpt.params["train"]["processes"] == 2
    top = recommend(run / artifacts.MODEL, ["A00000", "A00001"], k=5, root=run)
    saved = pd.read_parquet(run / artifacts.RECOMMENDATIONS)
    saved = saved[saved["reviewer_id"].isin(["A00000", "A00001"]) & (saved["rank"] <= 5)]
    assert top["item"].tolist() == saved.sort_values(["user", "rank"])["item"].tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_node_rendezvous_gives_the_single_machine_result(runs, dataset, tmp_path):
    """Two "machines" (two torchrun agents, one process each) meet through the c10d
    rendezvous on 127.0.0.1; the result is the bytes of the 2-process standalone run."""
    dest = tmp_path / "nodes"
    shutil.copytree(dataset, dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(params_for("lightgcn", 2)))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "test",
        "--max-restarts",
        "0",
        str(SCRIPT),
    ]
    nodes = [
        subprocess.Popen(cmd, cwd=dest, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(logs)
    standalone = runs("lightgcn", 2)
    for out in OUTPUTS:
        assert (dest / out).read_bytes() == (standalone / out).read_bytes(), out


def test_a_failing_rank_ends_the_stage_in_one_line(dataset, tmp_path):
    dest = tmp_path / "broken"
    shutil.copytree(dataset, dest)
    (dest / artifacts.FEATURES / "image.npy").unlink()
    (dest / "params.yaml").write_text(yaml.safe_dump(params_for("sea", 2)))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=dest, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train stage failed: rank ") and "of 2 failed" in last
    assert "train stage failed: data/features/image.npy" in proc.stderr  # the rank's own message
    assert not (dest / artifacts.MODEL).exists()


def test_dividing_the_graph_of_a_model_without_hops_ends_in_one_line(dataset, tmp_path):
    proc = train(dataset, tmp_path / "bprmf", params_for("bprmf", 2, partition_graph=True))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "train stage failed: params.yaml [train]: partition_graph divides the hops of the shared propagation "
        "over the user–item graph, and model bprmf makes none in training; set partition_graph: false\n"
    ) in proc.stderr
    assert not (tmp_path / "bprmf" / artifacts.MODEL).exists()


def test_processes_must_divide_the_global_batch():
    with pytest.raises(ConfigError, match=r"\[train\]: batch_size 100 is the global batch: .* processes \(3\)"):
        TrainingSetup.from_params({"model": {"name": "bprmf"}, "train": {"batch_size": 100, "processes": 3}})
    with pytest.raises(ConfigError, match=r"processes must be >= 1"):
        TrainingSetup.from_params({"model": {"name": "bprmf"}, "train": {"processes": 0}})


def test_dividing_the_graph_needs_several_processes():
    with pytest.raises(ConfigError, match=r"^params.yaml \[train\]: partition_graph .* needs processes >= 2$"):
        TrainingSetup.from_params({"model": {"name": "lightgcn"}, "train": {"partition_graph": True}})
    two = TrainingSetup.from_params({"model": {"name": "lightgcn"}, "train": {"processes": 2, "partition_graph": True}})
    assert two.to_dict()["train"]["partition_graph"] is True


def test_one_process_params_keep_their_old_form():
    """processes: 1 is left out of the params a checkpoint stores (same bytes as before)."""
    one = TrainingSetup.from_params({"model": {"name": "bprmf"}})
    assert "processes" not in one.to_dict()["train"] and "partition_graph" not in one.to_dict()["train"]
    assert TrainingSetup.from_params(one.to_dict()).train.processes == 1
    two = TrainingSetup.from_params({"model": {"name": "bprmf"}, "train": {"processes": 2}})
    assert two.to_dict()["train"]["processes"] == 2


# ------------------------------------------------------------------ one step, in process

#: (model, loss.kind, sampler, partition_graph): BPR with SEA's own terms and estimators,
#: FREEDOM's pruned graph and feature term, and the softmax whose candidates (and CBNS
#: memory) are the whole batch's positives; each with every rank propagating the whole
#: graph, and with the ranks dividing it.
STEP_CASES = [
    (model, kind, sampler, divided)
    for divided in (False, True)
    for model, kind, sampler in [
        ("sea", "bpr", "uniform"),
        ("freedom", "bpr", "uniform"),
        ("lightgcn", "softmax", "cross_batch"),
    ]
]


def steps_state(model_name: str, kind: str, sampler: str, divided: bool, world: World | None) -> dict:
    """The weights after 3 plain-SGD steps on batches of 37 rows (shards of 18 and 19 on
    2 ranks), as ``world``'s rank (None: one process). SGD, unlike Adam, is not invariant
    to the gradient's scale, so a wrongly weighted or unaveraged gradient shows."""
    import torch

    from sea.batch import Batch
    from sea.models.base import GraphData
    from sea.models.propagation import GraphPartition
    from sea.samplers import UniformNegatives
    from sea.train import build_model, seed_everything, train_step

    root = Path(os.environ["SEA_TEST_DATASET"])
    data = GraphData.build(
        pd.read_parquet(root / artifacts.INTERACTIONS),
        90,
        {m: np.load(root / artifacts.FEATURES / f"{m}.npy") for m in ("image", "text")},
    )
    setup = TrainingSetup.from_params(
        params_for(model_name, 1)
        | {"loss": {"kind": kind}, "train": {"sampler": sampler, "cbns_warmup_steps": 0, "cbns_memory_batches": 2}}
    )
    seed_everything(0)
    model = build_model(data, setup)
    opt = torch.optim.SGD(model.main_parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    ranking = setup.make_ranking_loss(data)
    model.on_epoch_start(1, gen)
    for _ in range(3):
        idx = torch.randperm(len(data.train_users), generator=gen)[:37]
        users = data.train_users[idx]
        batch = Batch(users, data.train_items[idx], negatives(users, 2))
        if world is None:
            train_step(model, opt, data, batch, ranking)
        else:
            with GraphPartition(world.rank, world.size, model_name).active() if divided else contextlib.nullcontext():
                train_step(model, opt, data, batch, ranking, world.shard(37))
    return {k: v.clone() for k, v in model.state_dict().items()}


def steps_worker(rank: int, size: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        states = [steps_state(*case, World(rank, size)) for case in STEP_CASES]
        if rank == 0:
            torch.save(states, out)
    finally:
        dist.destroy_process_group()


def test_a_distributed_step_is_the_one_process_step(dataset, tmp_path, monkeypatch):
    import torch
    import torch.multiprocessing as mp

    monkeypatch.setenv("SEA_TEST_DATASET", str(dataset))
    out = tmp_path / "states.pt"
    mp.start_processes(steps_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    distributed = torch.load(out, weights_only=True)
    for case, two in zip(STEP_CASES, distributed, strict=True):
        one = steps_state(*case, None)
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k, c=case: f"{c} {k}: {m}")


@pytest.mark.parametrize("n, size", [(128, 2), (118, 2), (7, 3), (1, 2)])
def test_shards_cover_the_batch_once_in_rank_order(n, size):
    shards = [World(rank, size).shard(n) for rank in range(size)]
    rows = [i for s in shards for i in range(n)[s]]
    assert rows == list(range(n))
    assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
