"""The Amazon 2014 CNN image features (``image_features_<Category>.b``): the streamed reader
on small files written here in that format (10-byte asin + 4096 little-endian float32 per
record), bad files, and the image_features stage reading one from a path and over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sea.errors import ChecksumError, DataError
from sea.features.cnn import CNN_DIM, read_cnn_features, record_dtype, write_cnn_features
from sea.files import sha256_file
from tests.shell import env

ROOT = Path(__file__).resolve().parents[1]
RECORD = 10 + 4 * CNN_DIM


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(CNN_DIM, dtype=np.float32)


#: The items of a toy dataset, in item order; B000000003 is not in the file.
ITEMS = ["B000000001", "B000000002", "B000000003", "0123456789"]


@pytest.fixture
def feature_file(tmp_path: Path) -> Path:
    """Records in another order than the items, with products outside the dataset."""
    path = tmp_path / "image_features_Toy.b"
    write_cnn_features(
        path,
        [
            ("B00000000X", vec(10)),
            ("0123456789", vec(3)),
            ("B000000001", vec(0)),
            ("B0000000ZZ", vec(11)),
            ("B000000002", vec(1)),
        ],
    )
    return path


def test_format_is_asin_then_little_endian_floats(feature_file: Path) -> None:
    data = feature_file.read_bytes()
    assert len(data) == 5 * RECORD
    # the third record, parsed by hand: 10 ASCII bytes, then 4096 '<f4'
    third = data[2 * RECORD : 3 * RECORD]
    assert third[:10] == b"B000000001"
    np.testing.assert_array_equal(np.frombuffer(third[10:], dtype="<f4"), vec(0))


@pytest.mark.parametrize("chunk", [1, 2, 3, 4096])
def test_rows_follow_the_items_and_missing_get_the_mean(feature_file: Path, chunk: int) -> None:
    x, info = read_cnn_features(feature_file, ITEMS, chunk_records=chunk)
    assert x.shape == (4, CNN_DIM) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], vec(0))
    np.testing.assert_array_equal(x[1], vec(1))
    np.testing.assert_array_equal(x[3], vec(3))
    mean = np.stack([vec(0), vec(1), vec(3)]).mean(axis=0, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(x[2], mean)
    assert info == {
        "source": "amazon_cnn",
        "file": "image_features_Toy.b",
        "sha256": sha256_file(feature_file),
        "bytes": 5 * RECORD,
        "n_records": 5,
        "dim": CNN_DIM,
        "n_items": 4,
        "n_present": 3,
        "n_missing": 1,
        "n_duplicate_records": 0,
    }


def test_item_asins_that_cannot_be_in_the_file_are_missing(feature_file: Path) -> None:
    x, info = read_cnn_features(feature_file, ["B000000001", "ünïcödé!!!", "short", "B000000001X"])
    assert info["n_present"] == 1
    np.testing.assert_array_equal(x[1], vec(0))  # the mean of the one present item


def test_expected_sha256(feature_file: Path) -> None:
    read_cnn_features(feature_file, ITEMS, expected_sha256=sha256_file(feature_file).upper())
    with pytest.raises(ChecksumError, match="sha256 mismatch .*image_features_Toy.b"):
        read_cnn_features(feature_file, ITEMS, expected_sha256="0" * 64)


def test_truncated_last_record(feature_file: Path) -> None:
    data = feature_file.read_bytes()
    feature_file.write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"image_features_Toy.b: record 5 is cut off \(16,389 of 16,394 bytes"):
        read_cnn_features(feature_file, ITEMS, chunk_records=2)
    feature_file.write_bytes(data + b"B00000")  # junk after the last record
    with pytest.raises(DataError, match="record 6 is cut off"):
        read_cnn_features(feature_file, ITEMS)


@pytest.mark.parametrize("asin", [b"B00000\xff001", b"B0000 0001", b"B00000\x000\x001", b"B000-00001"])
def test_garbage_asin_names_its_record(feature_file: Path, asin: bytes) -> None:
    data = bytearray(feature_file.read_bytes())
    data[3 * RECORD : 3 * RECORD + 10] = asin  # record 4: a product outside the dataset
    feature_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"image_features_Toy.b: record 4 \(byte 49,182\): the asin .* is not 10 ASCII"):
        read_cnn_features(feature_file, ITEMS, chunk_records=3)


def test_misaligned_records_are_refused(feature_file: Path) -> None:
    data = feature_file.read_bytes()
    feature_file.write_bytes(data[:RECORD] + b"\0\0" + data[RECORD:-2])  # same size, out of step
    with pytest.raises(DataError, match="record 2 .* out of step"):
        read_cnn_features(feature_file, ITEMS)


def test_gzip_gets_a_hint(feature_file: Path) -> None:
    import gzip

    feature_file.write_bytes(gzip.compress(feature_file.read_bytes())[:RECORD])
    with pytest.raises(DataError, match="record 1 .*a gzip file: decompress it first"):
        read_cnn_features(feature_file, ITEMS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_of_a_dataset_item(tmp_path: Path, bad: float) -> None:
    v = vec(1)
    v[7] = bad
    path = tmp_path / "f.b"
    write_cnn_features(path, [("B000000001", vec(0)), ("B000000002", v)])
    with pytest.raises(DataError, match=r"f.b: record 2: value 7 of the vector is (nan|inf|-inf)"):
        read_cnn_features(path, ITEMS)
    # a product outside the dataset is only checked for its structure
    x, info = read_cnn_features(path, ["B000000001"])
    assert info["n_present"] == 1 and np.isfinite(x).all()


def test_duplicate_asins(tmp_path: Path) -> None:
    path = tmp_path / "f.b"
    write_cnn_features(path, [("B000000001", vec(0)), ("B000000002", vec(1)), ("B000000001", vec(0))])
    x, info = read_cnn_features(path, ITEMS)
    assert info["n_duplicate_records"] == 1 and info["n_present"] == 2
    np.testing.assert_array_equal(x[0], vec(0))
    write_cnn_features(path, [("B000000001", vec(0)), ("B000000002", vec(1)), ("B000000001", vec(5))])
    with pytest.raises(DataError, match="f.b: record 3 repeats the asin of record 1 with a different vector"):
        read_cnn_features(path, ITEMS)


def test_no_item_in_the_file(feature_file: Path) -> None:
    with pytest.raises(DataError, match="none of the 2 items is among its 5 records"):
        read_cnn_features(feature_file, ["B000000009", "B000000008"])
    empty = feature_file.with_name("empty.b")
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="none of the 4 items is among its 0 records"):
        read_cnn_features(empty, ITEMS)


def test_record_dtype_has_no_padding() -> None:
    assert record_dtype().itemsize == RECORD


# --------------------------------------------------------------------------- the stage


def stage_dir(tmp: Path, image: dict, dataset: dict | None = None) -> Path:
    """A minimal project folder for pipeline/image_features.py: params and items.parquet."""
    tmp.mkdir(parents=True)
    params = {
        "dataset": dataset or {"name": "toy", "reviews_url": "data/reviews_Toy_5.json.gz"},
        "features": {"image": {"model": "ViT-B-32", "pretrained": "none", "device": "cpu"} | image},
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp / "data/processed").mkdir(parents=True)
    pd.DataFrame(
        {"item": np.arange(4, dtype=np.int32), "asin": ITEMS, "text": ["t"] * 4, "image_url": [None] * 4}
    ).to_parquet(tmp / "data/processed/items.parquet", index=False)
    return tmp


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeline/image_features.py")],
        cwd=cwd,
        env=env() | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def failure_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_stage_reads_a_local_file(tmp_path: Path, feature_file: Path) -> None:
    sha = sha256_file(feature_file)
    cwd = stage_dir(tmp_path / "proj", {"source": "amazon_cnn", "cnn_url": str(feature_file), "cnn_sha256": sha})
    proc = run_stage(cwd)
    assert proc.returncode == 0, proc.stderr
    x = np.load(cwd / "data/features/image.npy", allow_pickle=False)
    np.testing.assert_array_equal(x, read_cnn_features(feature_file, ITEMS)[0])
    info = json.loads((cwd / "data/features/image.json").read_text())
    assert info["source"] == "amazon_cnn" and info["sha256"] == sha and info["n_present"] == 3
    assert info["file"] == "image_features_Toy.b"  # no local path in a DVC output
    assert str(tmp_path) not in (cwd / "data/features/image.json").read_text()
    assert not (cwd / "data/cache").exists()  # a local file is read in place


def test_stage_downloads_over_http_once(tmp_path: Path, feature_file: Path, serve_dir) -> None:
    url = f"{serve_dir(feature_file.parent)}/{feature_file.name}"
    sha = sha256_file(feature_file)
    cwd = stage_dir(tmp_path / "proj", {"source": "amazon_cnn", "cnn_url": url, "cnn_sha256": sha})
    assert run_stage(cwd).returncode == 0
    x = np.load(cwd / "data/features/image.npy", allow_pickle=False)
    np.testing.assert_array_equal(x, read_cnn_features(feature_file, ITEMS)[0])
    info = json.loads((cwd / "data/features/image.json").read_text())
    assert info["file"] == url and info["sha256"] == sha
    cached = list((cwd / "data/cache/amazon_cnn").iterdir())
    assert [p.name for p in cached] == [f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-image_features_Toy.b"]
    assert run_stage(cwd).returncode == 0
    assert serve_dir.hits.count(f"/{feature_file.name}") == 1  # the second run used the cache
    # a cached copy that no longer has the promised sha256 is fetched again
    cached[0].write_bytes(cached[0].read_bytes()[:-RECORD])
    assert run_stage(cwd).returncode == 0
    assert serve_dir.hits.count(f"/{feature_file.name}") == 2 and sha256_file(cached[0]) == sha


def test_stage_download_is_capped_and_verified(tmp_path: Path, feature_file: Path, serve_dir) -> None:
    url = f"{serve_dir(feature_file.parent)}/{feature_file.name}"
    cwd = stage_dir(tmp_path / "a", {"source": "amazon_cnn", "cnn_url": url, "cnn_max_mb": 0.05})
    line = failure_line(run_stage(cwd))
    assert line.startswith("image_features stage failed:") and "over the cap" in line and "cnn_max_mb: 0.05" in line
    cwd = stage_dir(tmp_path / "b", {"source": "amazon_cnn", "cnn_url": url, "cnn_sha256": "a" * 64})
    assert "sha256 mismatch" in failure_line(run_stage(cwd))
    for d in (tmp_path / "a", tmp_path / "b"):  # nothing partial kept: only the inputs remain
        assert [p.name for p in (d / "data").rglob("*") if p.is_file()] == ["items.parquet"]


def test_stage_bad_file_is_one_line(tmp_path: Path, feature_file: Path) -> None:
    feature_file.write_bytes(feature_file.read_bytes()[:-1])
    cwd = stage_dir(tmp_path / "proj", {"source": "amazon_cnn", "cnn_url": str(feature_file)})
    line = failure_line(run_stage(cwd))
    assert "image_features_Toy.b: record 5 is cut off" in line
    assert not (cwd / "data/features/image.npy").exists()


def test_stage_takes_the_catalog_file_of_the_dataset(tmp_path: Path, feature_file: Path, serve_dir) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "image_features/categoryFiles").mkdir(parents=True)
    shutil.copy(feature_file, mirror / "image_features/categoryFiles/image_features_Baby.b")
    base = serve_dir(mirror)
    cwd = stage_dir(tmp_path / "baby", {"source": "amazon_cnn"}, {"name": "baby", "mirror": base})
    proc = run_stage(cwd)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((cwd / "data/features/image.json").read_text())
    assert info["file"] == f"{base}/image_features/categoryFiles/image_features_Baby.b"
    assert "cnn_sha256" in proc.stderr  # unpinned: the stage says how to pin it
    # a dataset whose release has no CNN file: one line naming the param
    cwd = stage_dir(tmp_path / "beauty", {"source": "amazon_cnn"}, {"name": "all_beauty-2023"})
    assert "source: amazon_cnn needs cnn_url: dataset 'all_beauty-2023' has no CNN" in failure_line(run_stage(cwd))


@pytest.mark.parametrize(
    "image, message",
    [
        ({"source": "amazon_cnn", "cnn_url": " "}, "cnn_url must be null"),
        ({"source": "cnn"}, "source must be one of ['clip', 'amazon_cnn']"),
        ({"source": "amazon_cnn", "cnn_url": "x.b", "cnn_sha256": "abc"}, "cnn_sha256 must be 64 hex digits"),
        ({"source": "amazon_cnn", "cnn_url": "x.b", "cnn_max_mb": 0}, "cnn_max_mb and cnn_timeout must be > 0"),
        ({"processes": 0}, "processes must be in [1, 64]"),
        ({"processes": 2, "device": "cuda:0"}, "device must then be auto, cuda or cpu"),
    ],
)
def test_params_are_checked(image: dict, message: str) -> None:
    from sea.errors import ConfigError
    from sea.features.image import ImageFeatureConfig

    with pytest.raises(ConfigError, match=r"^params.yaml \[features.image\]: .*" + re.escape(message)):
        ImageFeatureConfig.from_dict({"pretrained": "none"} | image, "features.image")


def test_text_processes_are_checked() -> None:
    from sea.errors import ConfigError
    from sea.features.text import TextFeatureConfig

    with pytest.raises(ConfigError, match=r"params.yaml \[features.text\]: processes must be in \[1, 64\]"):
        TextFeatureConfig.from_dict({"processes": 65}, "features.text")
    assert TextFeatureConfig.from_dict({"processes": 2, "device": "cpu"}, "features.text").processes == 2


# --------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SMALL_DIM = 8  # the reader takes any width; small records make many cuts and flips cheap
FULL = 5 * (10 + 4 * SMALL_DIM)


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cut=st.one_of(st.just(FULL), st.integers(0, FULL)),  # whole files half of the time
    flips=st.lists(st.tuples(st.integers(0, FULL - 1), st.integers(0, 255)), max_size=4),
    chunk=st.integers(1, 6),
)
def test_fuzz_mutated_files_give_values_or_one_data_error(tmp_path: Path, cut: int, flips: list, chunk: int) -> None:
    """Cut and byte-flipped files: the reader returns finite rows of the file's own values
    (or the mean) for every item, or raises DataError; nothing else."""
    rng = np.random.default_rng(0)
    records = [
        (a, rng.random(SMALL_DIM, dtype=np.float32))
        for a in ["B000000001", "B000000002", "ZZZZZZZZZZ", "B000000001", "0123456789"]
    ]
    records[3] = (records[3][0], records[0][1])  # an identical repeat
    path = tmp_path / "fuzz.b"
    write_cnn_features(path, records)
    data = bytearray(path.read_bytes()[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path.write_bytes(bytes(data))
    rec = record_dtype(SMALL_DIM)
    try:
        x, info = read_cnn_features(path, ITEMS, dim=SMALL_DIM, chunk_records=chunk)
    except DataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    assert len(data) % rec.itemsize == 0 and info["n_records"] == len(data) // rec.itemsize
    assert x.shape == (4, SMALL_DIM) and np.isfinite(x).all()
    parsed = {r["asin"].decode(): r["x"] for r in np.frombuffer(bytes(data), dtype=rec)}
    for i, asin in enumerate(ITEMS):
        if asin in parsed:
            np.testing.assert_array_equal(x[i], parsed[asin])
