"""The quality cost of the linear training regime (``train.steps_per_epoch``, docs/scale.md):
each model trained in the exact regime and with each ``--steps`` S, several seeds each, on
a processed dataset (the graph and feature stages' outputs under ``--root``), then ranked
on the test split; every regime is compared with the exact one by the comparison's paired
tests over users (sea/compare.py: per user the metric averaged over seeds; paired t-test
and Wilcoxon).

    python bench/regime_quality.py --root /path/to/a/checkout  # after `dvc repro feature stages` there
    python bench/regime_quality.py --models lightgcn sea --steps 2 1 --seeds 1 2 3 -S train.max_epochs=40

The model is selected on validation (``eval.select``, early stopping) as the train stage
does; the test split is only reported. Prints a markdown table; timings are the median epoch's
seconds (its validation included) and, as all timings, depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics

import pandas as pd
import yaml
from common import commit, kernels
from tqdm.auto import tqdm

from sea.compare import paired_test
from sea.config import load_params
from sea.evaluation import embed, evaluate_per_user
from sea.setup import TrainingSetup
from sea.train import build_model, fit, load_graph_data, seed_everything


def override(params: dict, assignment: str) -> dict:
    """``section.key=value`` (the value read as YAML) set in a copy of ``params``."""
    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    return params | {section: (params.get(section) or {}) | {name: yaml.safe_load(value)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=".", help="a checkout whose data/processed and data/features exist")
    p.add_argument("--params", default="params.yaml", help="the params the runs start from")
    p.add_argument("--models", nargs="+", default=["lightgcn", "sea"])
    p.add_argument("--steps", nargs="+", type=int, default=[2], help="steps_per_epoch values of the linear regime")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("-S", dest="overrides", action="append", default=[], help="section.key=value, as dvc exp run -S")
    args = p.parse_args()

    base = load_params(args.params)
    for assignment in args.overrides:
        base = override(base, assignment)
    regimes = [None, *args.steps]
    runs = [(m, s, seed) for m in args.models for s in regimes for seed in args.seeds]
    per_user: dict[tuple[str, int | None], list[pd.DataFrame]] = {}
    info: dict[tuple[str, int | None], list[tuple[int, float]]] = {}
    data_of = {}
    for model_name, steps, seed in tqdm(runs, desc="runs", unit="run"):
        params = override(override(base, f"model.name={model_name}"), f"train.steps_per_epoch={steps or 'null'}")
        setup = TrainingSetup.from_params(params)
        if model_name not in data_of:
            data_of[model_name] = load_graph_data(setup, "cpu", args.root)
        data = data_of[model_name]
        seed_everything(seed)
        model = build_model(data, setup)
        result = fit(model, data, setup, seed, log=lambda _: None, progress=False)
        users, values = evaluate_per_user(
            model, data, "test", setup.eval.topk, setup.eval.chunk(data.n_items), embed(model, data)
        )
        per_user.setdefault((model_name, steps), []).append(pd.DataFrame(values, index=users).assign(seed=seed))
        info.setdefault((model_name, steps), []).append((result.best_epoch, statistics.median(result.epoch_seconds)))

    select = TrainingSetup.from_params(base).eval.select
    metrics = [select, select.replace("recall", "ndcg")]
    print(f"commit={commit()}, {kernels()}; seeds {args.seeds}; overrides {args.overrides}")
    head = " | ".join(f"test {m} (mean ± std over seeds)" for m in metrics)
    print(f"\n| model | regime | {head} | Δ {metrics[0]} vs exact | t-test p | Wilcoxon p | best epoch | s/epoch |")
    print("|---|---|" + "---|" * (len(metrics) + 5))
    for model_name in args.models:
        exact = pd.concat(per_user[model_name, None])
        for steps in regimes:
            rows = pd.concat(per_user[model_name, steps])
            cells = []
            for m in metrics:
                seed_means = rows.groupby("seed")[m].mean()
                cells.append(f"{seed_means.mean():.4f} ± {seed_means.std(ddof=1):.4f}")
            if steps is None:
                delta = "—", "—", "—"
            else:
                t = paired_test(rows.groupby(level=0)[metrics[0]].mean(), exact.groupby(level=0)[metrics[0]].mean())
                delta = f"{t.delta:+.4f}", f"{t.t_pvalue:.3g}", f"{t.wilcoxon_pvalue:.3g}"
            epochs = [e for e, _ in info[model_name, steps]]
            seconds = statistics.median(s for _, s in info[model_name, steps])
            regime = "exact" if steps is None else f"linear, S={steps}"
            print(
                f"| {model_name} | {regime} | {' | '.join(cells)} | {' | '.join(delta)} | "
                f"{', '.join(map(str, epochs))} | {seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
