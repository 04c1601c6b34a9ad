"""Seconds per training step and per epoch of distributed training on the CPU (gloo), for
1 process and for N processes, each rank propagating the whole graph or the ranks dividing
it (``train.partition_graph``), on the synthetic graphs of bench/train_speed.py.

    python bench/ddp_speed.py                                  # lightgcn, sample sizes, 1 vs 2
    python bench/ddp_speed.py --model sea --preset baby --batches 6

Each rank computes with ``--threads-per-rank`` torch threads (1 by default, so that the
work per rank reads the same on a busy machine). Prints, per setting, the median wall
seconds of a step (after 2 warm-up steps) and the epoch it projects (steps per epoch ×
median), the median CPU seconds of a step on the busiest rank (the rank's own work, gloo's
threads included: on a shared machine a steadier figure than the wall clock), and the wall
ratio to one process; the commit and kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import commit as bench_commit
from common import kernels
from train_speed import PRESETS, synthetic

from sea.batch import Batch
from sea.distributed import World
from sea.models.base import GraphData, adam, model_class
from sea.models.propagation import GraphPartition
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup
from sea.train import build_model, seed_everything, train_step


def worker(rank: int, size: int, port: int, divided: bool, args: argparse.Namespace, out: str) -> None:
    """One rank: the step times of ``args.batches`` + 2 steps, written by rank 0."""
    import torch.distributed as dist

    torch.set_num_threads(args.threads_per_rank)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    n_users, n_items, n_train, d_img, d_txt = PRESETS[args.preset]
    setup = TrainingSetup.from_params(
        {"model": {"name": args.model}, "train": {"batch_size": args.batch_size}, "club": {"steps": args.club_steps}}
    )
    df, feats = synthetic(n_users, n_items, n_train, {"image": d_img, "text": d_txt})
    data = GraphData.build(df, n_items, feats if model_class(args.model).uses_features else {})
    seed_everything(0)
    model = build_model(data, setup)
    opt = adam(model.main_parameters(), setup.train.lr)
    loss = setup.make_ranking_loss(data)
    gen = torch.Generator().manual_seed(0)
    model.on_epoch_start(1, gen)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    world = World(rank, size)
    divide = GraphPartition(rank, size, args.model).active if divided else contextlib.nullcontext
    times, cpu = [], []
    for i in range(args.batches + 2):
        idx = torch.randint(len(data.train_users), (args.batch_size,), generator=gen)
        users = data.train_users[idx]
        batch = Batch(users, data.train_items[idx], negatives(users, 1))
        t0, c0 = time.perf_counter(), time.process_time()
        with divide():
            logs = train_step(model, opt, data, batch, loss, world.rows(args.batch_size))
        float(logs["loss"])
        if i >= 2:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    busiest = torch.tensor([statistics.median(cpu)], dtype=torch.float64)
    if size > 1:
        dist.all_reduce(busiest, op=dist.ReduceOp.MAX)
        dist.destroy_process_group()
    if rank == 0:
        steps = math.ceil(len(data.train_users) / args.batch_size)
        result = {"step": statistics.median(times), "cpu": busiest.item(), "steps": steps}
        Path(out).write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(size: int, divided: bool, args: argparse.Namespace) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "times.json")
        mp.start_processes(worker, args=(size, free_port(), divided, args, out), nprocs=size, start_method="spawn")
        return json.loads(Path(out).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lightgcn", help="a registered model that propagates (default: lightgcn)")
    p.add_argument("--preset", choices=PRESETS, default="sample")
    p.add_argument("--processes", type=int, default=2, help="N, compared with 1 process")
    p.add_argument("--batches", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--club-steps", type=int, default=5, help="SEA's CLUB estimator steps per batch")
    p.add_argument("--threads-per-rank", type=int, default=1, help="torch threads of each rank")
    args = p.parse_args()

    print(f"{args.model}, preset {args.preset}, batch {args.batch_size}, {args.threads_per_rank} thread(s) per rank")
    print(f"commit {bench_commit()}, {kernels()}, CPU, gloo, {os.cpu_count()} cores")
    print("| processes | graph | s/step | s/epoch | CPU s/step, busiest rank | wall vs 1 process |")
    print("|---|---|---|---|---|---|")
    base = None
    for size, divided in [(1, False), (args.processes, False), (args.processes, True)]:
        r = run(size, divided, args)
        base = base or r["step"]
        graph = "divided" if divided else "whole on every rank"
        epoch = r["step"] * r["steps"]
        row = f"| {size} | {graph} | {r['step']:.3f} | {epoch:.1f} | {r['cpu']:.3f} | {base / r['step']:.2f}× |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
