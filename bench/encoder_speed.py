"""Throughput of the feature encoders the pipeline uses: CLIP on image files (decode +
preprocess in worker threads, the model in fp16 autocast on CUDA) and sentence-transformers
on item-like texts (fp16 autocast on CUDA).

    python bench/encoder_speed.py                          # CPU here: small counts
    python bench/encoder_speed.py --device cuda            # GPU defaults: 4,096 images, 20,000 texts
    python bench/encoder_speed.py --device cuda --processes 2   # sharded over 2 GPUs (end to end)

Images are synthetic 500x500 JPEGs (product-photo size) written to a temporary folder
first; CLIP's weights are random (pretrained: none), which costs the same as real ones.
Prints images/s and items/s (after one warm-up batch; with --processes > 1 the time
includes starting the ranks and loading the model in each), the device, torch threads
and the git commit. Targets on one GPU (issue 9): CLIP ViT-B-32 >= 2,000 images/s,
sentences >= 5,000 items/s.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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


WORDS = ("soft cotton baby blanket organic crib sheet stroller toy bottle bpa free machine washable "
         "pink blue grey bear elephant pattern gift set pack of two newborn toddler safe durable").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` item-like sentences of 20 to 120 words (title, brand, categories, description)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))) for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_images(args, device: str) -> float:
    from sea.features.image import encode_images, encode_images_sharded, load_clip

    with tempfile.TemporaryDirectory(prefix="sea-bench-images-") as d:
        t = time.perf_counter()
        paths = make_images(Path(d), args.images)
        print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - t:.1f} s")
        if args.processes > 1:
            t = time.perf_counter()
            encode_images_sharded(paths, args.clip, None, processes=args.processes, batch_size=args.image_batch,
                                  device=device, workers=args.workers, threads=args.threads)
            return len(paths) / (time.perf_counter() - t)
        model, preprocess, _ = load_clip(args.clip, None, device=device)
        encode_images(paths[:args.image_batch], model, preprocess, batch_size=args.image_batch, device=device,
                      workers=args.workers)  # warm-up
        sync(device)
        t = time.perf_counter()
        encode_images(paths, model, preprocess, batch_size=args.image_batch, device=device, workers=args.workers)
        sync(device)
        return len(paths) / (time.perf_counter() - t)


def bench_texts(args, device: str) -> float:
    from sea.features.text import encode_batches, encode_texts, length_batches, load_text_model

    texts = make_texts(args.texts)
    if args.processes > 1:
        t = time.perf_counter()
        encode_texts(texts, args.text_model, batch_size=args.text_batch, device=device, processes=args.processes,
                     threads=args.threads)
        return len(texts) / (time.perf_counter() - t)
    model, _, _ = load_text_model(args.text_model, device)
    _, batches = length_batches(texts, args.text_batch)
    encode_batches(model, texts, batches[:1], device)  # warm-up
    sync(device)
    t = time.perf_counter()
    encode_batches(model, texts, batches, device)
    sync(device)
    return len(texts) / (time.perf_counter() - t)


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
    args = p.parse_args()
    device = args.device
    on_gpu = device.startswith("cuda")
    args.images = args.images or (4096 if on_gpu else 128)
    args.texts = args.texts or (20000 if on_gpu else 512)

    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {}
    if args.skip != "images":
        results["images"] = bench_images(args, device)
    if args.skip != "texts":
        results["texts"] = bench_texts(args, device)
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"processes {args.processes}, commit {commit or '?'}")
    if "images" in results:
        print(f"CLIP {args.clip} (fp16 autocast on CUDA, {args.workers} decode threads, batch {args.image_batch}): "
              f"{results['images']:,.0f} images/s over {args.images:,} 500x500 JPEGs")
    if "texts" in results:
        print(f"{args.text_model} (fp16 autocast on CUDA, batch {args.text_batch}): "
              f"{results['texts']:,.0f} items/s over {args.texts:,} texts of 20-120 words")


if __name__ == "__main__":
    main()
