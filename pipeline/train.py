"""Stage train: train the model ``model.name`` names on data/processed/ and
data/features/, once per seed, and write models/ (weights, train.json, recommendations)
and reports/history.csv. With ``train.processes: N > 1`` it relaunches itself under
torchrun (docs/distributed.md). See docs/stages.md and docs/models/index.md."""

from __future__ import annotations

from sea.runtime import describe, start_stage, waiting

start_stage("train")  # first, before torch computes anything: params.yaml [compute]

import csv

import numpy as np
import pandas as pd
import torch

from sea import artifacts, distributed
from sea.checkpoint import Checkpoint, Run, save_checkpoint
from sea.cli import run_stage
from sea.config import load_params
from sea.evaluation import embed
from sea.features import resolve_device
from sea.files import atomic_path, write_json
from sea.recommend import top_items, with_ids
from sea.setup import TrainingSetup
from sea.train import build_model, count_parameters, fit, load_graph_data, seed_everything


def write_history(history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(artifacts.HISTORY) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def main() -> None:
    setup = TrainingSetup.from_params(load_params())
    if setup.train.processes > 1 and not distributed.launched():
        with waiting():  # the ranks share the cores
            raise SystemExit(distributed.torchrun(__file__, setup.train.processes, prefix="train stage failed"))
    with distributed.process_group(setup.train.processes, torch.device(resolve_device(setup.train.device))) as (
        world,
        device,
    ):
        train(setup, world, device)


def train(setup: TrainingSetup, world: distributed.World, device: torch.device) -> None:
    """Train every seed on ``device`` as rank ``world.rank``; rank 0 writes the outputs."""
    name, select = setup.model.name, setup.eval.select
    data = load_graph_data(setup, device)
    say = print if world.is_main else (lambda *_: None)
    all_users = np.arange(data.n_users)
    runs, history, recommendations, seeds, timings = [], [], [], {}, {}
    for seed in setup.train.run_seeds:
        seed_everything(seed, deterministic=device.type == "cpu")
        model = build_model(data, setup)
        n_params, n_all = count_parameters(model.main_parameters()), count_parameters(model.parameters())
        say(
            f"{name} seed {seed} on {device}: {data.n_users} users, {data.n_items} items, "
            f"{len(data.train_users)} training interactions, {n_params:,} parameters"
            + (f" (+ {n_all - n_params:,} fitted separately)" if n_all > n_params else "")
        )
        result = fit(model, data, setup, seed, log=say)  # leaves the best state loaded (on rank 0)
        if not world.is_main:
            continue
        runs.append(Run(seed, result.best_epoch, result.best_state))
        history += [
            {"seed": seed, "epoch": row["epoch"], "best_epoch": result.best_epoch} | row for row in result.history
        ]
        top = top_items(
            model, embed(model, data), data, all_users, max(setup.eval.topk), setup.eval.chunk(data.n_items)
        )
        recommendations.append(top.assign(seed=seed))
        seeds[str(seed)] = {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_valid": result.best_valid,
        }
        n_epochs = max(len(result.history), 1)
        timings[str(seed)] = {
            "seconds": round(result.seconds, 2),
            "seconds_per_epoch": round(result.seconds / n_epochs, 3),
            "evaluation_seconds": round(result.eval_seconds, 2),
        }
        say(
            f"seed {seed}: best valid {select} {result.best_valid.get(select, float('nan')):.4f} at epoch "
            f"{result.best_epoch} of {len(result.history)} ({result.seconds:.1f} s, "
            f"{result.seconds / n_epochs:.2f} s/epoch, of which validation {result.eval_seconds:.1f} s)"
        )

    if not world.is_main:
        return
    save_checkpoint(
        artifacts.MODEL,
        Checkpoint(
            params=setup.to_dict(),
            n_users=data.n_users,
            n_items=data.n_items,
            feature_dims={m: int(x.shape[1]) for m, x in data.features.items()},
            runs=runs,
        ),
    )
    write_history(history)
    table = with_ids(pd.concat(recommendations, ignore_index=True))
    artifacts.write_parquet(
        table.astype({"seed": "int64"})[["seed", "user", "reviewer_id", "rank", "item", "asin", "score"]],
        artifacts.RECOMMENDATIONS,
    )
    write_json(
        artifacts.TRAIN_SUMMARY,
        {"model": name, "device": device.type}
        | describe()
        | {"parameters": n_params, "parameters_fitted_separately": n_all - n_params, "seeds": seeds},
    )
    write_json(
        artifacts.TRAIN_TIMINGS, {"model": name, "device": str(device), "processes": world.size, "seeds": timings}
    )


if __name__ == "__main__":
    run_stage(main, "train")
