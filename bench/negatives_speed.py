"""What many negatives cost: one training epoch with SimpleX's CCL at 1 and at 1,000 uniform
negatives per positive, and with the in-batch softmax without and with CBNS's memory, on a
synthetic graph of Amazon Baby's size (19,445 users, 7,050 items, 119,674 training pairs).

    python bench/negatives_speed.py                          # LightGCN, batch 2048, on the GPU if any
    python bench/negatives_speed.py --model simplex --batches 5
    python bench/negatives_speed.py --negatives 1 100 1000 --memory 2 8
    python bench/negatives_speed.py -S lightgcn.reg_weight=0   # any param, as dvc exp run -S

Every variant runs the trainer's own code (sea.samplers.UniformNegatives, sea.losses.RankingLoss,
train_step) on the same model and batches. Prints the median seconds per batch (after two
warm-up batches), the projected seconds per epoch and the extra cost over the baseline
(BPR with one negative), with the device and the commit. Numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
import yaml
from common import commit as bench_commit
from common import kernels, sync
from tqdm.auto import tqdm

from sea.batch import Batch
from sea.models.base import GraphData, adam, model_class
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup
from sea.train import build_model, seed_everything, train_step

BABY = (19445, 7050, 119674)  # users, items, training interactions (SEA.md §5)
FEATURE_DIMS = {"image": 4096, "text": 384}  # MMRec's Baby features, for models that read features


def synthetic_graph(
    n_users: int, n_items: int, n_train: int, dims: dict[str, int], device: torch.device, seed: int = 0
) -> GraphData:
    """Exactly ``n_train`` distinct training pairs with Zipf-popular items, every user with
    at least one; a few valid/test pairs; Gaussian features of ``dims``."""
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, 2 * n_train)])
    items = (rng.zipf(1.3, len(users)) - 1) % n_items
    pairs = pd.DataFrame({"user": users, "item": items}).drop_duplicates()
    train = pairs.head(n_train)
    held = pairs.iloc[n_train : n_train + 2 * n_users]
    split = np.where(np.arange(len(held)) % 2 == 0, "valid", "test")
    table = pd.concat([train.assign(split="train"), held.assign(split=split)], ignore_index=True)
    feats = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    return GraphData.build(table, n_items, feats, device)


def parse_sets(sets: list[str]) -> dict[str, dict[str, object]]:
    """``["lightgcn.reg_weight=0", …]`` → ``{"lightgcn": {"reg_weight": 0}}`` (values as YAML)."""
    out: dict[str, dict[str, object]] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"-S {item!r}: expected section.key=value")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def time_variant(
    data: GraphData,
    model_name: str,
    loss: dict,
    train: dict,
    batches: int,
    batch_size: int,
    device: torch.device,
    sets: dict[str, dict[str, object]],
) -> float:
    """Median seconds of one training step (negative draw included) under these params."""
    params = {"model": {"name": model_name}, "club": {"steps": 0}} | sets
    params["loss"] = sets.get("loss", {}) | loss
    params["train"] = {"batch_size": batch_size} | sets.get("train", {}) | train
    setup = TrainingSetup.from_params(params)
    seed_everything(0, deterministic=device.type == "cpu")
    model = build_model(data, setup)
    opt = adam(model.main_parameters(), 1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    ranking = setup.make_ranking_loss(data)
    times = []
    for i in range(batches + 2):
        idx = torch.randint(len(data.train_users), (batch_size,), generator=gen, device=device)
        users = data.train_users[idx]
        sync(device)
        t0 = time.perf_counter()
        batch = Batch(users, data.train_items[idx], negatives(users, setup.train.negatives))
        train_step(model, opt, data, batch, ranking)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lightgcn", help="any registered model (default lightgcn)")
    p.add_argument("--negatives", type=int, nargs="+", default=[1, 1000], help="CCL negatives per positive")
    p.add_argument("--memory", type=int, nargs="+", default=[4], help="CBNS memory sizes, in batches")
    p.add_argument("--batches", type=int, default=10, help="timed batches per variant (after 2 warm-up)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a param for every variant (repeatable)",
    )
    args = p.parse_args()
    sets = parse_sets(args.set)

    device = torch.device(args.device)
    dims = FEATURE_DIMS if model_class(args.model).uses_features else {}
    data = synthetic_graph(*BABY, dims, device)
    n_batches = -(-len(data.train_users) // args.batch_size)
    variants = [("bpr, 1 negative (baseline)", {"kind": "bpr"}, {"negatives": 1})]
    variants += [(f"ccl, {n} negatives", {"kind": "ccl"}, {"negatives": n}) for n in args.negatives]
    variants += [("softmax, in-batch only", {"kind": "softmax"}, {})]
    variants += [
        (
            f"softmax + CBNS memory of {m} batches",
            {"kind": "softmax"},
            {"sampler": "cross_batch", "cbns_memory_batches": m, "cbns_warmup_steps": 0},
        )
        for m in args.memory
    ]

    commit = f"{bench_commit()}, {kernels()}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"model={args.model} device={name} commit={commit} batch={args.batch_size} {' '.join(args.set)}: "
        f"{data.n_users:,} users, {data.n_items:,} items, {len(data.train_users):,} training pairs, "
        f"{n_batches} batches/epoch"
    )
    results = {}
    for label, loss, train in tqdm(variants, desc="variants", unit="variant"):
        results[label] = time_variant(data, args.model, loss, train, args.batches, args.batch_size, device, sets)
    base = results[variants[0][0]]
    for label, seconds in results.items():
        print(
            f"  {label:<40} {seconds:.4f} s/batch -> {seconds * n_batches:7.2f} s/epoch "
            f"({(seconds - base) * n_batches:+7.2f} s/epoch vs baseline)"
        )
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
