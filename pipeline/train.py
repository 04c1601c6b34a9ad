"""Stage train: fit SEA (params model, loss, club, train, eval.select) with early stopping
on validation; save the best-validation weights and the per-epoch history."""

from __future__ import annotations

import csv

import torch

from sea import artifacts
from sea.config import TrainingSetup, load_params
from sea.io import atomic_path, write_json
from sea.features import resolve_device
from sea.train import build_model, check_setup, count_parameters, fit, load_pipeline_data, seed_everything


def write_history(history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(artifacts.HISTORY) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def main() -> None:
    setup = TrainingSetup.from_params(load_params())
    check_setup(setup)
    device = torch.device(resolve_device(setup.train.device))
    seed_everything(setup.train.seed)
    data = load_pipeline_data(setup, device)
    model, estimators = build_model(data, setup)
    n_params = count_parameters(model)
    print(f"SEA on {device}: {data.n_users} users, {data.n_items} items, {len(data.train_users)} "
          f"training interactions, {n_params:,} parameters, modalities {setup.model.modalities}")
    result = fit(model, estimators, data, setup, device)

    with atomic_path(artifacts.MODEL) as tmp:
        torch.save({
            "state_dict": result.best_state,
            "config": setup.to_dict(),
            "feature_dims": {m: int(data.features[m].shape[1]) for m in setup.model.modalities},
            "n_users": data.n_users,
            "n_items": data.n_items,
            "best_epoch": result.best_epoch,
        }, tmp)
    write_history(result.history)
    write_json(artifacts.TRAIN_SUMMARY, {
        "device": str(device),
        "parameters": n_params,
        "estimator_parameters": count_parameters(estimators),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "seconds": round(result.seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(len(result.history), 1), 3),
    })
    print(f"best valid {setup.eval.select} {result.best_valid.get(setup.eval.select, float('nan')):.4f} "
          f"at epoch {result.best_epoch} of {len(result.history)} ({result.seconds:.1f} s)")


if __name__ == "__main__":
    main()
