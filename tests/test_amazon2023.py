"""The Amazon Reviews 2023 readers, on the real shared files (as downloaded: gzip) and on
hand-made bad input; and the official splits taken as they are (split.method: given)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sea.data.amazon import item_sentence, read_metadata, read_reviews
from sea.data.amazon2023 import read_benchmark_csv, read_given_split
from sea.data.lines import END_REVIEW_SECOND, FIRST_REVIEW_SECOND
from sea.errors import DataError


@pytest.fixture(scope="module")
def beauty(amazon_real) -> Path:
    return amazon_real / "2023" / "all_beauty" / "5core"


def split_paths(folder: Path, split: str) -> dict[str, Path]:
    return {part: folder / split / f"All_Beauty.{part}.csv.gz" for part in ("train", "valid", "test")}


def test_rating_only_csv_read_as_reviews(beauty):
    path = beauty / "rating_only" / "All_Beauty.csv.gz"
    df = read_reviews(path)
    independent = pd.read_csv(path, dtype={"user_id": str, "parent_asin": str})
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert len(df) == len(independent) == 2535
    assert df["user"].tolist() == independent["user_id"].tolist()
    assert df["item"].tolist() == independent["parent_asin"].tolist()
    assert (df["timestamp"].to_numpy() == independent["timestamp"].to_numpy()).all()  # milliseconds
    assert (df["rating"].to_numpy() == independent["rating"].to_numpy()).all()


@pytest.mark.parametrize("split", ["last_out", "last_out_w_his", "timestamp", "timestamp_w_his"])
def test_official_split_files_reunite_to_rating_only(beauty, split):
    parts = [read_benchmark_csv(p) for p in split_paths(beauty, split).values()]
    rating_only = read_benchmark_csv(beauty / "rating_only" / "All_Beauty.csv.gz")
    key = ["user", "item", "rating", "timestamp"]
    together = pd.concat(parts)[key].sort_values(key).reset_index(drop=True)
    assert together.equals(rating_only[key].sort_values(key).reset_index(drop=True))
    assert parts[0]["line"].iloc[0] == 2  # line numbers count the header


def test_given_last_out_taken_as_it_is(beauty):
    df = read_given_split(split_paths(beauty, "last_out"))
    counts = df["split"].value_counts()
    assert (counts["train"], counts["valid"], counts["test"]) == (2029, 253, 253)
    # leave-last-out: each user's valid row is later than their train rows, test later still
    last = df.groupby(["user", "split"])["timestamp"].agg(["min", "max"]).unstack()
    assert (last[("max", "train")] <= last[("min", "valid")]).all()
    assert (last[("max", "valid")] <= last[("min", "test")]).all()


def test_given_timestamp_split_with_unseen_users_is_refused_with_file_and_line(beauty):
    paths = split_paths(beauty, "timestamp")
    with pytest.raises(DataError, match=r"All_Beauty\.valid\.csv\.gz:\d+: user '.+' has no row in the train file"):
        read_given_split(paths)


def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write(text)
    return path


HEADER = "user_id,parent_asin,rating,timestamp\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("u1,i1,5.0\n", r"\.csv\.gz:2: expected 4 comma-separated fields"),
        ("u1,i1,five,1\n", r"\.csv\.gz:2: rating 'five' is not a plain decimal number"),
        ("u1,i1,5.0,-3\n", r"\.csv\.gz:2: timestamp '-3' is not a non-negative whole number"),
        ("u1,i1,5.0,1588687728923\nu2,i1,nan,1588687728924\n", r"\.csv\.gz:3: rating 'nan'"),
        ("u1,i1,5.0,16000", r"\.csv\.gz:2: the last line has no newline"),
    ],
)
def test_benchmark_csv_bad_rows(tmp_path, body, message):
    path = write_gz(tmp_path / "All_Beauty.csv.gz", HEADER + body)
    with pytest.raises(DataError, match=message):
        read_benchmark_csv(path)


def test_benchmark_csv_bad_header_and_missing_file(tmp_path):
    path = write_gz(tmp_path / "x.csv.gz", "parent_asin,user_id,rating,timestamp\nu,i,5.0,1\n")
    with pytest.raises(DataError, match=r"x\.csv\.gz:1: expected the header user_id,parent_asin,rating,timestamp"):
        read_benchmark_csv(path)
    with pytest.raises(DataError, match=r"absent\.csv\.gz: cannot be read"):
        read_benchmark_csv(tmp_path / "absent.csv.gz")


def test_given_split_refuses_a_pair_twice(tmp_path):
    t = 1588687728923  # ms
    paths = {
        "train": write_gz(tmp_path / "t.train.csv.gz", HEADER + f"u1,i1,5.0,{t}\nu1,i2,4.0,{t + 1}\n"),
        "valid": write_gz(tmp_path / "t.valid.csv.gz", HEADER + f"u1,i3,5.0,{t + 2}\n"),
        "test": write_gz(tmp_path / "t.test.csv.gz", HEADER + f"u1,i2,5.0,{t + 3}\n"),
    }
    with pytest.raises(
        DataError,
        match=r"t\.test\.csv\.gz:2: user 'u1' and item 'i2' are already paired at "
        r".*t\.train\.csv\.gz:3",
    ):
        read_given_split(paths)


def test_review_jsonl_2023(tmp_path):
    rows = [
        {
            "rating": 5.0,
            "title": "ok",
            "text": "fine",
            "images": [],
            "asin": "B01",
            "parent_asin": "P01",
            "user_id": "U1",
            "timestamp": 1588687728923,
            "helpful_vote": 0,
            "verified_purchase": True,
        },
        {"rating": 3, "asin": "B02", "parent_asin": "P02", "user_id": "U2", "timestamp": 1588687728924},
    ]
    path = write_gz(tmp_path / "All_Beauty.jsonl.gz", "".join(json.dumps(r) + "\n" for r in rows))
    df = read_reviews(path)
    assert df["user"].tolist() == ["U1", "U2"] and df["item"].tolist() == ["P01", "P02"]  # parent_asin
    assert df["timestamp"].tolist() == [1588687728923, 1588687728924]
    bad = write_gz(tmp_path / "bad.jsonl.gz", json.dumps({"user_id": "U1", "parent_asin": "P", "rating": 5}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:1: review lacks the required field 'timestamp'"):
        read_reviews(bad)


def test_metadata_2023_real_subset(amazon_real):
    path = amazon_real / "2023" / "health_and_personal_care" / "meta_Health_and_Personal_Care.subset1001.jsonl.gz"
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    meta = read_metadata(path)
    assert len(meta) == len({r["parent_asin"] for r in records}) == 1001
    first = records[0]
    row = meta.set_index("asin").loc[first["parent_asin"]]
    assert row["title"] == first["title"] and row["brand"] == first["store"]
    main = next(i for i in first["images"] if i["variant"] == "MAIN")
    assert row["image_url"] == main["large"]
    assert first["features"][0].split(":")[0] in row["description"]
    assert "Item Form: Spray" in row["description"]  # details as key: value
    sentence = item_sentence(row["title"], row["brand"], row["categories"], row["description"])
    assert sentence.startswith(first["title"][:40])
    # every item has an image; hi_res where the MAIN image has one, else the next size
    hi = read_metadata(path, image_size="hi_res").set_index("asin")
    for r in records[:50]:
        img = next((i for i in r["images"] if i["variant"] == "MAIN"), r["images"][0])
        assert hi.loc[r["parent_asin"], "image_url"] == (img["hi_res"] or img["large"])


def test_metadata_2023_filtered_to_reviewed_items(amazon_real):
    path = amazon_real / "2023" / "health_and_personal_care" / "meta_Health_and_Personal_Care.subset1001.jsonl.gz"
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    wanted = {r["parent_asin"] for r in records[::7]}
    meta = read_metadata(path, asins=wanted)
    assert set(meta["asin"]) == wanted
    assert meta.equals(read_metadata(path)[lambda m: m["asin"].isin(wanted)].reset_index(drop=True))


def test_metadata_2023_bad_records(tmp_path):
    def meta(rec) -> Path:
        return write_gz(
            tmp_path / "meta_X.jsonl.gz",
            json.dumps({"title": "t", "parent_asin": "P1"}) + "\n" + json.dumps(rec) + "\n",
        )

    with pytest.raises(DataError, match=r"meta_X\.jsonl\.gz:2: field 'images' must be a list"):
        read_metadata(meta({"parent_asin": "P2", "images": "http://x/y.jpg"}))
    with pytest.raises(DataError, match=r"meta_X\.jsonl\.gz:2: field 'features' must be text or a list of text"):
        read_metadata(meta({"parent_asin": "P2", "features": [1, 2]}))
    with pytest.raises(DataError, match=r"meta_X\.jsonl\.gz:2: field 'details' must be a mapping"):
        read_metadata(meta({"parent_asin": "P2", "details": ["a"]}))
    # a key spelled with an escape is not skipped unparsed: the record is found
    hidden = write_gz(tmp_path / "meta_Y.jsonl.gz", '{"parent_asin": "P1", "parent\\u005fasin": "P9", "title": "t"}\n')
    assert read_metadata(hidden, asins={"P9"})["asin"].tolist() == ["P9"]


def test_metadata_2023_text_is_cleaned_once(tmp_path):
    """An escaped entity stays as the dump means it, in the description as in the title
    (the 2014/2018 reader does the same): "&amp;lt;b&amp;gt;" is the text "&lt;b&gt;"."""
    raw = "Use &amp;lt;b&amp;gt; here &amp;amp; there"
    path = write_gz(
        tmp_path / "meta_X.jsonl.gz",
        json.dumps({"parent_asin": "P1", "title": raw, "features": [raw], "description": ["<p>second</p>"]}) + "\n",
    )
    row = read_metadata(path).iloc[0]
    assert row["title"] == "Use &lt;b&gt; here &amp; there"
    assert row["description"] == "Use &lt;b&gt; here &amp; there second"


# --------------------------------------------------------------------------- fuzzing
# Real 2023 lines, mutated as in tests/test_fuzz_readers.py: a reader returns what an
# independent parse of the same bytes says, or a DataError that starts with the file's path.

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_fuzz_readers import (  # noqa: E402
    AMAZON_REAL,
    NASTY,
    _check_frame_or_error,
    _content_lines,
    _head,
    _valid_id,
    assert_prefilter_keeps_exactly,
    fuzz,
    mutated_lines,
)

_SYNTH_CSV_2023 = [b"user_id,parent_asin,rating,timestamp"] + [
    f"AF{i:026d},B0{i % 4:08d},{1 + i % 5}.0,{1_547_589_356_557 + i}".encode() for i in range(12)
]
_SYNTH_META_2023 = [
    json.dumps(
        {
            "main_category": "Health",
            "title": f"Spray {i} \u2019",
            "features": ["A: b", "<b>c</b>"],
            "description": [],
            "images": [
                {
                    "thumb": f"https://m.media-amazon.com/images/I/{i}t.jpg",
                    "large": f"https://m.media-amazon.com/images/I/{i}l.jpg",
                    "variant": "MAIN",
                    "hi_res": None,
                }
            ],
            "store": "Good",
            "categories": [],
            "details": {"Brand": "Good", "Number of Items": "1"},
            "parent_asin": f"B00LTM{i:04d}",
        }
    ).encode()
    for i in range(6)
]
CSV_2023 = _head("2023/all_beauty/5core/last_out_w_his/All_Beauty.train.csv.gz", 12) or _SYNTH_CSV_2023
META_2023 = (
    _head("2023/health_and_personal_care/meta_Health_and_Personal_Care.subset1001.jsonl.gz", 6) or _SYNTH_META_2023
)
NASTY_2023 = NASTY + [b'"parent_asin": "B0DECOY001", ', b"\\u0070arent_asin", b'"parent_asin"', b'"images": 3, ']
assert AMAZON_REAL  # (the seeds above fall back to synthetic lines where the folder is absent)


@fuzz(300)
@given(data=mutated_lines(CSV_2023))
def test_fuzz_benchmark_csv(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "All_Beauty.train.csv"
    path.write_bytes(data)
    df = _check_frame_or_error(lambda: read_benchmark_csv(path), path)
    if df is None:
        return
    lines = _content_lines(data)
    assert lines[0].rstrip(b"\r").split(b",")[:4] == [b"user_id", b"parent_asin", b"rating", b"timestamp"]
    assert len(df) == len(lines) - 1 and data.endswith(b"\n")
    assert all(map(_valid_id, df["user"])) and all(map(_valid_id, df["item"]))
    assert df["rating"].between(1, 5).all()
    assert df["timestamp"].between(FIRST_REVIEW_SECOND * 1000, END_REVIEW_SECOND * 1000 - 1).all()  # 2023: ms
    for row, line in zip(df.itertuples(index=False), lines[1:], strict=True):
        fields = line.decode("utf-8").rstrip("\r").split(",")
        assert (row.user, row.item) == (fields[0], fields[1])
        assert fields[2].isascii() and row.rating == np.float32(float(fields[2]))
        assert fields[3].isascii() and fields[3].isdigit() and row.timestamp == int(fields[3])


@fuzz(300)
@given(
    data=mutated_lines(META_2023),
    pick=st.lists(st.integers(0, 9), max_size=3),
    decoy=st.lists(st.tuples(st.integers(0, 10**5), st.sampled_from(NASTY_2023)), max_size=2),
)
def test_fuzz_metadata_2023(tmp_path_factory, data, pick, decoy):
    for at, nasty in decoy:  # keys that could fool the parent_asin pre-filter, anywhere
        at %= len(data) + 1
        data = data[:at] + nasty + data[at:]
    path = tmp_path_factory.mktemp("meta") / "meta_X.jsonl"
    path.write_bytes(data)
    full = _check_frame_or_error(lambda: read_metadata(path), path)
    wanted = {json.loads(META_2023[i % len(META_2023)])["parent_asin"] for i in pick} | {"B0DECOY001"}
    part = _check_frame_or_error(lambda: read_metadata(path, asins=wanted), path)
    if full is None:
        assert part is None or set(part["asin"]) <= wanted
        return
    assert full["asin"].is_unique and all(map(_valid_id, full["asin"]))
    assert_prefilter_keeps_exactly(part, full, wanted)
