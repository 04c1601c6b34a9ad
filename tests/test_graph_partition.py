"""The propagation divided among ranks (``train.partition_graph``,
:class:`sea.models.propagation.GraphPartition`) on hand-sized graphs: 2 and 3 gloo
processes give every rank the plain propagation's values, and the ranks' gradients sum
to the gradient of the sum of their objectives, computed here with dense matrices. Then
every registered model, two training steps on 2 gloo processes dividing the graph: one
process's weights, or the one-line refusal for a model that makes no shared hop."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from sea import artifacts
from sea.errors import ConfigError
from sea.models.graphs import user_item_adjacency
from sea.models.propagation import GraphPartition, balanced_rows, propagate, row_slice

USERS = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6])
ITEMS = np.array([0, 1, 1, 0, 2, 3, 3, 1, 4, 4, 2])
N_USERS, N_ITEMS, DIM = 7, 5, 3
#: (layers, mean, symmetric): LightGCN's layer mean, SEA's sum, and a non-symmetric matrix
#: with its transpose given (SelfCF's dropped edges)
CASES = [(2, True, True), (3, False, True), (1, False, False), (2, True, False)]


def graph(symmetric: bool) -> torch.Tensor:
    adj = user_item_adjacency(USERS, ITEMS, N_USERS, N_ITEMS)
    if symmetric:
        return adj
    dense = adj.to_dense()
    dense[0, 8] = 0.5  # one extra edge in one direction only
    dense[3] *= 2.0
    return dense.to_sparse_csr()


def inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0 (the same on every rank) and rank ``rank``'s own output weights."""
    x = torch.randn(N_USERS + N_ITEMS, DIM, generator=torch.Generator().manual_seed(0))
    w = torch.randn(N_USERS + N_ITEMS, DIM, generator=torch.Generator().manual_seed(100 + rank))
    return x, w


def divided_worker(rank: int, size: int, port: int, out: str) -> None:
    """Each case's output and this rank's gradient of Σ w_r · out, under a partition."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        results = []
        partition = GraphPartition(rank, size, "test")
        for layers, mean, symmetric in CASES:
            adj = graph(symmetric)
            transpose = None if symmetric else adj.to_dense().T.to_sparse_csr()
            x, w = inputs(rank)
            x.requires_grad_(True)
            with partition.active():
                y = propagate(adj, x, layers, mean, transpose)
            (w * y).sum().backward()
            results.append((y.detach(), x.grad))
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("size", [2, 3])
def test_divided_propagation_is_the_plain_one(tmp_path, size):
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.start_processes(divided_worker, args=(size, free_port(), out), nprocs=size, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(size)]
    for c, (layers, mean, symmetric) in enumerate(CASES):
        adj = graph(symmetric)
        transpose = None if symmetric else adj.to_dense().T.to_sparse_csr()
        x, _ = inputs(0)
        plain = propagate(adj, x, layers, mean, transpose)
        # the expected values and gradient, independently: dense powers of Â in float64
        a = adj.to_dense().double()
        powers = [torch.linalg.matrix_power(a, k) for k in range(layers + 1)]
        scale = 1.0 / (layers + 1) if mean else 1.0
        expected = scale * sum(p @ x.double() for p in powers)
        total_w = sum(inputs(r)[1].double() for r in range(size))  # ∂(Σ_r w_r · y)/∂y
        expected_grad = scale * sum(p.T @ total_w for p in powers)
        for r, results in enumerate(ranks):
            y, grad = results[c]
            assert torch.equal(y, plain), (c, r)  # each row the same sum in the same order
            torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)
        summed = sum(results[c][1].double() for results in ranks)
        torch.testing.assert_close(summed, expected_grad, rtol=1e-5, atol=1e-6, msg=lambda m, c=c: f"case {c}: {m}")
        # each rank returns only its own rows of the gradient
        nonzero = [set(torch.nonzero(results[c][1].abs().sum(1)).flatten().tolist()) for results in ranks]
        assert all(not (a & b) for i, a in enumerate(nonzero) for b in nonzero[i + 1 :])


def test_blocks_hold_near_equal_non_zeros_and_cover_the_rows():
    adj = user_item_adjacency(USERS, ITEMS, N_USERS, N_ITEMS)
    crow = adj.crow_indices()
    for size in (1, 2, 3, 5):
        bounds = balanced_rows(crow, size)
        assert bounds[0] == 0 and bounds[-1] == N_USERS + N_ITEMS and list(bounds) == sorted(bounds)
        blocks = [row_slice(adj, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        assert torch.equal(torch.cat([b.to_dense() for b in blocks]), adj.to_dense())
        nnz = [b.values().numel() for b in blocks]
        # no block exceeds its share by more than one row's non-zeros
        assert max(nnz) <= crow[-1].item() / size + (crow[1:] - crow[:-1]).max().item()


def test_a_model_without_the_shared_propagation_is_refused():
    partition = GraphPartition(0, 2, "bprmf")
    with pytest.raises(ConfigError, match=r"^params.yaml \[train\]: partition_graph .* model bprmf makes none"):
        with partition.active():
            pass
    x = torch.ones(N_USERS + N_ITEMS, 2)
    one = GraphPartition(0, 1, "lightgcn")  # one rank: the plain propagation, counted
    with one.active():
        y = propagate(user_item_adjacency(USERS, ITEMS, N_USERS, N_ITEMS), x, 2)
    assert one.hops == 2 and y.shape == x.shape


# ------------------------------------------------------------------ every model, two steps


def model_steps(name: str, rank: int | None) -> dict[str, torch.Tensor] | str:
    """The weights after 2 plain-SGD steps on batches of 37 rows, as rank ``rank`` of 2
    dividing the graph (None: one process, whole graph); "refused" when the model makes no
    shared hop (checked in one process too)."""
    import pandas as pd

    from sea.batch import Batch
    from sea.distributed import World
    from sea.models.base import GraphData
    from sea.samplers import UniformNegatives
    from sea.setup import TrainingSetup
    from sea.train import build_model, seed_everything, train_step

    root = Path(os.environ["SEA_TEST_DATASET"])
    data = GraphData.build(
        pd.read_parquet(root / artifacts.INTERACTIONS),
        90,
        {m: np.load(root / artifacts.FEATURES / f"{m}.npy") for m in ("image", "text")},
    )
    setup = TrainingSetup.from_params({"model": {"name": name}, "club": {"steps": 2}})
    seed_everything(0)
    model = build_model(data, setup)
    opt = torch.optim.SGD(model.main_parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)
    model.on_epoch_start(1, gen)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    world = World() if rank is None else World(rank, 2)
    partition = GraphPartition(world.rank, world.size, name)
    for _ in range(2):
        idx = torch.randperm(len(data.train_users), generator=gen)[:37]
        batch = Batch(data.train_users[idx], data.train_items[idx], negatives(data.train_users[idx], 1))
        try:
            with partition.active():  # one process: the plain propagation, its hops counted
                train_step(model, opt, data, batch, setup.make_ranking_loss(data), world.rows(37))
        except ConfigError as e:
            assert f"model {name} makes none" in str(e)
            return "refused"
    return {k: v.clone() for k, v in model.state_dict().items()}


def models_worker(rank: int, port: int, names: list[str], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {name: model_steps(name, rank) for name in names}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_model_divided_takes_one_process_steps(tmp_path, monkeypatch):
    import torch.multiprocessing as mp
    from test_distributed import write_dataset

    from sea.models.base import REGISTRY

    write_dataset(tmp_path / "data")
    monkeypatch.setenv("SEA_TEST_DATASET", str(tmp_path / "data"))
    names = sorted(name for name, cls in REGISTRY.items() if cls.trainable)
    out = tmp_path / "states.pt"
    mp.start_processes(models_worker, args=(free_port(), names, str(out)), nprocs=2, start_method="spawn")
    divided = torch.load(out, weights_only=True)
    refused = sorted(name for name, result in divided.items() if result == "refused")
    assert {"lightgcn", "sea", "freedom"}.isdisjoint(refused) and "bprmf" in refused
    for name in names:
        one = model_steps(name, None)
        if divided[name] == "refused":
            assert one == "refused", name  # the refusal does not depend on the number of ranks
            continue
        assert one.keys() == divided[name].keys()
        for k in one:
            torch.testing.assert_close(
                divided[name][k], one[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k, n=name: f"{n} {k}: {m}"
            )
