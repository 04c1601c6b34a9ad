"""Image features: fetch item images and embed them with an open_clip image tower.

:func:`fetch_images` turns the image URLs of the item metadata into local files. Those
URLs come from downloaded data, so they are not trusted: http(s) downloads only go to
public internet addresses (checked on every redirect hop), are capped in size and total
time, and are cached under a name carrying the URL's sha1 and the body's sha256 (written
atomically, verified when reused); local paths and ``file://`` URLs are used in place,
but only inside the dataset's own folder. :func:`load_clip` builds an open_clip model from
a pretrained tag, a local checkpoint file or a seeded random initialisation, and
:func:`encode_images` embeds the files with ``model.encode_image``, refusing images whose
header announces too many pixels or an extreme aspect ratio before decoding them. The
feature width always comes from the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from sea.features import fill_missing_with_mean, resolve_device
from sea.io import (Deadline, FetchError, RefusedError, TooLargeError, copy_body, is_public_address,
                    open_public_http, resolve_url, sha256_file)

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


# --------------------------------------------------------------------------- fetching


def cache_key(url: str) -> str:
    """The sha1 hex of the URL: the first part of its cache file's name."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def cache_name(url: str, sha256: str) -> str:
    """Name of the cached download of ``url`` whose bytes have the sha256 ``sha256``."""
    return f"{cache_key(url)}-{sha256}"


_CACHE_FILE = re.compile(r"([0-9a-f]{40})-([0-9a-f]{64})")
_CACHE_TMP = re.compile(r"\.[0-9a-f]{40}\.[a-z0-9_]{8}\.tmp")


def any_address(ip: str) -> bool:
    """The address policy of ``allow_private_hosts: true``: every address is allowed."""
    return True


def _local_path(file_url: str) -> Path:
    """The filesystem path of an absolute ``file://`` URL."""
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(file_url).path))


class ImageCache:
    """Downloaded images, one file per URL named ``<sha1 of URL>-<sha256 of bytes>``.

    A file enters the cache only when its whole body arrived (Content-Length checked)
    and is renamed into place atomically; a cached file is reused only when it is not
    empty, within the size cap, and its bytes still have the sha256 in its name (else
    it is deleted and fetched again). Stale ``.<sha1>.*.tmp`` files of a killed run are
    removed when the cache is opened.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, str] = {}
        for name in sorted(os.listdir(self.folder)):
            if _CACHE_TMP.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
            elif (m := _CACHE_FILE.fullmatch(name)) and m.group(1) not in self.index:
                self.index[m.group(1)] = name

    def get(self, url: str, max_bytes: int) -> Path | None:
        """The verified cached file of ``url``, or None."""
        name = self.index.get(cache_key(url))
        if name is None:
            return None
        path = self.folder / name
        try:
            size = path.lstat()
            ok = stat.S_ISREG(size.st_mode) and 0 < size.st_size <= max_bytes and sha256_file(path) == name[41:]
        except OSError:
            ok = False
        if not ok:
            with contextlib.suppress(OSError):
                path.unlink()
        return path if ok else None

    def download(self, url: str, *, timeout: float, max_bytes: int, allow_private: bool) -> Path:
        """Fetch ``url`` into the cache (see :func:`fetch_images` for the limits)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_key(url)}.", suffix=".tmp", dir=self.folder)
        tmp_path = Path(tmp)
        try:
            with Deadline(timeout) as deadline, os.fdopen(fd, "wb") as out:
                allow = any_address if allow_private else is_public_address
                with open_public_http(url, deadline, allow_address=allow) as resp:
                    n, digest = copy_body(resp, out, url, max_bytes=max_bytes, deadline=deadline)
            if n == 0:
                raise FetchError(f"{url}: empty body", reason="incomplete")
            path = self.folder / cache_name(url, digest)
            os.replace(tmp_path, path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return path


def _local_image(full_url: str, dataset_root: Path | None, allow_outside: bool, max_bytes: int) -> Path:
    """The checked local file of a ``file://`` URL (links and ``..`` already resolved)."""
    path = _local_path(full_url)
    if not allow_outside and (dataset_root is None or not path.is_relative_to(dataset_root)):
        where = f"outside the dataset folder {dataset_root}" if dataset_root else "not allowed: the metadata is remote"
        raise RefusedError(f"refusing {path}: {where}", reason="refused_outside_dataset")
    try:
        info = path.stat()
    except OSError as e:
        raise FetchError(f"no such file: {path}", reason="missing_file") from e
    if not stat.S_ISREG(info.st_mode):
        raise FetchError(f"not a regular file: {path}", reason="missing_file")
    if info.st_size > max_bytes:
        raise TooLargeError(f"{path} is {info.st_size:,} bytes, over the cap of {max_bytes:,}")
    return path


def fetch_images(
    urls: Sequence[str | None],
    cache_dir: Path,
    *,
    base_dir: Path = Path("."),
    dataset_root: Path | None = None,
    timeout: float = 10.0,
    max_bytes: int = 20_000_000,
    allow_private_hosts: bool = False,
    allow_files_outside: bool = False,
    workers: int = 8,
) -> tuple[list[Path | None], dict[str, int]]:
    """Return a local file for each image URL (``None`` where there is none) and the
    number of failures per reason.

    * ``http(s)://`` URLs are downloaded concurrently into ``cache_dir`` (see
      :class:`ImageCache`); a URL listed twice is fetched once. Each download gets
      ``timeout`` seconds in total (connect, redirects and body) and at most
      ``max_bytes``; only public addresses are contacted, on every redirect hop, unless
      ``allow_private_hosts``.
    * Plain paths (relative ones taken against ``base_dir``) and ``file://`` URLs are used
      in place, after resolving links and ``..``, when they lie inside ``dataset_root``
      (``None``: no local file is allowed) or ``allow_files_outside`` is set.

    Failure reasons: ``refused_private_host``, ``refused_outside_dataset``,
    ``refused_scheme``, ``bad_url``, ``too_large``, ``timeout``, ``http_error``,
    ``incomplete``, ``too_many_redirects``, ``unreachable``, ``missing_file``. Failures
    are summed up in one warning, never raised; ``None``/empty entries are not failures.
    """
    from tqdm.auto import tqdm

    root = Path(dataset_root).resolve() if dataset_root is not None else None
    result: list[Path | None] = [None] * len(urls)
    remote: dict[str, list[int]] = {}  # http(s) URL -> positions that want it
    failures: Counter[str] = Counter()
    first: dict[str, str] = {}

    def fail(e: FetchError, n: int = 1) -> None:
        failures[e.reason] += n
        first.setdefault(e.reason, str(e))

    for i, url in enumerate(urls):
        if not url:
            continue
        try:
            full = resolve_url(url, base_dir)
            if full.startswith(("http://", "https://")):
                remote.setdefault(full, []).append(i)
            else:
                result[i] = _local_image(full, root, allow_files_outside, max_bytes)
        except FetchError as e:
            fail(e)
        except (OSError, ValueError) as e:  # e.g. a path too long to resolve
            fail(FetchError(f"{url!r}: {e}", reason="bad_url"))

    if remote:
        cache = ImageCache(cache_dir)

        def obtain(url: str) -> Path:
            return cache.get(url, max_bytes) or cache.download(
                url, timeout=timeout, max_bytes=max_bytes, allow_private=allow_private_hosts)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(obtain, u): u for u in remote}
            for future in tqdm(as_completed(futures), total=len(futures), desc="fetch images", unit="img"):
                url = futures[future]
                try:
                    path = future.result()
                except FetchError as e:
                    fail(e, len(remote[url]))
                    continue
                except OSError as e:  # writing the cache
                    fail(FetchError(f"{url}: {e}", reason="unreachable"), len(remote[url]))
                    continue
                except ValueError as e:  # a URL or answer the HTTP client cannot even parse
                    fail(FetchError(f"{url}: {e}", reason="bad_url"), len(remote[url]))
                    continue
                for i in remote[url]:
                    result[i] = path

    counts = dict(sorted(failures.items()))
    if counts:
        n = sum(counts.values())
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        msg = (f"{n} of {len(urls)} images could not be fetched (they get the mean image feature): "
               f"{summary}; e.g. {first[next(iter(counts))]}")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return result, counts


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


def image_batches(paths: Sequence[Path | None], batch_size: int) -> list[list[int]]:
    """The items with an image file, in order, cut into batches of ``batch_size``: the unit
    of work in one process and in the ranks of a sharded run alike (undecodable images drop
    out of their batch either way, so each batch reaches the model with the same contents)."""
    wanted = [i for i, p in enumerate(paths) if p is not None]
    return [wanted[s:s + batch_size] for s in range(0, len(wanted), batch_size)]


def _encode_batches(paths: Sequence[Path | None], batches: Sequence[Sequence[int]], model, preprocess: Callable,
                    device: str, *, workers: int, max_pixels: int, max_aspect: float,
                    desc: str = "encode images") -> tuple[list[int], list[np.ndarray], Counter]:
    """Decode and embed the images of ``batches``: the decoded items, their feature rows
    (one array per batch), and the refusal reasons counted.

    Images are decoded and preprocessed by ``workers`` threads (PIL releases the GIL while
    decoding and resizing) with one torch thread for their tiny tensors. On CUDA the next
    batch is decoded while the GPU encodes the current one, under fp16 autocast (the rows
    are float32); on the CPU decoding and encoding take turns and run in float32, so the
    bytes do not depend on the number of workers.
    """
    import torch
    from tqdm.auto import tqdm

    cuda = device.startswith("cuda")

    def load(i: int):
        image = _open_rgb(Path(paths[i]), max_pixels, max_aspect)
        return image if isinstance(image, str) else preprocess(image)

    decoded: list[int] = []
    refused: Counter[str] = Counter()
    chunks: list[np.ndarray] = []
    total = sum(len(b) for b in batches)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, torch.inference_mode(), \
            tqdm(total=total, desc=desc, unit="img") as bar, \
            (_torch_threads(1) if cuda else contextlib.nullcontext()):
        pending = [pool.submit(load, i) for i in batches[0]] if cuda and batches else None
        for b, batch in enumerate(batches):
            if cuda:
                results = [f.result() for f in pending]
                if b + 1 < len(batches):  # decode the next batch while this one is encoded
                    pending = [pool.submit(load, i) for i in batches[b + 1]]
            else:
                with _torch_threads(1):
                    results = list(pool.map(load, batch))
            tensors, batch_idx = [], []
            for i, result in zip(batch, results):
                if isinstance(result, str):
                    refused[result] += 1
                else:
                    tensors.append(result)
                    batch_idx.append(i)
            if tensors:
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    out = model.encode_image(torch.stack(tensors).to(device, non_blocking=True))
                chunks.append(out.float().cpu().numpy())
                decoded.extend(batch_idx)
            bar.update(len(batch))
    return decoded, chunks, refused


def _assemble(paths: Sequence[Path | None], decoded: list[int], chunks: list[np.ndarray], refused: Counter,
              dim: Callable[[], int]) -> tuple[np.ndarray, dict]:
    """The feature matrix (missing and undecodable items get the mean) and its info."""
    n_wanted = sum(p is not None for p in paths)
    if decoded:
        features = fill_missing_with_mean(np.concatenate(chunks), decoded, len(paths))
    else:  # e.g. offline: no image host reachable. Zeros, flagged in info; training refuses them.
        msg = (f"none of the {len(paths)} images could be fetched and decoded ({n_wanted} had a file): "
               "the image features are all zero and carry no information")
        warnings.warn(msg, stacklevel=3)
        features = np.zeros((len(paths), dim()), dtype=np.float32)
    info = {
        "dim": int(features.shape[1]),
        "n_items": len(paths),
        "n_decoded": len(decoded),
        "n_missing": len(paths) - n_wanted,
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
    """Embed image files with ``model.encode_image`` (batched, under inference mode).

    Returns a float32 array ``[len(paths), d]`` (``d`` from the model; features are not
    normalised) and an info dict (``dim``, ``n_items``, ``n_decoded``, ``n_missing`` for
    ``None`` paths, ``n_undecodable`` for files that are not decoded, and
    ``undecodable_reasons``: how many were not images PIL reads (``undecodable``), had more
    than ``max_pixels`` pixels (``too_many_pixels``) or a side ratio over ``max_aspect``
    (``extreme_aspect_ratio``); the last two are refused from the header, undecoded).
    Missing and undecodable items get the mean feature of the decoded ones. When no image
    decodes, every row is zero (with a warning; ``n_decoded`` is 0 and the train stage
    refuses such features). The model is moved to ``device``; ``workers`` threads decode
    the images (see :func:`_encode_batches`: CUDA runs in fp16 autocast, the CPU in float32).
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    decoded, chunks, refused = _encode_batches(paths, image_batches(paths, batch_size), model, preprocess, dev,
                                               workers=workers, max_pixels=max_pixels, max_aspect=max_aspect)
    return _assemble(paths, decoded, chunks, refused, lambda: _clip_dim(model, preprocess, dev))


def _image_rank(ctx, paths: list[str | None], batches: list[list[int]], model_name: str, pretrained: str | None,
                seed: int, workers: int, max_pixels: int, max_aspect: float) -> None:
    """One rank of :func:`encode_images_sharded`: its contiguous share of the batches."""
    from sea.distributed import shard_bounds

    lo, hi = shard_bounds(len(batches), ctx.world_size, ctx.rank)
    model, preprocess, info = load_clip(model_name, pretrained, device=ctx.device, seed=seed)
    decoded, chunks, refused = _encode_batches(
        [Path(p) if p is not None else None for p in paths], batches[lo:hi], model, preprocess, ctx.device,
        workers=workers, max_pixels=max_pixels, max_aspect=max_aspect, desc=f"encode images (rank {ctx.rank})")
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
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 8,
    threads: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> tuple[np.ndarray, dict]:
    """:func:`encode_images` with the model of :func:`load_clip`, sharded over ``processes``
    ranks (:mod:`sea.distributed`: rank r takes a contiguous share of the batches, on
    ``cuda:r`` on CUDA, with ``threads`` torch threads). Same result as one process with
    as many threads; returns the features and ``load_clip``'s info merged with
    ``encode_images``'s, plus ``processes`` and ``threads_per_process``."""
    from sea.distributed import launch, load_shard_json, load_shards, shard_dir

    dev = resolve_device(device)
    batches = image_batches(paths, batch_size)
    with shard_dir() as workdir:
        launch(processes, _image_rank, ([str(p) if p is not None else None for p in paths], batches, model_name,
                                        pretrained, seed, workers, max_pixels, max_aspect),
               workdir=workdir, device=dev, threads=threads)
        decoded = np.concatenate(load_shards(workdir, "decoded", processes)).tolist()
        chunks = [r for r in load_shards(workdir, "rows", processes) if r.size]
        infos = load_shard_json(workdir, "info", processes)
    refused: Counter[str] = Counter()
    for i in infos:
        refused.update(i["refused"])
    features, info = _assemble(paths, decoded, chunks, refused, lambda: infos[0]["dim"])
    return features, infos[0]["clip"] | info | {"processes": processes, "threads_per_process": threads}
