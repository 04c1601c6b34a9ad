"""Throughput of the feature encoders the pipeline uses: CLIP on image files (decode +
preprocess in worker threads) and sentence-transformers on item-like texts, each in float32
and in the precision ``auto`` picks (float16 on CUDA, bfloat16 on a CPU with native
bfloat16), in one run, with their ratio and the lowest cosine between a row's two versions.

    python bench/encoder_speed.py                          # CPU here: small counts
    python bench/encoder_speed.py --device cuda            # GPU defaults: 4,096 images, 20,000 texts
    python bench/encoder_speed.py --precision float32      # one precision only
    python bench/encoder_speed.py --device cuda --processes 2   # sharded over 2 GPUs (end to end)

Images are synthetic 500x500 JPEGs (product-photo size) written to a temporary folder
first; CLIP's weights are random (pretrained: none), which costs the same as real ones.
Prints images/s and items/s per precision (after one warm-up batch; with --processes > 1
the time includes starting the ranks and loading the model in each), the device, torch
threads and the git commit. Targets on one GPU (issue 9): CLIP ViT-B-32 >= 2,000 images/s,
sentences >= 5,000 items/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import commit as bench_commit
from common import kernels, sync


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 500x500 JPEGs: coloured shapes on a noisy background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(180, 256, size=(500, 500, 3), dtype=np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, 400, 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(40, 100)), int(y0 + rng.integers(40, 100)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"{i:06d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


WORDS = (
    "soft cotton baby blanket organic crib sheet stroller toy bottle bpa free machine washable "
    "pink blue grey bear elephant pattern gift set pack of two newborn toddler safe durable"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` item-like sentences of 20 to 120 words (title, brand, categories, description)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))) for _ in range(n)]


def bench_images(args, device: str, precision: str, paths: list[Path]) -> tuple[float, np.ndarray | None]:
    """images/s and the features (None with --processes > 1)."""
    from sea.features.image import encode_images, encode_images_sharded, load_clip

    if args.processes > 1:
        t = time.perf_counter()
        encode_images_sharded(
            paths,
            args.clip,
            None,
            processes=args.processes,
            batch_size=args.image_batch,
            device=device,
            workers=args.workers,
            threads=args.threads,
            precision=precision,
        )
        return len(paths) / (time.perf_counter() - t), None
    model, preprocess, _ = load_clip(args.clip, None, device=device, precision=precision)
    encode_images(
        paths[: args.image_batch], model, preprocess, batch_size=args.image_batch, device=device, workers=args.workers
    )  # warm-up
    sync(device)
    t = time.perf_counter()
    rows, _ = encode_images(paths, model, preprocess, batch_size=args.image_batch, device=device, workers=args.workers)
    sync(device)
    return len(paths) / (time.perf_counter() - t), rows


def bench_texts(args, device: str, precision: str, texts: list[str]) -> tuple[float, np.ndarray | None]:
    """items/s and the features in batch order (None with --processes > 1)."""
    from sea.features.text import encode_batches, encode_texts, length_batches, load_text_model

    if args.processes > 1:
        t = time.perf_counter()
        encode_texts(
            texts,
            args.text_model,
            batch_size=args.text_batch,
            device=device,
            processes=args.processes,
            threads=args.threads,
            precision=precision,
        )
        return len(texts) / (time.perf_counter() - t), None
    model = load_text_model(args.text_model, device, precision)
    _, batches = length_batches(texts, args.text_batch)
    encode_batches(model, texts, batches[:1])  # warm-up
    sync(device)
    t = time.perf_counter()
    rows = encode_batches(model, texts, batches)
    sync(device)
    return len(texts) / (time.perf_counter() - t), rows


def min_cosine(a: np.ndarray | None, b: np.ndarray | None) -> str:
    if a is None or b is None:
        return ""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return f", lowest row cosine to float32 {cos.min():.5f}"


def report(what: str, unit: str, results: dict[str, tuple[float, np.ndarray | None]]) -> None:
    for precision, (rate, _) in results.items():
        print(f"{what} in {precision}: {rate:,.1f} {unit}/s")
    low = [p for p in results if p != "float32"]
    if "float32" in results and low:
        (rate32, rows32), (rate, rows) = results["float32"], results[low[0]]
        print(f"  {low[0]}/float32 speed ratio, one run: {rate / rate32:.2f}x{min_cosine(rows, rows32)}")


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--images", type=int, default=None, help="images to encode (default: 4096 on CUDA, 128 on CPU)")
    p.add_argument("--texts", type=int, default=None, help="texts to encode (default: 20000 on CUDA, 512 on CPU)")
    p.add_argument("--image-batch", type=int, default=256)
    p.add_argument("--text-batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=16, help="image decode threads")
    p.add_argument("--processes", type=int, default=1, help="ranks (sea.distributed); one GPU each on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch threads per rank with --processes > 1")
    p.add_argument("--clip", default="ViT-B-32", help="open_clip architecture (random weights)")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2")
    p.add_argument("--skip", choices=["images", "texts"], default=None)
    p.add_argument(
        "--precision",
        choices=["both", "auto", "float32", "bfloat16", "float16"],
        default="both",
        help="both (default): float32 and what auto picks on the device, in one run",
    )
    args = p.parse_args()
    device = args.device
    on_gpu = device.startswith("cuda")
    args.images = args.images or (4096 if on_gpu else 128)
    args.texts = args.texts or (20000 if on_gpu else 512)
    from sea.features import resolve_precision

    chosen = resolve_precision("auto" if args.precision == "both" else args.precision, device)
    precisions = list(dict.fromkeys(["float32", chosen])) if args.precision == "both" else [chosen]

    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    commit = f"{bench_commit()}, {kernels()}"
    images: dict[str, tuple[float, np.ndarray | None]] = {}
    texts: dict[str, tuple[float, np.ndarray | None]] = {}
    with tempfile.TemporaryDirectory(prefix="sea-bench-images-") as d:
        if args.skip != "images":
            t = time.perf_counter()
            paths = make_images(Path(d), args.images)
            print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - t:.1f} s")
            for precision in precisions:
                images[precision] = bench_images(args, device, precision, paths)
    if args.skip != "texts":
        sentences = make_texts(args.texts)
        for precision in precisions:
            texts[precision] = bench_texts(args, device, precision, sentences)
    print(
        f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"processes {args.processes}, commit {commit or '?'}"
    )
    if images:
        report(
            f"CLIP {args.clip} ({args.workers} decode threads, batch {args.image_batch}, "
            f"{args.images:,} 500x500 JPEGs)",
            "images",
            images,
        )
    if texts:
        report(f"{args.text_model} (batch {args.text_batch}, {args.texts:,} texts of 20-120 words)", "items", texts)


if __name__ == "__main__":
    main()
