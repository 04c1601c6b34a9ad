"""Tests of the sample-dataset generator, on real generated files."""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the generator is a script, not the library

from sample_data import IMAGES_DIR, META_FILE, REVIEWS_FILE, generate_sample  # noqa: E402

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "sample"
SMALL = {"n_users": 150, "n_items": 80}
REVIEW_KEYS = [
    "reviewerID",
    "asin",
    "reviewerName",
    "helpful",
    "reviewText",
    "overall",
    "summary",
    "unixReviewTime",
    "reviewTime",
]
META_REQUIRED = {"asin", "title", "price", "salesRank", "categories", "brand"}


def all_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_reviews(root: Path) -> list[dict]:
    with gzip.open(root / REVIEWS_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_meta(root: Path) -> list[dict]:
    with gzip.open(root / META_FILE, "rt", encoding="utf-8") as f:
        return [ast.literal_eval(line) for line in f]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample")
    return out, generate_sample(out, seed=0, **SMALL)


def test_generation_is_byte_identical(small, tmp_path):
    first, stats = small
    second_stats = generate_sample(tmp_path, seed=0, **SMALL)
    assert all_files(first) == all_files(tmp_path)
    assert stats == second_stats
    assert sorted(all_files(first)) == stats["files"]


def test_seed_changes_the_data(small, tmp_path):
    first, stats = small
    other = generate_sample(tmp_path, seed=1, **SMALL)
    assert other["sha256"] != stats["sha256"]


def test_regenerating_in_place_removes_stale_images(tmp_path):
    generate_sample(tmp_path, seed=0, **SMALL)
    stats = generate_sample(tmp_path, seed=1, **SMALL)
    assert sorted(all_files(tmp_path)) == stats["files"]


def test_reviews_have_the_2014_format(small):
    root, stats = small
    reviews = read_reviews(root)
    assert len(reviews) == stats["n_reviews"] > 0
    for r in reviews:
        assert list(r) == REVIEW_KEYS
        assert re.fullmatch(r"A[A-Z0-9]{13}", r["reviewerID"])
        assert re.fullmatch(r"B00[A-Z0-9]{7}", r["asin"])
        assert isinstance(r["overall"], float) and r["overall"] in {1.0, 2.0, 3.0, 4.0, 5.0}
        helpful, total = r["helpful"]
        assert 0 <= helpful <= total
        assert r["reviewText"] and r["summary"] and r["reviewerName"]
        date = datetime.fromtimestamp(r["unixReviewTime"], tz=UTC)
        assert r["reviewTime"] == f"{date.month:02d} {date.day}, {date.year}"
        assert 2012 <= date.year <= 2014


def test_each_users_reviews_fall_on_distinct_days(small):
    root, _ = small
    days = defaultdict(list)
    for r in read_reviews(root):
        days[r["reviewerID"]].append(r["unixReviewTime"])
    assert all(len(set(d)) == len(d) >= 5 for d in days.values())


def test_metadata_is_python_literals_covering_every_review(small):
    root, stats = small
    meta = read_meta(root)
    asins = [m["asin"] for m in meta]
    assert asins == sorted(set(asins)) and len(asins) == stats["n_items"]
    for m in meta:
        assert META_REQUIRED <= set(m)
        assert m["categories"][0][0] == "Sample Store" and len(m["categories"][0]) == 3
        assert m["brand"] in m["title"] and m["price"] > 0
    assert {r["asin"] for r in read_reviews(root)} <= set(asins)
    assert sum("description" not in m for m in meta) == stats["n_without_description"]
    assert sum("imUrl" not in m for m in meta) == stats["n_without_image"]


def test_metadata_lines_are_single_quoted_reprs(small):
    root, _ = small
    with gzip.open(root / META_FILE, "rt", encoding="utf-8") as f:
        first = f.readline()
    assert first.startswith("{'asin': 'B00")


def test_images_decode_except_the_corrupt_ones(small):
    root, stats = small
    corrupt = set(stats["corrupt_image_asins"])
    assert corrupt, "the small sample should still exercise a corrupt image"
    for m in read_meta(root):
        if "imUrl" not in m:
            continue
        assert m["imUrl"] == f"{IMAGES_DIR}/{m['asin']}.png"
        path = root / m["imUrl"]
        assert path.is_file()
        if m["asin"] in corrupt:
            with pytest.raises(OSError):  # UnidentifiedImageError is an OSError too
                with Image.open(path) as image:
                    image.convert("RGB")
        else:
            with Image.open(path) as image:
                assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)


def test_committed_sample_matches_the_generator(tmp_path):
    stats = generate_sample(tmp_path, seed=0)
    for name in (REVIEWS_FILE, META_FILE):
        committed = hashlib.sha256((COMMITTED / name).read_bytes()).hexdigest()
        assert committed == stats["sha256"][name], f"{name} drifted: rerun scripts/make_sample.py"
    assert all_files(COMMITTED) == all_files(tmp_path)
