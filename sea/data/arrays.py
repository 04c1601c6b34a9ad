"""Loading feature matrices (``.npy``) from untrusted files.

:func:`load_features` is the one loader for every feature matrix the project reads (the
feature stages' outputs and the ``*_feat.npy`` of an MMRec folder). It reads the ``.npy``
header first and checks it against the file size before any data is loaded, so a small
file that claims a huge shape allocates nothing.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from sea.errors import DataError

__all__ = ["load_features"]

_MAX_HEADER = 10_000  # numpy's own default limit on the header's text
_FLOAT_SIZES = (2, 4, 8)  # float16, float32, float64


def _read_header(path: Path, f, file_size: int) -> tuple[tuple, bool, np.dtype, int]:
    """shape, fortran_order, dtype and data offset from a ``.npy`` header (version 1 or 2)."""
    try:
        version = npy_format.read_magic(f)
    except ValueError as e:
        raise DataError(f"{path}: not a .npy file ({e})") from None
    if version not in ((1, 0), (2, 0)):
        raise DataError(
            f"{path}: unsupported .npy format version {version} (expected 1.0 or 2.0, "
            f"as numpy.save writes for a float matrix)"
        )
    length_format = "<H" if version == (1, 0) else "<I"
    length_bytes = f.read(struct.calcsize(length_format))
    if len(length_bytes) != struct.calcsize(length_format):
        raise DataError(f"{path}: the .npy header is cut off")
    header_length = struct.unpack(length_format, length_bytes)[0]
    if header_length > _MAX_HEADER or f.tell() + header_length > file_size:
        raise DataError(
            f"{path}: the .npy header claims {header_length:,} bytes (the file has "
            f"{file_size:,}; a float matrix needs about 128)"
        )
    f.seek(npy_format.MAGIC_LEN)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read(f, max_header_size=_MAX_HEADER)
    except Exception as e:  # numpy's parser of an untrusted header: ValueError, tokenize.TokenError...
        raise DataError(f"{path}: unreadable .npy header ({type(e).__name__}: {str(e)[:200]})") from None
    return shape, fortran_order, dtype, f.tell()


def load_features(path: Path, n_rows: int, modality: str, *, extra_rows: bool = False) -> np.ndarray:
    """A ``[n_rows, dim]`` feature matrix from ``path``, as float32 in C order.

    Args:
        path: a ``.npy`` file written by ``numpy.save`` (format 1.0 or 2.0, no pickles).
        n_rows: the rows wanted (items); row i is item i.
        modality: named in the messages ("image", "text").
        extra_rows: accept a file with more rows than ``n_rows`` and return the first
            ``n_rows`` (an MMRec folder may hold features of items that have no
            interaction); otherwise the file must have exactly ``n_rows``.

    Raises:
        DataError: the file is missing, not a ``.npy`` file, or its header does not match
            its size; the array is not 2-D, has no columns or the wrong number of rows;
            its dtype is not float16/32/64 (complex, int, bool, strings, objects and
            structured arrays are refused); a value is NaN, inf or beyond float32's range;
            or every row is zero (the features carry nothing: leave the modality out of
            ``model.modalities``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing ({modality} features)")
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        shape, fortran_order, dtype, offset = _read_header(path, f, file_size)
    if dtype.kind != "f" or dtype.itemsize not in _FLOAT_SIZES or dtype.fields is not None:
        raise DataError(f"{path}: {modality} features must be float16, float32 or float64, got dtype {dtype}")
    if len(shape) != 2 or shape[1] < 1 or min(shape) < 0:
        raise DataError(f"{path}: expected a [{n_rows}, dim] matrix of {modality} features, got shape {shape}")
    rows, dim = shape
    if rows < n_rows or (rows > n_rows and not extra_rows):
        at_least = "at least " if extra_rows else ""
        raise DataError(
            f"{path}: expected {at_least}{n_rows:,} rows of {modality} features (one per item), got shape {shape}"
        )
    if n_rows < 1:
        raise DataError(f"{path}: no items to read {modality} features for")
    expected_size = offset + rows * dim * dtype.itemsize
    if expected_size != file_size:
        raise DataError(
            f"{path}: the header says {shape} {dtype} ({expected_size:,} bytes with the header) "
            f"but the file has {file_size:,} bytes: it is cut off or has junk appended"
        )
    stored = np.load(path, mmap_mode="r", allow_pickle=False)
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.array(stored[:n_rows], dtype=np.float32, order="C")
    del stored  # closes the memory map
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: {modality} features hold NaN, inf or a value beyond float32's range "
            f"(first in row {row:,}, of {int(bad.sum()):,} such rows)"
        )
    if not x.any():
        raise DataError(
            f"{path}: every {modality} feature row is zero: the features carry nothing; "
            f"fix the inputs, or leave {modality} out of model.modalities"
        )
    return x
