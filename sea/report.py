"""The human-readable outputs of the evaluate stage: a PNG of the learning curves (works
offline, unlike `dvc plots show`'s HTML) and a short markdown report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sea.io import atomic_path


def plot_learning_curves(history: pd.DataFrame, path: Path, select: str) -> None:
    """Training losses and validation metrics per epoch, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8))
    groups = list(history.groupby("seed")) if "seed" in history else [(None, history)]
    valid_cols = [c for c in history.columns if c.startswith(("valid_recall@", "valid_ndcg@"))]
    for seed, run in groups:
        tag = "" if len(groups) == 1 else f" (seed {seed})"
        for col in ("loss", "bpr", "club", "solosim"):
            if col in run:
                ax_loss.plot(run["epoch"], run[col], label=col + tag)
        for col in valid_cols:
            ax_valid.plot(run["epoch"], run[col], marker=".", label=col.removeprefix("valid_") + tag)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training losses (batch means)")
    ax_loss.legend(fontsize="small")
    ax_valid.set_xlabel("epoch")
    ax_valid.set_title(f"validation (model selection on {select})")
    ax_valid.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def metric_table(rows: dict[str, dict[str, float]], columns: list[str],
                 std: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table, one row per model; ``std`` adds ± values for the rows it names."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{values[c]:.4f}" + (f" ± {std[name][c]:.4f}" if std and name in std else "") for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _feature_line(modality: str, info: dict) -> str:
    n, missing = info.get("n_items", 0), info.get("n_missing", 0) + info.get("n_undecodable", 0)
    encoder = info.get("model", "?")
    if modality == "image":
        encoder += f" (pretrained: {info.get('pretrained')})"
    return (f"- **{modality}**: {encoder}, {info.get('dim')}-d; {n - missing} of {n} items encoded, "
            f"{missing} filled with the mean vector" + (f" — {info['note']}" if info.get("note") else ""))


def markdown_report(*, stats: dict, feature_info: dict[str, dict], train: dict, metrics: dict,
                    setup: dict, ks: list[int]) -> str:
    a = stats["after_k_core"]
    s = stats["split"]
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks] + [f"{m}@{max(ks)}" for m in ("precision", "map", "hit")]
    parts = [
        f"# SEA on `{stats['dataset']}`",
        "",
        "## Data",
        f"- raw: {stats['raw']['reviews']:,} reviews, {stats['raw']['users']:,} users, {stats['raw']['items']:,} items; "
        f"{stats['deduplicated']['duplicates_dropped']:,} duplicate (user, item) pairs dropped",
        f"- after {stats['k_core']}-core: {a['users']:,} users, {a['items']:,} items, {a['interactions']:,} "
        f"interactions (density {a['density']:.4f})",
        f"- split `{s['method']}` (seed {s['seed']}): {s['train']:,} train, {s['valid']:,} valid, {s['test']:,} test",
        f"- items with metadata {stats['items']['with_metadata']:,}, with text {stats['items']['with_text']:,}, "
        f"with an image URL {stats['items']['with_image_url']:,}",
        "",
        "## Features",
        *[_feature_line(m, info) for m, info in feature_info.items()],
    ]
    image = feature_info.get("image")
    if image is not None and not image.get("pretrained_weights", True):
        parts += ["", "**Warning: the image features come from a randomly initialised CLIP encoder "
                  "(`features.image.pretrained: none`). They carry no pretrained visual meaning; "
                  "numbers here do not measure what real CLIP features would give.**"]
    modalities = setup["model"]["modalities"]
    if len(modalities) == 1:
        parts += ["", f"Only one modality ({modalities[0]}) is used: the cross-modal Solosim term is off."]
    seeds = train["seeds"]
    epochs = ", ".join(f"seed {k}: best epoch {v['best_epoch']} of {v['epochs_run']}" for k, v in seeds.items())
    std = metrics.get("sea_std")
    sea_name = "SEA" if std is None else f"SEA (mean ± std, {len(seeds)} seeds)"

    def table(split: str) -> str:
        rows = {sea_name: metrics["sea"][split], "most popular": metrics["most_popular"][split]}
        return metric_table(rows, cols, {sea_name: std[split]} if std else None)

    parts += [
        "",
        "## Model and training",
        f"- SEA, modalities {modalities}, {train['parameters']:,} trainable parameters "
        f"(+ {train['estimator_parameters']:,} in the CLUB estimator(s))",
        f"- loss: club_weight {setup['loss']['club_weight']}, solosim_weight {setup['loss']['solosim_weight']}, "
        f"temperature {setup['loss']['temperature']}, distance {setup['loss']['distance']}, "
        f"CLUB pairing {setup['club']['pairing']} with {setup['club']['steps']} estimator steps",
        f"- trained on {train['device']} in {train['seconds']:.1f} s ({train['seconds_per_epoch']:.2f} s/epoch); "
        f"{epochs}. The best epoch is chosen on validation {setup['eval']['select']}; test metrics "
        "are reported at that epoch only",
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
