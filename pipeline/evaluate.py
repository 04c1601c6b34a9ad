"""Stage evaluate: full-ranking metrics of the best-validation SEA (each seed, and their
mean and standard deviation) on valid and test, next to a most-popular baseline; metrics
JSON, learning-curve PNG and a markdown report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from sea import artifacts
from sea.config import TrainingSetup, load_params
from sea.features import resolve_device
from sea.io import write_json, write_text
from sea.metrics import evaluate_ranking
from sea.report import markdown_report, plot_learning_curves
from sea.train import GraphData, build_model, embed, evaluate, load_pipeline_data

SPLITS = ("valid", "test")


def most_popular(data: GraphData, split: str, ks: list[int], batch_size: int) -> dict[str, float]:
    """Rank every user's candidates by training popularity."""
    pop = torch.bincount(data.train_items.cpu(), minlength=data.n_items).float()
    return evaluate_ranking(lambda u: pop.expand(len(u), -1), data.csr["train"], data.csr[split],
                            data.n_items, ks, batch_size)


def aggregate(per_seed: dict[str, dict], reduce) -> dict[str, dict[str, float]]:
    """Reduce (mean or std) each metric of each split over the seeds."""
    first = next(iter(per_seed.values()))
    return {s: {k: float(reduce([r[s][k] for r in per_seed.values()])) for k in first[s]} for s in SPLITS}


def main() -> None:
    params = load_params()
    device = torch.device(resolve_device(TrainingSetup.from_params(params).train.device))
    checkpoint = torch.load(artifacts.MODEL, map_location=device, weights_only=True)
    # The model is rebuilt with the config it was trained with; [eval] comes from params.
    setup = TrainingSetup.from_params(checkpoint["config"] | {"eval": params.get("eval")})
    data = load_pipeline_data(setup, device)
    ks, bs = setup.eval.topk, setup.eval.batch_size

    per_seed = {}
    for seed, run in checkpoint["runs"].items():
        model, _ = build_model(data, setup)
        model.load_state_dict(run["state_dict"])
        model.to(device)
        out = embed(model, data)
        per_seed[seed] = {s: evaluate(model, data, s, ks, bs, out=out) for s in SPLITS} | {"best_epoch": run["best_epoch"]}
    metrics = {"sea": aggregate(per_seed, np.mean)}
    if len(per_seed) > 1:
        metrics["sea_std"] = aggregate(per_seed, np.std)
    metrics |= {"most_popular": {s: most_popular(data, s, ks, bs) for s in SPLITS}, "seeds": per_seed}
    write_json(artifacts.METRICS, metrics)

    history = pd.read_csv(artifacts.HISTORY)
    plot_learning_curves(history, artifacts.CURVES_PNG, setup.eval.select)
    report = markdown_report(
        stats=json.loads(artifacts.GRAPH_STATS.read_text()),
        feature_info={m: artifacts.read_feature_info(m) for m in setup.model.modalities},
        train=json.loads(artifacts.TRAIN_SUMMARY.read_text()),
        metrics=metrics, setup=setup.to_dict(), ks=ks,
    )
    write_text(artifacts.REPORT_MD, report)
    sel = setup.eval.select
    print(f"test {sel}: SEA {metrics['sea']['test'][sel]:.4f} (mean of {len(per_seed)} seed(s)), "
          f"most popular {metrics['most_popular']['test'][sel]:.4f}")


if __name__ == "__main__":
    main()
