"""Image features: embed item images with an open_clip image tower.

The image files come from :mod:`sea.net.images` (:func:`fetch_images`, or an
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
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sea.config import Section, check_device, require, require_choice
from sea.distributed import launch, load_shard_json, load_shards, shard_bounds, shard_dir
from sea.errors import ConfigError, DataError, shorten, shown
from sea.features import (
    check_precision,
    check_processes,
    fill_missing_with_mean,
    resolve_device,
    resolve_precision,
    torch_dtype,
)
from sea.files import MB, sha256_file
from sea.net.urls import check_url
from sea.runtime import rebalance, set_threads

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
#: A local checkpoint may be at most this many times the float32 bytes of the architecture's
#: parameters (a training checkpoint with Adam's two moments is about 3 times) ...
CHECKPOINT_SIZE_FACTOR = 4
#: ... plus this much (the archive's own records, a few small extra entries); a larger file
#: is refused before any of it is read.
CHECKPOINT_SLACK_BYTES = 64 << 20
#: The first bytes of a zip archive: what torch.save writes (since torch 1.6).
ZIP_MAGIC = b"PK\x03\x04"
#: What torch.load may raise on a corrupt or hostile archive (weights_only: no code runs).
TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


# --------------------------------------------------------------------------- model


#: Where ``features.image`` comes from: open_clip on the item images, or the precomputed
#: CNN vectors distributed with the Amazon 2014 dumps.
IMAGE_SOURCES = ("clip", "amazon_cnn")


@dataclass
class ImageFeatureConfig(Section):
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    timeout: float = 10.0  # seconds per image attempt in total: connect, redirects and body
    workers: int = 8
    max_image_mb: float = 20.0  # size cap per image file, downloaded or local (MB = 10^6 bytes)
    allow_private_hosts: bool = False  # true: image URLs may lead to loopback/private addresses
    allow_files_outside: bool = False  # true: local image paths may lie outside the dataset folder
    processes: int = 1  # ranks encoding contiguous shards of the items (sea.distributed)
    precision: str = "float32"  # the dtype CLIP computes in (sea.features.resolve_precision)
    # source: clip encodes the item images; amazon_cnn reads the 4096-d CNN vectors of the
    # Amazon 2014 dumps (image_features_<Category>.b) from cnn_url (see sea.features.cnn)
    source: str = "clip"
    cnn_url: str | None = None  # null: the catalog's file of dataset.name; else http(s)://, file:// or a path
    cnn_sha256: str | None = None
    cnn_max_mb: float = 50000.0  # size cap of the download (MB = 10^6 bytes)
    cnn_timeout: float = 7200.0  # seconds for the whole download, all attempts together
    # fetching at scale (sea/net/images.py)
    per_host: int = 4  # concurrent downloads per host (of `workers` in all)
    retries: int = 3  # further attempts after a 408/429/5xx answer or a broken-off body
    backoff: float = 1.0  # first retry wait (s), doubled each retry, unless Retry-After says otherwise
    max_wait: float = 60.0  # seconds of retry waiting per image at most (backoff and Retry-After)
    offline_after: int = 3  # connection failures (DNS, refused, no route) before a host/the network is given up
    min_coverage: float = 0.0  # share of the items with an image URL that must get a file, else the stage fails

    def validate(self, section: str) -> None:
        require(self.batch_size >= 1, section, "batch_size must be >= 1")
        require(self.seed >= 0, section, "seed must be >= 0")
        require(self.timeout > 0, section, "timeout must be > 0 seconds")
        require(self.max_image_mb > 0, section, "max_image_mb must be > 0")
        require(1 <= self.workers <= 64, section, "workers must be in [1, 64]")
        check_processes(self.processes, self.device, section)
        require(1 <= self.per_host <= 64, section, "per_host must be in [1, 64]")
        require(0 <= self.retries <= 20, section, "retries must be in [0, 20]")
        require(
            0 <= self.backoff <= 3600 and 0 <= self.max_wait <= 86400,
            section,
            "backoff must be in [0, 3600] and max_wait in [0, 86400] seconds",
        )
        require(self.offline_after >= 1, section, "offline_after must be >= 1")
        require(0 <= self.min_coverage <= 1, section, "min_coverage must be in [0, 1]")
        check_device(self.device, section)
        check_precision(self.precision, section)
        require_choice(self.source, IMAGE_SOURCES, section, "source")
        require(self.cnn_max_mb > 0 and self.cnn_timeout > 0, section, "cnn_max_mb and cnn_timeout must be > 0")
        require(
            self.cnn_sha256 is None or re.fullmatch(r"[0-9a-fA-F]{64}", self.cnn_sha256) is not None,
            section,
            f"cnn_sha256 must be 64 hex digits or null, got {shown(self.cnn_sha256)}",
        )
        require(
            self.cnn_url is None or bool(self.cnn_url.strip()),
            section,
            "cnn_url must be null (the catalog's file of dataset.name) or a URL/path",
        )
        check_url(self.cnn_url, section, "cnn_url")
        if self.source != "amazon_cnn":
            self.check_clip()

    def check_clip(self) -> None:
        """The open_clip architecture exists, and ``pretrained`` is none, a tag open_clip knows
        for it, or a local checkpoint that fits it (:func:`sea.features.image.check_checkpoint`:
        readable without running code, the architecture's keys and shapes) — before any image
        is fetched."""
        import open_clip

        section = "features.image"
        models = open_clip.list_models()
        require(
            self.model in models,
            section,
            f"model {shown(self.model)} is not an open_clip architecture (e.g. {', '.join(models[:6])}, ...)",
        )
        tag = (self.pretrained or "").strip()
        if tag.lower() in ("", "none"):
            return
        if "/" in tag or "\\" in tag or Path(tag).suffix:
            require(Path(tag).is_file(), section, f"pretrained: checkpoint file {shown(tag)} does not exist")
            try:
                check_checkpoint(self.model, tag)
            except DataError as e:
                raise ConfigError(f"params.yaml [{section}]: pretrained: {e}") from None
            return
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        require(
            tag in tags,
            section,
            f"pretrained {shown(tag)} is not an open_clip tag for {self.model} "
            f"(known: {tags or 'none'}); use none, a tag, or a local checkpoint path",
        )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _load_tensors(path: Path, name: str):
    """What the file holds, loaded without running any code: ``.safetensors`` with
    safetensors, anything else only as a torch.save zip archive, with ``weights_only=True``
    and memory-mapped (a plain pickle or a legacy torch.save file is refused unread)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as e:
            raise DataError(f"{name}: not a readable safetensors file ({shorten(str(e))})") from None
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise DataError(
                f"{name}: not a checkpoint: neither a torch.save archive (zip) nor .safetensors (plain "
                f"pickles and legacy torch.save files are not read; save it again with torch.save)"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except TORCH_LOAD_ERRORS as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if refused:
            raise DataError(
                f"{name}: holds Python objects, not only tensors: weights_only loading refuses it "
                f"(it names {shorten(refused[1])}); nothing in it was run"
            ) from None
        first = str(e).strip().split("\n", 1)[0] or type(e).__name__
        raise DataError(f"{name}: not a loadable torch.save archive (truncated or corrupt: {shorten(first)})") from None


def read_checkpoint(path: str | Path, expected: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The state dict in the local checkpoint ``path`` for a model whose own state dict is
    ``expected`` (architecture ``arch``, named in messages), checked to fit it.

    A file over :data:`CHECKPOINT_SIZE_FACTOR` times the model's float32 parameter bytes
    plus :data:`CHECKPOINT_SLACK_BYTES` is refused unread; it is then read without running
    code (:func:`_load_tensors`). A ``"state_dict"`` entry is taken when there is one, and a
    ``module.`` prefix on every key (DataParallel) dropped. The keys must be the model's,
    each a dense CPU tensor of the model's shape, floating where the model's is, and finite.
    Everything else is a one-line :class:`~sea.errors.DataError` naming the file.
    """
    import torch

    path = Path(path)
    name = f"checkpoint {shorten(str(path))}"
    limit = CHECKPOINT_SIZE_FACTOR * 4 * sum(t.numel() for t in expected.values()) + CHECKPOINT_SLACK_BYTES
    size = path.stat().st_size
    if size > limit:
        raise DataError(
            f"{name}: {size / MB:,.0f} MB is more than a {arch} checkpoint can need ({limit / MB:,.0f} MB: "
            f"{CHECKPOINT_SIZE_FACTOR}x its float32 parameters + {CHECKPOINT_SLACK_BYTES >> 20} MiB); "
            f"refused unread"
        )
    state = _load_tensors(path, name)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (
        isinstance(state, dict)
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided and v.device.type == "cpu"
            for k, v in state.items()
        )
    ):
        raise DataError(f"{name}: not a state dict (parameter names mapped to dense tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        raise DataError(
            f"{name}: its keys are not those of {arch}: {len(missing)} missing (e.g. {shown(missing[:2])}), "
            f"{len(unexpected)} unexpected (e.g. {shown(unexpected[:2])})"
        )
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise DataError(f"{name}: {key} has shape {shown(list(got.shape))}, {arch} needs {list(want.shape)}")
        if got.is_floating_point() != want.is_floating_point() or got.is_complex():
            raise DataError(f"{name}: {key} is {got.dtype}, {arch} needs {want.dtype}")
    # a sum is NaN or infinite exactly when a term is (or when it overflows float32: absurd
    # weights); one pass without temporaries, 15 times faster than isfinite().all(), on one
    # thread (threads only contend on these tensors)
    with _torch_threads(1):
        for key, got in state.items():
            if got.is_floating_point() and not torch.isfinite(
                got.sum(dtype=torch.promote_types(got.dtype, torch.float32))
            ):
                raise DataError(f"{name}: {key} holds NaN or infinite values")
    return state


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning (root logger) while a model is built
    whose weights come from a checkpoint right after."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            """Keep every record but that warning."""
            return "initialized randomly" not in record.getMessage()

    drop = Drop()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def check_checkpoint(model_name: str, path: str | Path) -> None:
    """Refuse, before any image is fetched, a local checkpoint :func:`load_clip` would
    refuse: :func:`read_checkpoint` against ``model_name`` built on the meta device (shapes
    only: no memory, no initialisation)."""
    import open_clip
    import torch

    with _no_random_init_warning(), torch.device("meta"):
        model = open_clip.create_model(
            model_name, pretrained=None, pretrained_image=False, pretrained_text=False, device="meta"
        )
    read_checkpoint(path, model.state_dict(), model_name)


def load_clip(
    model_name: str,
    pretrained: str | None,
    *,
    device: str = "auto",
    seed: int = 0,
    precision: str = "float32",
) -> tuple[torch.nn.Module, Callable, dict]:
    """Build an open_clip model in eval mode and its (inference) image transform, which
    yields tensors of the model's input dtype.

    ``pretrained`` selects the weights:

    * ``None``, ``""`` or ``"none"``: random initialisation after ``torch.manual_seed(seed)``
      (deterministic for a given seed; the features carry no visual meaning);
    * a path to an existing file: a local checkpoint (a ``state_dict`` saved with
      ``torch.save``, optionally under a ``"state_dict"`` key, or ``.safetensors``), read
      and checked by :func:`read_checkpoint` (a bad one is a :class:`~sea.errors.DataError`)
      and loaded with ``load_state_dict(strict=True)``;
    * anything else: an open_clip pretrained tag such as ``"openai"`` (downloads weights).

    ``precision`` (float32, bfloat16, float16, or ``auto``: see
    :func:`sea.features.resolve_precision`) is the dtype the model
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
        # loaded here, not by open_clip (which would also take a file called e.g. "openai"
        # for a tag); the info records the path as given, and the file's sha256
        source, kind = None, "checkpoint"
    elif _looks_like_path(pretrained):
        raise FileNotFoundError(f"CLIP checkpoint {shown(pretrained)} does not exist")
    else:
        source, kind = pretrained, "tag"

    torch.manual_seed(seed)  # weights are initialised on the CPU, then moved to `dev`
    with _no_random_init_warning() if kind == "checkpoint" else contextlib.nullcontext():
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=source,
            device=dev,
            pretrained_image=False,
            pretrained_text=kind == "tag",  # random init or a checkpoint must not fetch hub text towers
            precision=open_clip_precision,
        )
    if kind == "checkpoint":  # as open_clip does: after the cast to `precision`, strictly
        model.load_state_dict(read_checkpoint(pretrained, model.state_dict(), model_name), strict=True)
    model.eval()
    if precision != "float32":
        preprocess = _to_dtype(preprocess, torch_dtype(precision))

    if kind == "random":
        note = (
            f"image features come from a randomly initialised {model_name} (pretrained: none, "
            f"seed {seed}): they carry no pretrained visual meaning"
        )
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


def _to_dtype(preprocess: Callable, dtype: torch.dtype) -> Callable:
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
    set_threads(n)
    try:
        yield
    finally:
        set_threads(old)


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


def _encode_batches(
    batches: Iterable[list[tuple[int, Path]]],
    total: int,
    model,
    preprocess: Callable,
    device: str,
    *,
    workers: int,
    max_pixels: int,
    max_aspect: float,
    desc: str = "encode images",
) -> tuple[list[int], int, list[np.ndarray], Counter]:
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
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        torch.inference_mode(),
        tqdm(total=total, desc=desc, unit="img") as bar,
        _torch_threads(1) if cuda else contextlib.nullcontext(),
    ):
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


def _assemble(
    n_items: int, n_wanted: int, decoded: list[int], chunks: list[np.ndarray], refused: Counter, dim: Callable[[], int]
) -> tuple[np.ndarray, dict]:
    """The feature matrix (missing and undecodable items get the mean) and its info."""
    if decoded:
        features = fill_missing_with_mean(np.concatenate(chunks), decoded, n_items)
    else:  # e.g. offline: no image host reachable. Zeros, flagged in info; training refuses them.
        msg = (
            f"none of the {n_items} images could be fetched and decoded ({n_wanted} had a file): "
            "the image features are all zero and carry no information"
        )
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
        image_batches(paths, batch_size),
        len(paths),
        model,
        preprocess,
        dev,
        workers=workers,
        max_pixels=max_pixels,
        max_aspect=max_aspect,
    )
    return _assemble(len(paths), n_wanted, decoded, chunks, refused, lambda: _clip_dim(model, preprocess, dev))


def _image_rank(
    ctx,
    batches: list[list[tuple[int, str]]],
    model_name: str,
    pretrained: str | None,
    seed: int,
    precision: str,
    workers: int,
    max_pixels: int,
    max_aspect: float,
) -> None:
    """One rank of :func:`encode_images_sharded`: its contiguous share of the batches."""
    lo, hi = shard_bounds(len(batches), ctx.world_size, ctx.rank)
    mine = [[(i, Path(p)) for i, p in batch] for batch in batches[lo:hi]]
    model, preprocess, info = load_clip(model_name, pretrained, device=ctx.device, seed=seed, precision=precision)
    decoded, _, chunks, refused = _encode_batches(
        mine,
        sum(len(b) for b in mine),
        model,
        preprocess,
        ctx.device,
        workers=workers,
        max_pixels=max_pixels,
        max_aspect=max_aspect,
        desc=f"encode images (rank {ctx.rank})",
    )
    ctx.save("decoded", np.array(decoded, dtype=np.int64))
    ctx.save("rows", np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32))
    ctx.save_json(
        "info",
        {
            "refused": dict(refused),
            "clip": info,
            "dim": _clip_dim(model, preprocess, ctx.device) if ctx.rank == 0 and not decoded else None,
        },
    )


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
    dev = resolve_device(device)
    batches = [[(i, str(p)) for i, p in batch] for batch in image_batches(paths, batch_size)]
    n_wanted = sum(len(b) for b in batches)
    with shard_dir() as workdir:
        launch(
            processes,
            _image_rank,
            (batches, model_name, pretrained, seed, resolve_precision(precision, dev), workers, max_pixels, max_aspect),
            workdir=workdir,
            device=dev,
        )
        decoded = np.concatenate(load_shards(workdir, "decoded", processes)).tolist()
        chunks = [r for r in load_shards(workdir, "rows", processes) if r.size]
        infos = load_shard_json(workdir, "info", processes)
    refused: Counter[str] = Counter()
    for i in infos:
        refused.update(i["refused"])
    features, info = _assemble(len(paths), n_wanted, decoded, chunks, refused, lambda: infos[0]["dim"])
    return features, infos[0]["clip"] | info | {"processes": processes}
