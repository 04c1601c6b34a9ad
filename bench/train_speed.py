"""Time one model's training step and full-ranking evaluation on a synthetic graph of a
given size, through the same trainer the pipeline uses (any registered model).

    python bench/train_speed.py --preset sample                  # SEA at the bundled sample's sizes
    python bench/train_speed.py --model lightgcn --preset baby   # Amazon Baby's sizes (SEA.md §5)
    python bench/train_speed.py --club-steps 0                   # SEA without the estimator loop
    python bench/train_speed.py --preset baby --formulation both # plain vs fast split, one run
    python bench/train_speed.py --model lightgcn --preset baby --scale 16 --steps-per-epoch 59
                                         # 16x Baby: exact batches vs the linear regime (docs/scale.md)

Prints seconds per batch (median over the timed batches, after warm-up), the projected
seconds per epoch, evaluation seconds, peak GPU memory and peak process memory (RSS), the device and the commit. For a
model with SEA's separation, ``--formulation both`` (the default) times the plain
formulation (the split W·x materialised for every item) and the fast one (each reader's
linear map composed with W, sea/models/separation.py) on the same weights and batches,
taking turns batch by batch, and prints their ratio.

``--scale N`` multiplies the preset's users, items and interactions by N (the same
density per user). ``--steps-per-epoch S`` also times the linear regime
(``train.steps_per_epoch``): steps over batches of ceil(interactions / S), taking turns with
the exact batches on the same model, and projects each regime's seconds per epoch (exact:
s/batch × the batches of ``--batch-size``; linear: s/step × S).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import numpy as np
import pandas as pd
import torch
from common import commit as bench_commit
from common import kernels, sync

from sea.batch import Batch
from sea.evaluation import evaluate
from sea.models.base import REGISTRY, GraphData, adam, model_class
from sea.models.separation import set_composed
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup
from sea.train import build_model, seed_everything, train_step

PRESETS = {  # users, items, training interactions, image dim, text dim
    "sample": (1534, 600, 11279, 512, 384),
    "baby": (19445, 7050, 119674, 4096, 384),
    "clothing": (39387, 23033, 207400, 4096, 384),  # MMRec's Clothing: 278,677 interactions, 74% train as Baby
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


def time_steps(
    models: dict[str, torch.nn.Module],
    setup: TrainingSetup,
    data: GraphData,
    batches: dict[str, list[Batch]],
    device: torch.device,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Seconds of each training step of each model on its ``batches``, the models taking
    turns batch by batch (so each meets the same machine state); the first ``warmup``
    batches are not returned."""
    opts = {name: adam(m.main_parameters(), setup.train.lr) for name, m in models.items()}
    loss = setup.make_ranking_loss(data)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(min(len(b) for b in batches.values())):
        for name, model in models.items():
            sync(device)
            t0 = time.perf_counter()
            logs = train_step(model, opts[name], data, batches[name][i], loss)
            float(logs["loss"])  # wait for the step (a host sync, as the epoch end does)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    import sea.models  # noqa: F401  (fills the registry for --model's choices)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(REGISTRY), default="sea", help="a registered model (default: sea)")
    p.add_argument("--preset", choices=PRESETS, default="sample")
    p.add_argument("--batches", type=int, default=10, help="timed batches (after the warm-up batches)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--scale", type=int, default=1, help="multiply the preset's users, items and interactions")
    p.add_argument(
        "--steps-per-epoch", type=int, default=None, help="also time the linear regime with this many steps an epoch"
    )
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--negatives", type=int, default=1, help="negatives per positive")
    p.add_argument("--club-steps", type=int, default=50, help="SEA's CLUB estimator steps per batch")
    p.add_argument(
        "--separation", choices=["none", "sea"], default="none", help="vbpr/freedom: SEA's separation plug-in"
    )
    p.add_argument(
        "--formulation",
        choices=["both", "fast", "plain"],
        default="both",
        help="models with SEA's separation: time the plain and/or the fast formulation",
    )
    p.add_argument("--image-dim", type=int, default=None, help="the image features' width (default: the preset's)")
    p.add_argument("--no-eval", action="store_true", help="skip the timed evaluation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    n_users, n_items, n_train, d_img, d_txt = PRESETS[args.preset]
    n_users, n_items, n_train = n_users * args.scale, n_items * args.scale, n_train * args.scale
    d_img = args.image_dim or d_img
    device = torch.device(args.device)
    params = {
        "model": {"name": args.model},
        "train": {"batch_size": args.batch_size, "negatives": args.negatives},
        "club": {"steps": args.club_steps},
    }
    if args.separation != "none":
        params[args.model] = {"separation": args.separation}
    setup = TrainingSetup.from_params(params)
    df, feats = synthetic(n_users, n_items, n_train, {"image": d_img, "text": d_txt})
    data = GraphData.build(df, n_items, feats if model_class(args.model).uses_features else {}, device)
    seed_everything(0, deterministic=device.type == "cpu")
    sync(device)
    t0 = time.perf_counter()
    model = build_model(data, setup)
    sync(device)
    build_s = time.perf_counter() - t0
    gen = torch.Generator(device=device).manual_seed(0)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    model.on_epoch_start(1, gen)  # per-epoch work (FREEDOM's edge pruning) is not timed
    n_seen = len(data.train_users)

    def draw(size: int) -> list[Batch]:
        out = []
        for _ in range(args.batches + args.warmup):
            idx = torch.randint(n_seen, (size,), generator=gen, device=device)
            users = data.train_users[idx]
            out.append(Batch(users, data.train_items[idx], negatives(users, args.negatives)))
        return out

    batches = draw(args.batch_size)

    has_split = set_composed(copy.deepcopy(model), True) > 0
    formulations = ["plain", "fast"] if args.formulation == "both" else [args.formulation]
    if not has_split:
        formulations = ["-"]  # nothing to compose
    if not model.trainable:
        formulations = []  # no training step to time (ItemKNNCBF): its build is its training
    runs = {}
    for name in formulations:
        runs[name] = copy.deepcopy(model)  # the same weights for each formulation
        if has_split:
            set_composed(runs[name], name == "fast")
    n_batches = -(-len(data.train_users) // args.batch_size)
    batches_of = {name: batches for name in runs}
    if args.steps_per_epoch is not None and runs:  # the linear regime's larger batches, taking turns with the exact
        runs["linear"] = copy.deepcopy(next(iter(runs.values())))
        batches_of["linear"] = draw(-(-n_seen // args.steps_per_epoch))
    times = time_steps(runs, setup, data, batches_of, device, args.warmup)
    per_batch = {name: statistics.median(t) for name, t in times.items()}
    sync(device)
    t0 = time.perf_counter()
    if not args.no_eval:
        evaluate(model, data, "valid", [10, 20])
    sync(device)
    eval_s = time.perf_counter() - t0 if not args.no_eval else float("nan")
    commit = f"{bench_commit()}, {kernels()}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    gpu = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(
        f"model={args.model} separation={args.separation} preset={args.preset} device={name} commit={commit} "
        f"batch={args.batch_size} negatives={args.negatives} club_steps={args.club_steps}"
    )
    print(f"  scale {args.scale}: {data.n_users:,} users, {data.n_items:,} items, {d_img}-d image, {d_txt}-d text")
    print(f"  {len(data.train_users):,} train interactions, {n_batches} batches/epoch")
    for form, t in per_batch.items():
        if form == "linear":
            size = -(-n_seen // args.steps_per_epoch)
            print(
                f"  linear regime (steps_per_epoch {args.steps_per_epoch}, batches of {size:,}): {t:.4f} s/step "
                f"(median of {args.batches}) -> {t * args.steps_per_epoch:.2f} s/epoch"
            )
            continue
        print(f"  formulation {form}: {t:.4f} s/batch (median of {args.batches}) -> {t * n_batches:.2f} s/epoch")
    if not model.trainable:
        print(f"  no training step: built in {build_s:.2f} s (the whole of its fit besides one validation)")
    if "plain" in per_batch and "fast" in per_batch:
        print(f"  plain/fast ratio: {per_batch['plain'] / per_batch['fast']:.2f}x")
    print(f"  evaluation {eval_s:.2f} s; peak GPU memory {gpu}; peak process RSS {rss:.2f} GiB (data, model and all)")


if __name__ == "__main__":
    main()
