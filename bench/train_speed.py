"""Time SEA's training step and full-ranking evaluation on a synthetic graph of a given size.

    python bench/train_speed.py --preset sample              # the bundled sample's sizes
    python bench/train_speed.py --preset baby --batches 5    # Amazon Baby's sizes (SEA.md §5)
    python bench/train_speed.py --club-steps 0               # without the estimator loop

Prints seconds per batch (median over the timed batches, after warm-up), the projected
seconds per epoch, evaluation seconds and peak GPU memory. Record results in BENCHMARKS.md
with the device and the commit.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np
import pandas as pd
import torch

from sea.config import TrainingSetup
from sea.train import NegativeSampler, build_model, evaluate, load_graph_data, seed_everything, train_step

PRESETS = {  # users, items, training interactions, image dim, text dim
    "sample": (1534, 600, 11279, 512, 384),
    "baby": (19445, 7050, 119674, 4096, 384),
}


def synthetic(n_users: int, n_items: int, n_train: int, dims: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    n_total = n_train * 5 // 4  # about 80 % of the pairs end up in train
    users = rng.integers(0, n_users, n_total * 2)
    items = (rng.zipf(1.3, len(users)) - 1) % n_items
    df = pd.DataFrame({"user": users, "item": items}).drop_duplicates().head(n_total)
    split = np.where(rng.random(len(df)) < 0.8, "train", np.where(rng.random(len(df)) < 0.5, "valid", "test"))
    df = df.assign(split=pd.Categorical(split, categories=["train", "valid", "test"]))
    feats = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    return df, feats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="sample")
    p.add_argument("--batches", type=int, default=10, help="timed batches (after 2 warm-up batches)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--club-steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    n_users, n_items, n_train, d_img, d_txt = PRESETS[args.preset]
    device = torch.device(args.device)
    setup = TrainingSetup.from_params({"train": {"batch_size": args.batch_size}, "club": {"steps": args.club_steps}})
    df, feats = synthetic(n_users, n_items, n_train, {"image": d_img, "text": d_txt})
    data = load_graph_data(df, feats, knn_k=10, image_knn_weight=0.1, device=device)
    seed_everything(0, deterministic=device.type == "cpu")
    model, est = build_model(data, setup)
    model.to(device)
    est.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    est_opt = torch.optim.Adam(est.parameters(), lr=setup.club.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    sampler = NegativeSampler(data.train_users, data.train_items, data.n_items, gen)

    times = []
    for i in range(args.batches + 2):
        idx = torch.randint(len(data.train_users), (args.batch_size,), generator=gen, device=device)
        users, pos = data.train_users[idx], data.train_items[idx]
        sync(device)
        t0 = time.perf_counter()
        train_step(model, est, opt, est_opt, data, users, pos, sampler(users), setup)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times)
    n_batches = -(-len(data.train_users) // args.batch_size)
    sync(device)
    t0 = time.perf_counter()
    evaluate(model, data, "valid", [10, 20])
    sync(device)
    eval_s = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"
    print(f"preset={args.preset} device={name} commit={commit} batch={args.batch_size} club_steps={args.club_steps}")
    print(f"  {len(data.train_users):,} train interactions, {n_batches} batches/epoch")
    print(f"  {per_batch:.4f} s/batch (median of {len(times)}) -> {per_batch * n_batches:.2f} s/epoch; "
          f"evaluation {eval_s:.2f} s; peak GPU memory {mem}")


if __name__ == "__main__":
    main()
