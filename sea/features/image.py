"""Image features: embed item images with an open_clip image tower.

The image files come from :mod:`sea.features.fetch` (:func:`fetch_images`, or an
:class:`ImageFetcher` that :func:`encode_images` may read while it is still fetching).
:func:`load_clip` builds an open_clip model from
a pretrained tag, a local checkpoint file or a seeded random initialisation, and
:func:`encode_images` embeds the files with ``model.encode_image``, refusing images whose
header announces too many pixels or an extreme aspect ratio before decoding them. The
feature width always comes from the model.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from sea.features import fill_missing_with_mean, resolve_device, resolve_precision, torch_dtype
from sea.io import sha256_file
from sea.runtime import rebalance

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ``pretrained`` values that mean "no weights: seeded random initialisation".
RANDOM_INIT = (None, "", "none")
#: File suffixes that mark a ``pretrained`` value as a checkpoint path, not a tag.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
#: Images are refused, undecoded, above this many pixels (the header says how many) ...
MAX_PIXELS = 40_000_000
#: ... or when the long side is more than this many times the short one: CLIP resizes the
#: short side to 224 px, so a 200000x1 strip would become 44.8 million x 224 pixels.
MAX_ASPECT = 20
#: The image formats PIL may open (no plugins that call out to other programs).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


# --------------------------------------------------------------------------- model


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def load_clip(
    model_name: str,
    pretrained: str | None,
    *,
    device: str = "auto",
    seed: int = 0,
    precision: str = "float32",
) -> tuple["torch.nn.Module", Callable, dict]:
    """Build an open_clip model in eval mode and its (inference) image transform, which
    yields tensors of the model's input dtype.

    ``pretrained`` selects the weights:

    * ``None``, ``""`` or ``"none"``: random initialisation after ``torch.manual_seed(seed)``
      (deterministic for a given seed; the features carry no visual meaning);
    * a path to an existing file: a local checkpoint (a ``state_dict`` saved with
      ``torch.save``, optionally under a ``"state_dict"`` key, or ``.safetensors``);
    * anything else: an open_clip pretrained tag such as ``"openai"`` (downloads weights).

    ``precision`` (:func:`sea.features.resolve_precision`: ``auto`` is float16 on CUDA,
    bfloat16 on a CPU that multiplies it natively, else float32) is the dtype the model
    computes in, through open_clip's own mixed precision (its ``fp16``/``bf16``: the
    weights of products in that dtype, layer norms in float32), applied after the float32
    initialisation or loading.

    Returns ``(model, preprocess, info)`` with info keys ``model``, ``pretrained``,
    ``pretrained_weights`` (False for random init), ``seed``, ``precision`` (resolved), a
    plain-words ``note`` and, for a checkpoint, ``checkpoint_sha256``. Paths are recorded as
    given, never made absolute.
    """
    import open_clip
    import torch

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    open_clip_precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[precision]
    random_init = pretrained is None or pretrained.strip().lower() in RANDOM_INIT
    if random_init:
        source, kind = None, "random"
    elif Path(pretrained).is_file():
        # absolute, so open_clip cannot mistake a file called e.g. "openai" for a tag (only
        # handed to open_clip: the info records the path as given, and the file's sha256)
        source, kind = str(Path(pretrained).resolve()), "checkpoint"
    elif _looks_like_path(pretrained):
        raise FileNotFoundError(f"CLIP checkpoint {pretrained!r} does not exist")
    else:
        source, kind = pretrained, "tag"

    torch.manual_seed(seed)  # weights are initialised on the CPU, then moved to `dev`
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name,
        pretrained=source,
        device=dev,
        pretrained_image=False,
        pretrained_text=not random_init,  # random init must not fetch hub text towers
        precision=open_clip_precision,
    )
    model.eval()
    if precision != "float32":
        preprocess = _to_dtype(preprocess, torch_dtype(precision))

    if kind == "random":
        note = (f"image features come from a randomly initialised {model_name} (pretrained: none, "
                f"seed {seed}): they carry no pretrained visual meaning")
    elif kind == "checkpoint":
        note = f"image features come from {model_name} with weights loaded from the local checkpoint {pretrained}"
    else:
        note = f"image features come from {model_name} with open_clip pretrained weights '{source}'"
    info = {
        "model": model_name,
        "pretrained": "none" if random_init else pretrained,
        "pretrained_weights": not random_init,
        "seed": seed,
        "precision": precision,
        "note": note,
    }
    if kind == "checkpoint":
        info["checkpoint_sha256"] = sha256_file(pretrained)
    return model, preprocess, info


def _to_dtype(preprocess: Callable, dtype: "torch.dtype") -> Callable:
    """``preprocess`` followed by a cast of its float32 tensor to ``dtype``."""
    from torchvision import transforms

    return transforms.Compose([preprocess, transforms.ConvertImageDtype(dtype)])


# --------------------------------------------------------------------------- encoding


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the old setting.

    Per-image transforms work on tiny tensors: splitting them over threads only costs
    synchronisation, which becomes very slow (tens of ms per op) on a busy CPU.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _open_rgb(path: Path, max_pixels: int, max_aspect: float):
    """Decode ``path`` to an RGB PIL image, or return the reason it is refused.

    The size comes from the header (``Image.open`` is lazy): images over ``max_pixels`` or
    with a side ratio over ``max_aspect`` are refused before any pixel is decoded.
    """
    from PIL import Image

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width < 1 or height < 1:
                return "undecodable"
            if width * height > max_pixels:
                return "too_many_pixels"
            if max(width, height) > max_aspect * min(width, height):
                return "extreme_aspect_ratio"
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - hostile files make PIL raise all kinds of errors
        log.debug("cannot decode %s: %s", path, e)
        return "undecodable"


def image_batches(paths: Sequence[Path | None], batch_size: int) -> Iterator[list[tuple[int, Path]]]:
    """``(position, file)`` of the items that have a file, ``batch_size`` at a time, in item
    order: the unit of work in one process and in the ranks of a sharded run alike
    (undecodable images drop out of their batch either way, so each batch reaches the
    model with the same contents). ``paths`` is read one item at a time: it may be an
    :class:`ImageFetcher` that is still fetching the later ones."""
    batch: list[tuple[int, Path]] = []
    for i, path in enumerate(paths):
        if path is not None:
            batch.append((i, Path(path)))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _encode_batches(batches: Iterable[list[tuple[int, Path]]], total: int, model, preprocess: Callable,
                    device: str, *, workers: int, max_pixels: int, max_aspect: float,
                    desc: str = "encode images") -> tuple[list[int], int, list[np.ndarray], Counter]:
    """Decode and embed the images of ``batches``: the decoded items, how many items had a
    file, their feature rows (one array per batch), and the refusal reasons counted.

    Images are decoded and preprocessed by ``workers`` threads (PIL releases the GIL while
    decoding and resizing) with one torch thread for their tiny tensors. On CUDA the next
    batch is decoded while the GPU encodes the current one; on the CPU decoding and
    encoding take turns, so the bytes do not depend on the number of workers. The model
    computes in the dtype ``preprocess`` yields (:func:`load_clip`); the rows are float32.
    ``total``: items, for the progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    cuda = device.startswith("cuda")

    def load(item: tuple[int, Path]):
        image = _open_rgb(item[1], max_pixels, max_aspect)
        return image if isinstance(image, str) else preprocess(image)

    decoded: list[int] = []
    refused: Counter[str] = Counter()
    chunks: list[np.ndarray] = []
    n_wanted = 0
    batches = iter(batches)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, torch.inference_mode(), \
            tqdm(total=total, desc=desc, unit="img") as bar, \
            (_torch_threads(1) if cuda else contextlib.nullcontext()):
        batch = next(batches, None)
        pending = [pool.submit(load, item) for item in batch] if cuda and batch else None
        while batch is not None:
            if cuda:
                results = [f.result() for f in pending]
                following = next(batches, None)
                if following is not None:  # decode the next batch while this one is encoded
                    pending = [pool.submit(load, item) for item in following]
            else:
                with _torch_threads(1):
                    results = list(pool.map(load, batch))
                following = None
            n_wanted += len(batch)
            tensors, batch_idx = [], []
            for (i, _), result in zip(batch, results):
                if isinstance(result, str):
                    refused[result] += 1
                else:
                    tensors.append(result)
                    batch_idx.append(i)
            if tensors:
                rebalance()  # share the cores with the pipeline's other processes
                out = model.encode_image(torch.stack(tensors).to(device, non_blocking=True))
                chunks.append(out.float().cpu().numpy())
                decoded.extend(batch_idx)
            bar.update(len(batch))
            batch = following if cuda else next(batches, None)
    return decoded, n_wanted, chunks, refused


def _assemble(n_items: int, n_wanted: int, decoded: list[int], chunks: list[np.ndarray], refused: Counter,
              dim: Callable[[], int]) -> tuple[np.ndarray, dict]:
    """The feature matrix (missing and undecodable items get the mean) and its info."""
    if decoded:
        features = fill_missing_with_mean(np.concatenate(chunks), decoded, n_items)
    else:  # e.g. offline: no image host reachable. Zeros, flagged in info; training refuses them.
        msg = (f"none of the {n_items} images could be fetched and decoded ({n_wanted} had a file): "
               "the image features are all zero and carry no information")
        warnings.warn(msg, stacklevel=3)
        features = np.zeros((n_items, dim()), dtype=np.float32)
    info = {
        "dim": int(features.shape[1]),
        "n_items": n_items,
        "n_decoded": len(decoded),
        "n_missing": n_items - n_wanted,
        "n_undecodable": n_wanted - len(decoded),
        "undecodable_reasons": dict(sorted(refused.items())),
    }
    return features, info


def _clip_dim(model, preprocess: Callable, device: str) -> int:
    """The width of the model's image features (one blank image through it)."""
    import torch
    from PIL import Image

    with torch.inference_mode():
        return int(model.encode_image(preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(device)).shape[1])


def encode_images(
    paths: Sequence[Path | None],
    model,
    preprocess: Callable,
    *,
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 8,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> tuple[np.ndarray, dict]:
    """Embed image files with ``model.encode_image`` (batched, under inference mode), in
    item order; ``paths`` is read item by item, so encoding overlaps with an
    :class:`ImageFetcher` still fetching (the batches, hence the bytes, are the same).

    Returns a float32 array ``[len(paths), d]`` (``d`` from the model; features are not
    normalised) and an info dict (``dim``, ``n_items``, ``n_decoded``, ``n_missing`` for
    ``None`` paths, ``n_undecodable`` for files that are not decoded, and
    ``undecodable_reasons``: how many were not images PIL reads (``undecodable``), had more
    than ``max_pixels`` pixels (``too_many_pixels``) or a side ratio over ``max_aspect``
    (``extreme_aspect_ratio``); the last two are refused from the header, undecoded).
    Missing and undecodable items get the mean feature of the decoded ones. When no image
    decodes, every row is zero (with a warning; ``n_decoded`` is 0 and the train stage
    refuses such features). The model is moved to ``device``; ``workers`` threads decode
    the images (see :func:`_encode_batches`), and the model computes in the dtype ``preprocess``
    yields (:func:`load_clip`'s ``precision``).
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    decoded, n_wanted, chunks, refused = _encode_batches(
        image_batches(paths, batch_size), len(paths), model, preprocess, dev, workers=workers,
        max_pixels=max_pixels, max_aspect=max_aspect)
    return _assemble(len(paths), n_wanted, decoded, chunks, refused, lambda: _clip_dim(model, preprocess, dev))


def _image_rank(ctx, batches: list[list[tuple[int, str]]], model_name: str, pretrained: str | None,
                seed: int, precision: str, workers: int, max_pixels: int, max_aspect: float) -> None:
    """One rank of :func:`encode_images_sharded`: its contiguous share of the batches."""
    from sea.distributed import shard_bounds

    lo, hi = shard_bounds(len(batches), ctx.world_size, ctx.rank)
    mine = [[(i, Path(p)) for i, p in batch] for batch in batches[lo:hi]]
    model, preprocess, info = load_clip(model_name, pretrained, device=ctx.device, seed=seed, precision=precision)
    decoded, _, chunks, refused = _encode_batches(
        mine, sum(len(b) for b in mine), model, preprocess, ctx.device, workers=workers, max_pixels=max_pixels,
        max_aspect=max_aspect, desc=f"encode images (rank {ctx.rank})")
    ctx.save("decoded", np.array(decoded, dtype=np.int64))
    ctx.save("rows", np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32))
    ctx.save_json("info", {"refused": dict(refused), "clip": info, "dim": _clip_dim(model, preprocess, ctx.device)
                           if ctx.rank == 0 and not decoded else None})


def encode_images_sharded(
    paths: Sequence[Path | None],
    model_name: str,
    pretrained: str | None,
    *,
    processes: int,
    seed: int = 0,
    precision: str = "float32",
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 8,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> tuple[np.ndarray, dict]:
    """:func:`encode_images` with the model of :func:`load_clip`, sharded over ``processes``
    ranks (:mod:`sea.distributed`: rank r takes a contiguous share of the batches, on
    ``cuda:r`` on CUDA). Same result as one process's; returns the features and
    ``load_clip``'s info merged with ``encode_images``'s, plus ``processes``. ``paths`` is read
    whole before the ranks start (an :class:`ImageFetcher` is waited for)."""
    from sea.distributed import launch, load_shard_json, load_shards, shard_dir

    dev = resolve_device(device)
    batches = [[(i, str(p)) for i, p in batch] for batch in image_batches(paths, batch_size)]
    n_wanted = sum(len(b) for b in batches)
    with shard_dir() as workdir:
        launch(processes, _image_rank,
               (batches, model_name, pretrained, seed, resolve_precision(precision, dev), workers, max_pixels,
                max_aspect),
               workdir=workdir, device=dev)
        decoded = np.concatenate(load_shards(workdir, "decoded", processes)).tolist()
        chunks = [r for r in load_shards(workdir, "rows", processes) if r.size]
        infos = load_shard_json(workdir, "info", processes)
    refused: Counter[str] = Counter()
    for i in infos:
        refused.update(i["refused"])
    features, info = _assemble(len(paths), n_wanted, decoded, chunks, refused, lambda: infos[0]["dim"])
    return features, infos[0]["clip"] | info | {"processes": processes}
