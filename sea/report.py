"""The human-readable outputs of the evaluate stage: a PNG of the learning curves (works
offline, unlike `dvc plots show`'s HTML) and a short markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sea.files import atomic_path


def plot_learning_curves(history: pd.DataFrame, path: Path, select: str) -> None:
    """Training losses and validation metrics per epoch: one colour per seed, one line
    style per column, and each seed's best epoch (on validation ``select``) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8))
    if "seed" not in history:
        history = history.assign(seed=0)
    fixed = {"seed", "epoch", "best_epoch"}
    loss_cols = [c for c in history.columns if c not in fixed and not c.startswith("valid_")]
    valid_cols = [c for c in history.columns if c.startswith(("valid_recall@", "valid_ndcg@"))]
    styles = ["-", "--", ":", "-."]
    groups = list(history.groupby("seed", sort=False))
    for j, (seed, run) in enumerate(groups):
        colour = f"C{j % 10}"
        tag = "" if len(groups) == 1 else f" (seed {seed})"
        for i, col in enumerate(loss_cols):
            ax_loss.plot(run["epoch"], run[col], color=colour, linestyle=styles[i % len(styles)], label=col + tag)
        evaluated = run.dropna(subset=valid_cols)
        for i, col in enumerate(valid_cols):
            ax_valid.plot(
                evaluated["epoch"],
                evaluated[col],
                color=colour,
                linestyle=styles[i % len(styles)],
                marker=".",
                label=col.removeprefix("valid_") + tag,
            )
        best = run[run["epoch"] == run["best_epoch"]] if "best_epoch" in run else run.iloc[:0]
        if len(best) and f"valid_{select}" in run:
            ax_valid.axvline(best["epoch"].iloc[0], color=colour, linewidth=0.8, alpha=0.6)
            ax_valid.plot(
                best["epoch"],
                best[f"valid_{select}"],
                color=colour,
                marker="*",
                markersize=12,
                linestyle="none",
                label=f"best epoch {best['epoch'].iloc[0]}{tag}",
            )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training losses (batch means)")
    ax_loss.legend(fontsize="small")
    ax_valid.set_xlabel("epoch")
    ax_valid.set_title(f"validation (model selection on {select})")
    ax_valid.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def metric_table(
    rows: dict[str, dict[str, float]], columns: list[str], std: dict[str, dict[str, float]] | None = None
) -> str:
    """Markdown table, one row per model; ``std`` adds ± values for the rows it names."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{values[c]:.4f}" + (f" ± {std[name][c]:.4f}" if std and name in std else "") for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernels_phrase(info: dict) -> str:
    """How a stage computed, in words, from :func:`sea.runtime.describe`'s keys."""
    return f"{info['kernels']} kernels, ATen {info.get('cpu_kernels', '?')}"


def _feature_line(modality: str, info: dict) -> str:
    n, missing = info.get("n_items", 0), info.get("n_missing", 0) + info.get("n_undecodable", 0)
    encoder = info.get("model", "?")
    if modality == "image":
        encoder += f" (pretrained: {info.get('pretrained')})"
    if info.get("precision"):
        encoder += f" in {info['precision']}"
    if info.get("kernels"):
        encoder += f" ({kernels_phrase(info)})"
    return (
        f"- **{modality}**: {encoder}, {info.get('dim')}-d; {n - missing} of {n} items encoded, "
        f"{missing} filled with the mean vector" + (f" — {info['note']}" if info.get("note") else "")
    )


def markdown_report(
    *,
    stats: dict,
    feature_info: dict[str, dict],
    train: dict,
    detail: dict,
    setup: dict,
    ks: list[int],
    ranking_loss: str,
    trainable: bool = True,
) -> str:
    """The evaluate stage's report: data, features (models that read them), the model and
    its params, each seed's best epoch, metrics (mean ± std over seeds) next to most popular.
    ``trainable`` False: a model without training (``Recommender.trainable``, ItemKNNCBF),
    reported as evaluated once, with no loss, optimiser or epochs.
    Nothing time-dependent: timings stay on the console and in logs/."""
    a = stats["after_k_core"]
    s = stats["split"]
    name = detail["model"]
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks] + [
        f"{m}@{max(ks)}" for m in ("precision", "map", "hit")
    ]
    parts = [
        f"# {name} on `{stats['dataset']}`",
        "",
        "## Data",
        f"- raw: {stats['raw']['reviews']:,} reviews, {stats['raw']['users']:,} users, "
        f"{stats['raw']['items']:,} items; "
        f"{stats['deduplicated']['duplicates_dropped']:,} duplicate (user, item) pairs dropped",
        f"- after {stats['k_core']}-core: {a['users']:,} users, {a['items']:,} items, {a['interactions']:,} "
        f"interactions (density {a['density']:.4f})",
        f"- split `{s['method']}` (seed {s['seed']}): {s['train']:,} train, {s['valid']:,} valid, {s['test']:,} test",
        f"- items with metadata {stats['items']['with_metadata']:,}, with text {stats['items']['with_text']:,}, "
        f"with an image URL {stats['items']['with_image_url']:,}",
    ]
    for role, f in stats.get("dumps", {}).items():
        parts.append(
            f"- {role} dump `{f['file']}`: sha256 `{(f['sha256'] or '')[:16]}…`, verified: "
            f"{f.get('verified') or 'not recorded'}"
        )
    parts += ["", "## Features"]
    if feature_info:
        parts += [_feature_line(m, info) for m, info in feature_info.items()]
    else:
        parts += [f"- none: {name} reads no item features"]
    image = feature_info.get("image")
    if image is not None and not image.get("pretrained_weights", True):
        parts += [
            "",
            "**Warning: the image features come from a randomly initialised CLIP encoder "
            "(`features.image.pretrained: none`). They carry no pretrained visual meaning; "
            "numbers here do not measure what real CLIP features would give.**",
        ]
    seeds = train["seeds"]
    n_seeds = len(detail["seeds"])
    epochs = ", ".join(f"seed {k}: best epoch {v['best_epoch']} of {v['epochs_run']}" for k, v in seeds.items())
    own = setup.get(name, {})
    trained = name if n_seeds == 1 else f"{name} (mean ± std, {n_seeds} seeds)"

    def table(split: str) -> str:
        rows = {trained: detail["mean"][split], "most popular": detail["most_popular"][split]}
        return metric_table(rows, cols, {trained: detail["std"][split]} if n_seeds > 1 else None)

    extra = train.get("parameters_fitted_separately", 0)
    parts += [
        "",
        "## Model and training",
        f"- model `{name}`: "
        + (", ".join(f"{k} {v}" for k, v in own.items()) or "no params of its own")
        + f"; {train['parameters']:,} trainable parameters"
        + (f" (+ {extra:,} fitted separately)" if extra else "")
        + (f"; trained on {train['device']} with {kernels_phrase(train)}" if train.get("kernels") else ""),
        f"- modalities {setup['model']['modalities']}" if feature_info else "- modalities: not used",
        *(
            [
                f"- ranking loss `{ranking_loss}` (loss.kind {setup['loss']['kind']}), sampler "
                f"{setup['train']['sampler']}, {setup['train']['negatives']} negative(s) per positive; "
                f"Adam lr {setup['train']['lr']}, batch {setup['train']['batch_size']}, at most "
                f"{setup['train']['max_epochs']} epochs, patience {setup['train']['patience']} evaluations",
                f"- {epochs}. The best epoch is chosen on validation {setup['eval']['select']}; test metrics "
                "are reported at that epoch only",
            ]
            if trainable
            else [
                f"- no training: {name} learns nothing by gradient; each seed's model is built once and "
                "evaluated once (no loss, optimiser or epochs)"
            ]
        ),
        "- every params section it was trained with: "
        + "; ".join(f"`{k}: {json.dumps(v)}`" for k, v in setup.items() if k != "eval"),
        "",
        "## Metrics (full ranking, training items masked)",
        "",
        "Validation:",
        "",
        table("valid"),
        "",
        "Test:",
        "",
        table("test"),
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    return "\n".join(parts)
