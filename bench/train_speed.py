"""Time one model's training step and full-ranking evaluation on a synthetic graph of a
given size, through the same trainer the pipeline uses (any registered model).

    python bench/train_speed.py --preset sample                  # SEA at the bundled sample's sizes
    python bench/train_speed.py --model lightgcn --preset baby   # Amazon Baby's sizes (SEA.md §5)
    python bench/train_speed.py --club-steps 0                   # SEA without the estimator loop

Prints seconds per batch (median over the timed batches, after warm-up), the projected
seconds per epoch, evaluation seconds, peak GPU memory, the device and the commit.
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
from sea.models.base import REGISTRY, Batch, GraphData, model_class
from sea.train import UniformNegatives, build_model, evaluate, seed_everything, train_step

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
    import sea.models  # noqa: F401  (fills the registry for --model's choices)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(REGISTRY), default="sea", help="a registered model (default: sea)")
    p.add_argument("--preset", choices=PRESETS, default="sample")
    p.add_argument("--batches", type=int, default=10, help="timed batches (after 2 warm-up batches)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--negatives", type=int, default=1, help="negatives per positive")
    p.add_argument("--club-steps", type=int, default=50, help="SEA's CLUB estimator steps per batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    n_users, n_items, n_train, d_img, d_txt = PRESETS[args.preset]
    device = torch.device(args.device)
    setup = TrainingSetup.from_params({
        "model": {"name": args.model},
        "train": {"batch_size": args.batch_size, "negatives": args.negatives},
        "club": {"steps": args.club_steps},
    })
    df, feats = synthetic(n_users, n_items, n_train, {"image": d_img, "text": d_txt})
    data = GraphData.build(df, n_items, feats if model_class(args.model).uses_features else {}, device)
    seed_everything(0, deterministic=device.type == "cpu")
    model = build_model(data, setup)
    opt = torch.optim.Adam(model.main_parameters(), lr=setup.train.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    model.on_epoch_start(1, gen)  # per-epoch work (FREEDOM's edge pruning) is not timed

    times = []
    for i in range(args.batches + 2):
        idx = torch.randint(len(data.train_users), (args.batch_size,), generator=gen, device=device)
        users = data.train_users[idx]
        batch = Batch(users, data.train_items[idx], negatives(users, args.negatives))
        sync(device)
        t0 = time.perf_counter()
        logs = train_step(model, opt, data, batch, setup.loss.kind)
        float(logs["loss"])  # wait for the step (a host sync, as the epoch end does)
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
    print(f"model={args.model} preset={args.preset} device={name} commit={commit} batch={args.batch_size} "
          f"negatives={args.negatives} club_steps={args.club_steps} (models with SEA's separation)")
    print(f"  {len(data.train_users):,} train interactions, {n_batches} batches/epoch")
    print(f"  {per_batch:.4f} s/batch (median of {len(times)}) -> {per_batch * n_batches:.2f} s/epoch; "
          f"evaluation {eval_s:.2f} s; peak GPU memory {mem}")


if __name__ == "__main__":
    main()
