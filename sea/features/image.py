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
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from sea.features import fill_missing_with_mean, resolve_device
from sea.features.fetch import ImageCache, ImageFetcher, cache_key, cache_name, fetch_images  # noqa: F401
from sea.io import sha256_file

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
) -> tuple["torch.nn.Module", Callable, dict]:
    """Build an open_clip model in eval mode and its (inference) image transform.

    ``pretrained`` selects the weights:

    * ``None``, ``""`` or ``"none"``: random initialisation after ``torch.manual_seed(seed)``
      (deterministic for a given seed; the features carry no visual meaning);
    * a path to an existing file: a local checkpoint (a ``state_dict`` saved with
      ``torch.save``, optionally under a ``"state_dict"`` key, or ``.safetensors``);
    * anything else: an open_clip pretrained tag such as ``"openai"`` (downloads weights).

    Returns ``(model, preprocess, info)`` with info keys ``model``, ``pretrained``,
    ``pretrained_weights`` (False for random init), ``seed``, a plain-words ``note`` and, for a
    checkpoint, ``checkpoint_sha256``. Paths are recorded as given, never made absolute.
    """
    import open_clip
    import torch

    dev = resolve_device(device)
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
    )
    model.eval()

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
        "note": note,
    }
    if kind == "checkpoint":
        info["checkpoint_sha256"] = sha256_file(pretrained)
    return model, preprocess, info


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


def _file_batches(paths: Sequence[Path | None], size: int) -> Iterator[list[tuple[int, Path]]]:
    """``(position, file)`` of the items that have a file, ``size`` at a time, in item
    order. ``paths`` is read one item at a time: it may be an :class:`ImageFetcher` that
    is still fetching the later ones."""
    batch: list[tuple[int, Path]] = []
    for i, path in enumerate(paths):
        if path is not None:
            batch.append((i, Path(path)))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def encode_images(
    paths: Sequence[Path | None],
    model,
    preprocess: Callable,
    *,
    batch_size: int = 64,
    device: str = "auto",
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
    Missing and undecodable items get the mean feature of the decoded ones. When no image decodes, every row is
    zero (with a warning; ``n_decoded`` is 0 and the train stage refuses such features).
    The model is moved to ``device``.
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    model = model.to(dev).eval()
    n_wanted = 0
    decoded: list[int] = []
    refused: Counter[str] = Counter()
    chunks: list[np.ndarray] = []

    with torch.inference_mode(), tqdm(total=len(paths), desc="encode images", unit="img") as bar:
        for batch in _file_batches(paths, batch_size):
            n_wanted += len(batch)
            tensors, batch_idx = [], []
            with _torch_threads(1):
                for i, path in batch:
                    image = _open_rgb(path, max_pixels, max_aspect)
                    if isinstance(image, str):
                        refused[image] += 1
                        continue
                    tensors.append(preprocess(image))
                    batch_idx.append(i)
            if tensors:
                out = model.encode_image(torch.stack(tensors).to(dev))
                chunks.append(out.float().cpu().numpy())
                decoded.extend(batch_idx)
            bar.update(batch[-1][0] + 1 - bar.n)
        bar.update(len(paths) - bar.n)

    if decoded:
        features = fill_missing_with_mean(np.concatenate(chunks), decoded, len(paths))
    else:  # e.g. offline: no image host reachable. Zeros, flagged in info; training refuses them.
        msg = (f"none of the {len(paths)} images could be fetched and decoded ({n_wanted} had a file): "
               "the image features are all zero and carry no information")
        warnings.warn(msg, stacklevel=2)
        with torch.inference_mode():
            dim = model.encode_image(preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(dev)).shape[1]
        features = np.zeros((len(paths), dim), dtype=np.float32)
    info = {
        "dim": int(features.shape[1]),
        "n_items": len(paths),
        "n_decoded": len(decoded),
        "n_missing": len(paths) - n_wanted,
        "n_undecodable": n_wanted - len(decoded),
        "undecodable_reasons": dict(sorted(refused.items())),
    }
    return features, info
