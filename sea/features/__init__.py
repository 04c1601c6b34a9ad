"""Item feature encoders: text (sentence-transformers) and images (open_clip).

Heavy imports (torch, sentence-transformers, open_clip) happen inside the functions of
:mod:`sea.features.text` and :mod:`sea.features.image`, so importing this package is cheap.
"""

from __future__ import annotations

import sys

import numpy as np

from sea.config import require, require_choice
from sea.errors import shown


def resolve_device(name: str = "auto") -> str:
    """Return the torch device to use: ``"auto"`` means ``cuda`` when available, else ``cpu``.

    Any other value (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) is returned unchanged.
    """
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: ``features.*.precision``: the dtype an encoder computes in (its rows are float32 either way).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def check_precision(value: str, section: str) -> None:
    """An encoder's ``precision``: one of :data:`sea.features.PRECISIONS`."""
    require_choice(value, PRECISIONS, section, "precision")


#: Most feature-extraction ranks one machine may run (features.*.processes).
MAX_PROCESSES = 64


def check_processes(processes: int, device: str, section: str) -> None:
    """``processes`` ranks (sharded extraction, see :mod:`sea.distributed`): 1..64; on
    CUDA one GPU per rank, so ``cuda:N`` is refused and ``auto``/``cuda`` need that many GPUs."""
    require(
        1 <= processes <= MAX_PROCESSES, section, f"processes must be in [1, {MAX_PROCESSES}], got {shown(processes)}"
    )
    if processes == 1 or device == "cpu":
        return
    require(
        ":" not in device,
        section,
        f"processes: {shown(processes)} puts rank r on cuda:r; "
        f"device must then be auto, cuda or cpu, got {shown(device)}",
    )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    require(
        count == 0 and device == "auto" or processes <= count,
        section,
        f"processes: {shown(processes)} needs {shown(processes)} CUDA devices (one per rank) "
        f"with device {shown(device)}; "
        f"this machine has {count}: lower processes or use device: cpu",
    )


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), not by emulation."""
    import torch

    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def resolve_precision(name: str, device: str) -> str:
    """The dtype an encoder computes in on ``device`` (already resolved). The default,
    ``float32``, computes the same features on every machine; ``bfloat16`` is about twice
    as fast on a CPU that multiplies it natively, every row within cosine 0.9999 of
    float32's (``tests/test_precision.py``, ``bench/encoder_speed.py``). ``auto`` picks by
    the machine, so its features depend on it: float16 on CUDA, bfloat16 on a CPU that
    multiplies it natively, float32 elsewhere. Any other value is returned unchanged."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if native_bf16_cpu() else "float32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


def fill_missing_with_mean(encoded: np.ndarray, present: list[int], n: int) -> np.ndarray:
    """Scatter ``encoded`` rows to positions ``present`` of an ``[n, d]`` float32 matrix.

    Rows not in ``present`` get the mean of the encoded rows. ``encoded`` must hold one row
    per index in ``present`` and at least one row.
    """
    if len(present) == 0 or encoded.shape[0] != len(present):
        raise ValueError(
            f"need one encoded row per present item (got {encoded.shape[0]} rows for {len(present)} items)"
        )
    encoded = np.asarray(encoded, dtype=np.float32)
    out = np.empty((n, encoded.shape[1]), dtype=np.float32)
    out[:] = encoded.mean(axis=0, dtype=np.float64).astype(np.float32)
    out[present] = encoded
    return out


def empty_features(modality: str, n_items: int) -> tuple[np.ndarray, dict]:
    """The feature file of a dataset with no input at all for ``modality`` (no metadata):
    ``[n_items, 0]``, and an info dict that :func:`sea.artifacts.read_features` refuses
    with one line, so a model that reads the modality stops and one that does not trains."""
    counter = "n_with_text" if modality == "text" else "n_decoded"
    note = (
        f"no item has any {modality} input (a dataset without metadata?): no {modality} features; "
        f"models that read {modality} refuse to train on it"
    )
    print(f"warning: {note}", file=sys.stderr)
    return np.zeros((n_items, 0), dtype=np.float32), {"dim": 0, "n_items": n_items, counter: 0, "note": note}


__all__ = [
    "PRECISIONS",
    "empty_features",
    "fill_missing_with_mean",
    "native_bf16_cpu",
    "resolve_device",
    "resolve_precision",
    "torch_dtype",
]
