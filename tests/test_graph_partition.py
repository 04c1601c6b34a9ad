"""The propagation divided among ranks (``train.partition_graph``,
:class:`sea.models.propagation.GraphPartition`) on hand-sized graphs: 2 and 3 gloo
processes give every rank the plain propagation's values, and the ranks' gradients sum
to the gradient of the sum of their objectives, computed here with dense matrices."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

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
