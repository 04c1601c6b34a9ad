"""Stage evaluate: full-ranking metrics of the best-validation SEA on valid and test, next
to a most-popular baseline; metrics JSON, learning-curve PNG and a markdown report."""

from __future__ import annotations

import json

import pandas as pd
import torch

from sea import artifacts
from sea.config import TrainingSetup, load_params
from sea.io import write_json, write_text
from sea.metrics import evaluate_ranking
from sea.report import markdown_report, plot_learning_curves
from sea.features import resolve_device
from sea.train import build_model, evaluate, load_pipeline_data


def most_popular(data, split: str, ks: list[int], batch_size: int) -> dict[str, float]:
    """Rank every user's candidates by training popularity."""
    pop = torch.bincount(data.train_items.cpu(), minlength=data.n_items).float()
    return evaluate_ranking(lambda u: pop.expand(len(u), -1), data.csr["train"], data.csr[split],
                            data.n_items, ks, batch_size)


def main() -> None:
    params = load_params()
    device = torch.device(resolve_device(TrainingSetup.from_params(params).train.device))
    checkpoint = torch.load(artifacts.MODEL, map_location=device, weights_only=True)
    # The model is rebuilt with the config it was trained with; [eval] comes from params.
    setup = TrainingSetup.from_params(checkpoint["config"] | {"eval": params.get("eval")})
    data = load_pipeline_data(setup, device)
    model, _ = build_model(data, setup)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device)

    ks, bs = setup.eval.topk, setup.eval.batch_size
    metrics = {
        "sea": {s: evaluate(model, data, s, ks, bs) for s in ("valid", "test")},
        "most_popular": {s: most_popular(data, s, ks, bs) for s in ("valid", "test")},
        "best_epoch": checkpoint["best_epoch"],
    }
    write_json(artifacts.METRICS, metrics)

    history = pd.read_csv(artifacts.HISTORY)
    plot_learning_curves(history, artifacts.CURVES_PNG, setup.eval.select)
    feature_info = {m: artifacts.read_feature_info(m) for m in setup.model.modalities}
    report = markdown_report(
        stats=json.loads(artifacts.GRAPH_STATS.read_text()),
        feature_info=feature_info,
        train=json.loads(artifacts.TRAIN_SUMMARY.read_text()),
        metrics=metrics, setup=setup.to_dict(), ks=ks,
    )
    write_text(artifacts.REPORT_MD, report)
    sel = setup.eval.select
    print(f"test {sel}: SEA {metrics['sea']['test'][sel]:.4f}, most popular {metrics['most_popular']['test'][sel]:.4f}")


if __name__ == "__main__":
    main()
