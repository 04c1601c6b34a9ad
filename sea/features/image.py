"""Image features: fetch item images and embed them with an open_clip image tower.

:func:`fetch_images` turns image URLs into local files (http(s) downloads are cached
under a folder named by the sha1 of the URL; ``file://`` URLs and paths are used in
place). :func:`load_clip` builds an open_clip model from a pretrained tag, a local
checkpoint file or a seeded random initialisation, and :func:`encode_images` embeds the
files with ``model.encode_image``. The feature width always comes from the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from sea.features import fill_missing_with_mean, resolve_device
from sea.io import FetchError, atomic_path, open_url, resolve_url

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ``pretrained`` values that mean "no weights: seeded random initialisation".
RANDOM_INIT = (None, "", "none")
#: File suffixes that mark a ``pretrained`` value as a checkpoint path, not a tag.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


# --------------------------------------------------------------------------- fetching


def cache_name(url: str) -> str:
    """File name under which the download of ``url`` is cached: the sha1 hex of the URL."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def _local_path(file_url: str) -> Path:
    """The filesystem path of an absolute ``file://`` URL."""
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(file_url).path))


def _download(url: str, dest: Path, timeout: float) -> Path:
    """Download ``url`` to ``dest`` atomically, unless ``dest`` is already there."""
    if dest.is_file():
        return dest
    with atomic_path(dest) as tmp:
        with open_url(url, timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    return dest


def fetch_images(
    urls: Sequence[str | None],
    cache_dir: Path,
    *,
    base_dir: Path = Path("."),
    timeout: float = 10.0,
    workers: int = 8,
) -> list[Path | None]:
    """Return a local file for each image URL, or ``None`` where there is none.

    ``http(s)://`` URLs are downloaded concurrently into ``cache_dir`` (file name: sha1 of
    the URL, written atomically); a file already in the cache is reused without a request,
    and a URL listed twice is fetched once. ``file://`` URLs and plain paths (relative ones
    taken against ``base_dir``) are returned in place, not copied. ``None``/empty entries,
    unreachable URLs, HTTP errors, unsupported schemes and missing files give ``None``;
    failures are counted and reported with one warning, never raised.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    result: list[Path | None] = [None] * len(urls)
    remote: dict[str, list[int]] = {}  # http(s) URL -> positions that want it
    failures: list[str] = []

    for i, url in enumerate(urls):
        if not url:
            continue
        try:
            full = resolve_url(url, base_dir)
        except FetchError as e:
            failures.append(str(e))
            continue
        if full.startswith(("http://", "https://")):
            remote.setdefault(full, []).append(i)
            continue
        path = _local_path(full)
        if path.is_file():
            result[i] = path
        else:
            failures.append(f"no such file: {path}")

    if remote:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(_download, u, cache_dir / cache_name(u), timeout): u for u in remote}
            for future in tqdm(as_completed(futures), total=len(futures), desc="fetch images", unit="img"):
                url = futures[future]
                try:
                    path = future.result()
                except (FetchError, OSError, HTTPException, ValueError) as e:
                    failures.append(f"{url}: {e}")
                    continue
                for i in remote[url]:
                    result[i] = path

    if failures:
        msg = (f"{len(failures)} of {len(urls)} images could not be fetched "
               f"(they will get the mean image feature); first: {failures[0]}")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return result


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
    ``pretrained_weights`` (False for random init), ``seed`` and a plain-words ``note``.
    """
    import open_clip
    import torch

    dev = resolve_device(device)
    random_init = pretrained is None or pretrained.strip().lower() in RANDOM_INIT
    if random_init:
        source, kind = None, "random"
    elif Path(pretrained).is_file():
        # absolute, so open_clip cannot mistake a file called e.g. "openai" for a tag
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
        note = f"image features come from {model_name} with weights loaded from the local checkpoint {source}"
    else:
        note = f"image features come from {model_name} with open_clip pretrained weights '{source}'"
    info = {
        "model": model_name,
        "pretrained": "none" if random_init else pretrained,
        "pretrained_weights": not random_init,
        "seed": seed,
        "note": note,
    }
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


def _decode(path: Path, preprocess: Callable):
    """Open ``path`` as RGB and apply ``preprocess``; ``None`` if PIL cannot decode it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return preprocess(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.debug("cannot decode %s: %s", path, e)
        return None


def encode_images(
    paths: Sequence[Path | None],
    model,
    preprocess: Callable,
    *,
    batch_size: int = 64,
    device: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Embed image files with ``model.encode_image`` (batched, under inference mode).

    Returns a float32 array ``[len(paths), d]`` (``d`` from the model; features are not
    normalised) and an info dict (``dim``, ``n_items``, ``n_decoded``, ``n_missing`` for
    ``None`` paths, ``n_undecodable`` for files PIL cannot read). Missing and undecodable
    items get the mean feature of the decoded ones. When no image decodes, every row is
    zero (with a warning; ``n_decoded`` is 0 and the train stage refuses such features).
    The model is moved to ``device``.
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    model = model.to(dev).eval()
    wanted = [i for i, p in enumerate(paths) if p is not None]
    decoded: list[int] = []
    chunks: list[np.ndarray] = []

    with torch.inference_mode(), tqdm(total=len(wanted), desc="encode images", unit="img") as bar:
        for start in range(0, len(wanted), batch_size):
            tensors, batch_idx = [], []
            with _torch_threads(1):
                for i in wanted[start:start + batch_size]:
                    tensor = _decode(Path(paths[i]), preprocess)
                    if tensor is not None:
                        tensors.append(tensor)
                        batch_idx.append(i)
            if tensors:
                out = model.encode_image(torch.stack(tensors).to(dev))
                chunks.append(out.float().cpu().numpy())
                decoded.extend(batch_idx)
            bar.update(len(wanted[start:start + batch_size]))

    if decoded:
        features = fill_missing_with_mean(np.concatenate(chunks), decoded, len(paths))
    else:  # e.g. offline: no image host reachable. Zeros, flagged in info; training refuses them.
        msg = (f"none of the {len(paths)} images could be fetched and decoded ({len(wanted)} had a file): "
               "the image features are all zero and carry no information")
        warnings.warn(msg, stacklevel=2)
        with torch.inference_mode():
            dim = model.encode_image(preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(dev)).shape[1]
        features = np.zeros((len(paths), dim), dtype=np.float32)
    info = {
        "dim": int(features.shape[1]),
        "n_items": len(paths),
        "n_decoded": len(decoded),
        "n_missing": len(paths) - len(wanted),
        "n_undecodable": len(wanted) - len(decoded),
    }
    return features, info
