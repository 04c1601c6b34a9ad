"""Stage evaluate: rank all items for every user with the trained models/, at each
seed's best validation epoch, beside a most-popular baseline, and write reports/
(metrics.json, metrics_detail.json, per_user.parquet, report.md, learning_curves.png).
See docs/stages.md."""

from __future__ import annotations

from sea.runtime import start_stage

start_stage("evaluate")  # first, before torch computes anything: params.yaml [compute]

import json

import numpy as np
import pandas as pd
import torch

from sea import artifacts
from sea.checkpoint import load_checkpoint
from sea.cli import run_stage
from sea.config import load_params
from sea.evaluation import embed, evaluate_per_user
from sea.features import resolve_device
from sea.files import write_json, write_text
from sea.metrics import per_user_metrics
from sea.models.base import GraphData, model_class
from sea.recommend import load_model
from sea.report import markdown_report, plot_learning_curves
from sea.setup import TrainingSetup
from sea.train import load_graph_data

SPLITS = ("valid", "test")
HEADLINE = ("recall", "ndcg")  # the metrics of metrics.json, at each K


def most_popular(data: GraphData, split: str, ks: list[int], batch_size: int):
    """Per-user metrics of ranking every user's candidates by training popularity."""
    pop = torch.bincount(data.train_items.cpu(), minlength=data.n_items).float()
    return per_user_metrics(
        lambda u: pop.expand(len(u), -1), data.csr["train"], data.csr[split], data.n_items, ks, batch_size
    )


def per_user_rows(model: str, seed: int, split: str, users: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": model,
            "seed": np.full(len(users), seed, dtype=np.int64),
            "split": split,
            "user": users.astype(np.int32),
        }
        | values
    )


def summary(table: pd.DataFrame, metrics: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each metric per split over the users of ``table`` (one model, one seed)."""
    return {
        s: {m: float(table.loc[table["split"] == s, m].mean()) for m in metrics}
        | {"users": int((table["split"] == s).sum())}
        for s in SPLITS
    }


def main() -> None:
    ckpt = load_checkpoint(artifacts.MODEL)
    # The model is rebuilt with the params it was trained with; [eval] comes from params.yaml.
    setup = TrainingSetup.from_params(ckpt.params | {"eval": load_params().get("eval")})
    device = torch.device(resolve_device(setup.train.device))
    name, ks = setup.model.name, setup.eval.topk
    data = load_graph_data(setup, device)
    bs = setup.eval.chunk(data.n_items)  # users scored at once (eval.batch_size, eval.memory_mib)

    tables = []
    for run in ckpt.runs:
        model = load_model(ckpt, data, run.seed)
        emb = embed(model, data)
        for split in SPLITS:
            users, values = evaluate_per_user(model, data, split, ks, bs, emb)
            tables.append(per_user_rows(name, run.seed, split, users, values))
    for split in SPLITS:
        tables.append(per_user_rows("most_popular", -1, split, *most_popular(data, split, ks, bs)))
    per_user = pd.concat(tables, ignore_index=True)
    artifacts.write_parquet(per_user, artifacts.PER_USER)

    metric_names = [c for c in per_user.columns if "@" in c]
    trained = per_user[per_user["model"] == name]
    per_seed = {
        str(r.seed): {"best_epoch": r.best_epoch} | summary(trained[trained["seed"] == r.seed], metric_names)
        for r in ckpt.runs
    }

    def over_seeds(reduce) -> dict[str, dict[str, float]]:
        return {s: {m: float(reduce([v[s][m] for v in per_seed.values()])) for m in metric_names} for s in SPLITS}

    mean = over_seeds(np.mean)
    detail = {
        "model": name,
        "select": setup.eval.select,
        "seeds": per_seed,
        "mean": mean,
        "std": over_seeds(lambda x: np.std(x, ddof=1) if len(x) > 1 else 0.0),
        "most_popular": summary(per_user[per_user["model"] == "most_popular"], metric_names),
    }
    headline = [f"{m}@{k}" for m in HEADLINE for k in ks]
    write_json(artifacts.METRICS, {s: {m: mean[s][m] for m in headline} for s in SPLITS})
    write_json(artifacts.METRICS_DETAIL, detail)

    plot_learning_curves(pd.read_csv(artifacts.HISTORY), artifacts.CURVES_PNG, setup.eval.select)
    uses_features = bool(ckpt.feature_dims)
    report = markdown_report(
        stats=json.loads(artifacts.GRAPH_STATS.read_text()),
        feature_info={m: artifacts.read_feature_info(m) for m in ckpt.feature_dims} if uses_features else {},
        train=json.loads(artifacts.TRAIN_SUMMARY.read_text()),
        detail=detail,
        setup=setup.to_dict(),
        ks=ks,
        ranking_loss=setup.ranking_loss,
        trainable=model_class(name).trainable,
    )
    write_text(artifacts.REPORT_MD, report)
    sel = setup.eval.select
    print(
        f"test {sel}: {name} {mean['test'][sel]:.4f} (mean of {len(per_seed)} seed(s)), "
        f"most popular {detail['most_popular']['test'][sel]:.4f}"
    )


if __name__ == "__main__":
    run_stage(main, "evaluate")
