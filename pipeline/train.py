"""Stage train: fit SEA (params model, loss, club, train, eval.select) with early stopping
on validation, once per seed of ``train.seeds`` (or ``train.seed``); save each seed's
best-validation weights and the per-epoch history."""

from __future__ import annotations

import csv
import sys

import torch

from sea import artifacts
from sea.config import TrainingSetup, load_params
from sea.features import resolve_device
from sea.io import DataError, atomic_path, write_json
from sea.train import build_model, count_parameters, fit, load_pipeline_data, seed_everything


def write_history(history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(artifacts.HISTORY) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def main() -> None:
    setup = TrainingSetup.from_params(load_params())
    device = torch.device(resolve_device(setup.train.device))
    data = load_pipeline_data(setup, device)
    runs, history, summaries = {}, [], {}
    for seed in setup.train.run_seeds:
        seed_everything(seed, deterministic=device.type == "cpu")
        model, estimators = build_model(data, setup)
        n_params, n_est = count_parameters(model), count_parameters(estimators)
        print(f"SEA seed {seed} on {device}: {data.n_users} users, {data.n_items} items, "
              f"{len(data.train_users)} training interactions, {n_params:,} parameters, "
              f"modalities {setup.model.modalities}")
        result = fit(model, estimators, data, setup, device, seed=seed)
        runs[str(seed)] = {"state_dict": result.best_state, "best_epoch": result.best_epoch}
        history += [{"seed": seed} | row for row in result.history]
        summaries[str(seed)] = {
            "epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "best_valid": result.best_valid, "seconds": round(result.seconds, 2),
            "seconds_per_epoch": round(result.seconds / max(len(result.history), 1), 3),
        }
        print(f"seed {seed}: best valid {setup.eval.select} "
              f"{result.best_valid.get(setup.eval.select, float('nan')):.4f} at epoch "
              f"{result.best_epoch} of {len(result.history)} ({result.seconds:.1f} s)")

    with atomic_path(artifacts.MODEL) as tmp:
        torch.save({
            "config": setup.to_dict(),
            "feature_dims": {m: int(data.features[m].shape[1]) for m in setup.model.modalities},
            "n_users": data.n_users,
            "n_items": data.n_items,
            "runs": runs,
        }, tmp)
    write_history(history)
    total = sum(s["seconds"] for s in summaries.values())
    epochs = sum(s["epochs_run"] for s in summaries.values())
    write_json(artifacts.TRAIN_SUMMARY, {
        "device": str(device),
        "parameters": n_params,
        "estimator_parameters": n_est,
        "seeds": summaries,
        "seconds": round(total, 2),
        "seconds_per_epoch": round(total / max(epochs, 1), 3),
    })


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"train stage failed: {e}")
