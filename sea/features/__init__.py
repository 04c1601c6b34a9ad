"""Item feature encoders: text (sentence-transformers) and images (open_clip).

Heavy imports (torch, sentence-transformers, open_clip) happen inside the functions of
:mod:`sea.features.text` and :mod:`sea.features.image`, so importing this package is cheap.
"""

from __future__ import annotations

import sys

import numpy as np


def resolve_device(name: str = "auto") -> str:
    """Return the torch device to use: ``"auto"`` means ``cuda`` when available, else ``cpu``.

    Any other value (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) is returned unchanged.
    """
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fill_missing_with_mean(encoded: np.ndarray, present: list[int], n: int) -> np.ndarray:
    """Scatter ``encoded`` rows to positions ``present`` of an ``[n, d]`` float32 matrix.

    Rows not in ``present`` get the mean of the encoded rows. ``encoded`` must hold one row
    per index in ``present`` and at least one row.
    """
    if len(present) == 0 or encoded.shape[0] != len(present):
        raise ValueError(f"need one encoded row per present item (got {encoded.shape[0]} rows for {len(present)} items)")
    encoded = np.asarray(encoded, dtype=np.float32)
    out = np.empty((n, encoded.shape[1]), dtype=np.float32)
    out[:] = encoded.mean(axis=0, dtype=np.float64).astype(np.float32)
    out[present] = encoded
    return out


__all__ = ["resolve_device", "fill_missing_with_mean"]


def empty_features(modality: str, n_items: int) -> tuple[np.ndarray, dict]:
    """The feature file of a dataset with no input at all for ``modality`` (no metadata):
    ``[n_items, 0]``, and an info dict that :func:`sea.artifacts.read_features` refuses
    with one line, so a model that reads the modality stops and one that does not trains."""
    counter = "n_with_text" if modality == "text" else "n_decoded"
    note = (f"no item has any {modality} input (a dataset without metadata?): no {modality} features; "
            f"models that read {modality} refuse to train on it")
    print(f"warning: {note}", file=sys.stderr)
    return np.zeros((n_items, 0), dtype=np.float32), {"dim": 0, "n_items": n_items, counter: 0, "note": note}
