"""The benchmark's own image features: the CNN vectors distributed with the Amazon 2014 dumps.

McAuley et al. (SIGIR 2015) published one file per category,
``image_features_<Category>.b``, holding a 4096-d vector (a deep CNN's penultimate layer)
for every product of the category that has an image. MMRec, and the numbers SEA's paper
reports, use these vectors as the image feature. The file is a plain sequence of records:

    10 bytes   the asin, ASCII
    16384 B    4096 float32 values, little-endian

:func:`read_cnn_features` streams such a file in chunks of records (never the whole file in
memory; the big categories are tens of GB), keeps only the records of the dataset's items,
and returns them aligned to the item index; items the file lacks get the mean of the others
(:func:`sea.features.fill_missing_with_mean`), as in the protocol. The file's sha256 is
computed in the same pass and checked when one is expected.

What is refused (one :class:`~sea.errors.DataError` naming the file and the 1-based record):

* a file whose size is not a whole number of records (the last record is cut off);
* an asin that is not 10 ASCII letters or digits (a file of another format, a gzip, or
  records out of step): checked on every record;
* NaN or ±inf in the vector of an item of the dataset;
* an item of the dataset listed twice with different vectors (listed twice with the same
  vector is accepted and counted as ``n_duplicate_records``).

Records of products outside the dataset are checked for their length and asin only;
their values are not looked at.

:func:`obtain_cnn_file` turns ``features.image.cnn_url`` into a local file: a path or
``file://`` URL is read in place; an http(s) URL is downloaded once, through
:func:`sea.net.download.fetch` (size and time caps, sha256 check, written atomically), into
``data/cache/amazon_cnn/`` (not a DVC output, so nothing partial is ever cached by DVC).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sea.data.catalog import DatasetConfig
from sea.errors import ChecksumError, DataError
from sea.features import fill_missing_with_mean
from sea.net.download import fetch
from sea.net.urls import cache_key, local_path

log = logging.getLogger(__name__)

#: Width of the vectors in ``image_features_<Category>.b``.
CNN_DIM = 4096
#: Bytes of the asin at the start of each record.
ASIN_BYTES = 10
#: Records read per chunk (about 33 MB at 4096-d).
CHUNK_RECORDS = 2048
#: Where downloaded feature files are kept (git-ignored, not tracked by DVC).
CNN_CACHE = Path("data/cache/amazon_cnn")

_ASIN_OK = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _ASIN_OK[_c] = True


def record_dtype(dim: int = CNN_DIM) -> np.dtype:
    """One record: ``asin`` (10 bytes) then ``x`` (``dim`` little-endian float32), unpadded."""
    return np.dtype([("asin", f"S{ASIN_BYTES}"), ("x", "<f4", (dim,))])


def write_cnn_features(path: str | Path, records: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write ``(asin, vector)`` records in the dumps' format (for tests and examples)."""
    dim = len(records[0][1]) if records else CNN_DIM
    arr = np.zeros(len(records), dtype=record_dtype(dim))
    for i, (asin, vec) in enumerate(records):
        arr[i] = (asin.encode("ascii"), np.asarray(vec, dtype="<f4"))
    Path(path).write_bytes(arr.tobytes())


def _item_keys(asins: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted byte keys of the item asins that can appear in the file, and their items."""
    keys, items = [], []
    for i, asin in enumerate(asins):
        try:
            key = asin.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            continue
        if len(key) == ASIN_BYTES and _ASIN_OK[np.frombuffer(key, np.uint8)].all():
            keys.append(key)
            items.append(i)
    keys_arr = np.array(keys, dtype=f"S{ASIN_BYTES}")
    order = np.argsort(keys_arr, kind="stable")
    return keys_arr[order], np.array(items, dtype=np.int64)[order]


def _read_full(f, view: memoryview) -> int:
    """Fill ``view`` from ``f`` as far as the file goes; the number of bytes read."""
    n = 0
    while n < len(view):
        got = f.readinto(view[n:])
        if not got:
            break
        n += got
    return n


def read_cnn_features(
    path: str | Path,
    asins: Sequence[str],
    *,
    expected_sha256: str | None = None,
    dim: int = CNN_DIM,
    chunk_records: int = CHUNK_RECORDS,
    name: str | None = None,
) -> tuple[np.ndarray, dict]:
    """The ``[len(asins), dim]`` float32 features of the items ``asins`` from a feature file.

    Row ``i`` is the vector of ``asins[i]``; items the file lacks get the mean vector of the
    items it has. ``info`` records ``source`` (``amazon_cnn``), ``file`` (``name``, default
    the file name; never a local path), ``sha256``, ``bytes``, ``n_records``, ``dim``,
    ``n_items``, ``n_present``, ``n_missing`` and ``n_duplicate_records``.

    Raises :class:`DataError` on a malformed file or an item without any record (see the
    module docstring), and :class:`~sea.errors.ChecksumError` when the file's sha256 is not
    ``expected_sha256``; in both cases nothing is returned.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (features.image.cnn_url)")
    rec = record_dtype(dim)
    size = path.stat().st_size
    keys, key_items = _item_keys(asins)
    n = len(asins)
    out = np.zeros((n, dim), dtype=np.float32)
    first = np.zeros(n, dtype=np.int64)  # 1-based record of each item's vector; 0: not seen
    duplicates = 0
    digest = hashlib.sha256()
    buf = bytearray(rec.itemsize * chunk_records)
    view = memoryview(buf)
    done = 0  # records read so far

    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}") as bar:
        while True:
            got = _read_full(f, view)
            digest.update(view[:got])
            bar.update(got)
            k, rest = divmod(got, rec.itemsize)
            if rest and got < len(view):
                raise DataError(
                    f"{path}: record {done + k + 1:,} is cut off ({rest:,} of {rec.itemsize:,} bytes; "
                    f"the file has {size:,} bytes, not a whole number of {ASIN_BYTES}-byte asin + "
                    f"{dim} float32 records): the file is truncated"
                )
            if k == 0:
                break
            raw = np.frombuffer(buf, dtype=np.uint8, count=k * rec.itemsize).reshape(k, rec.itemsize)
            bad = ~_ASIN_OK[raw[:, :ASIN_BYTES]].all(axis=1)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                hint = (
                    " (a gzip file: decompress it first)"
                    if done + j == 0 and raw[0, :2].tobytes() == b"\x1f\x8b"
                    else ""
                )
                raise DataError(
                    f"{path}: record {done + j + 1:,} (byte {(done + j) * rec.itemsize:,}): the asin "
                    f"{raw[j, :ASIN_BYTES].tobytes()!r} is not {ASIN_BYTES} ASCII letters or digits: "
                    f"not an Amazon image-feature file, or its records are out of step{hint}"
                )
            records = np.frombuffer(buf, dtype=rec, count=k)
            if len(keys):
                pos = np.searchsorted(keys, records["asin"]).clip(max=len(keys) - 1)
                for j in np.flatnonzero(keys[pos] == records["asin"]):
                    duplicates += _take(path, out, first, int(key_items[pos[j]]), records["x"][j], done + j + 1)
            done += k
            if got < len(view):
                break

    sha = digest.hexdigest()
    if expected_sha256 and sha != expected_sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected_sha256.lower()}, got {sha} (features.image.cnn_sha256)"
        )
    present = np.flatnonzero(first)
    if len(present) == 0:
        raise DataError(
            f"{path}: none of the {n:,} items is among its {done:,} records (the feature file of another category?)"
        )
    features = fill_missing_with_mean(out[present], present.tolist(), n)
    info = {
        "source": "amazon_cnn",
        "file": name or path.name,
        "sha256": sha,
        "bytes": size,
        "n_records": done,
        "dim": dim,
        "n_items": n,
        "n_present": int(len(present)),
        "n_missing": int(n - len(present)),
        "n_duplicate_records": duplicates,
    }
    return features, info


def _take(path: Path, out: np.ndarray, first: np.ndarray, item: int, vec: np.ndarray, record: int) -> int:
    """Store item ``item``'s vector from 1-based ``record``; 1 for an identical repeat."""
    if not np.isfinite(vec).all():
        col = int(np.flatnonzero(~np.isfinite(vec))[0])
        raise DataError(f"{path}: record {record:,}: value {col} of the vector is {vec[col]} (NaN or inf)")
    if first[item]:
        if np.array_equal(out[item], vec):
            return 1
        raise DataError(
            f"{path}: record {record:,} repeats the asin of record {first[item]:,} with a different "
            "vector: which one is right is unknown"
        )
    out[item] = vec
    first[item] = record
    return 0


def obtain_cnn_file(
    url: str,
    sha256: str | None,
    *,
    max_bytes: int,
    total_timeout: float,
    cache_dir: Path = CNN_CACHE,
    refresh: bool = False,
) -> tuple[Path, bool]:
    """The local feature file for ``url`` and whether it is a download (in ``cache_dir``).

    A path or ``file://`` URL is used in place. An http(s) URL is fetched once into
    ``cache_dir`` under a name made of the URL's sha1 and its file name, through
    :func:`sea.net.download.fetch` (``max_bytes``, ``total_timeout``, ``sha256`` checked;
    atomic); ``refresh`` deletes a cached copy and fetches it again.
    """
    local = local_path(url)
    if local is not None:
        if not local.is_file():
            raise DataError(f"{url}: no such file (features.image.cnn_url)")
        return local, False
    dest = Path(cache_dir) / f"{cache_key(url)[:16]}-{DatasetConfig.local_name(url) or 'features.b'}"
    if refresh:
        dest.unlink(missing_ok=True)
    if not dest.is_file():
        fetch(url, dest, sha256, max_bytes=max_bytes, total_timeout=total_timeout)
    return dest, True
