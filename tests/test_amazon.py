"""Tests of the Amazon dump readers, on the real sample dumps and on small bad files."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from pathlib import Path

import pandas as pd
import pytest
from test_fuzz_readers import gzip_rule

from sea.data.amazon import (
    TruncatedFileWarning,
    clean_text,
    item_sentence,
    read_metadata,
    read_reviews,
)
from sea.data.graph import dedupe, k_core
from sea.errors import DataError

DM = "2014/digital_music"
DM_REVIEWS = f"{DM}/reviews_Digital_Music_5.head.json.gz"
DM_TRUNCATED = f"{DM}/reviews_Digital_Music_5.truncated.json.gz"
DM_META = f"{DM}/meta_Digital_Music.head.json.gz"
GC_REVIEWS = "2018/gift_cards/Gift_Cards_5.json.gz"
GC_META = "2018/gift_cards/meta_Gift_Cards.json.gz"
MAG_RATINGS = "2018/magazine_subscriptions/Magazine_Subscriptions.csv"
MAG_META = "2018/magazine_subscriptions/meta_Magazine_Subscriptions.json.gz"
BEAUTY_REVIEWS = "2018/all_beauty/All_Beauty_5.json.gz"


def five_core(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The graph stage's own dedupe + iterative k-core, checked against the measured counts."""
    return k_core(dedupe(df), k)


def write_lines(path: Path, lines: list[str], *, newline_at_end: bool = True) -> Path:
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def review(user: str = "U1", item: str = "I1", rating: float = 5.0, ts: int = 1_000_000_000) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts})


@pytest.fixture(scope="module")
def dm_meta(amazon_real) -> pd.DataFrame:
    """The 2014 Digital Music metadata (Python literals: the slowest sample to parse)."""
    return read_metadata(amazon_real / DM_META)


# ----------------------------------------------------------------- real reviews


@pytest.mark.parametrize(
    "rel, rows, users, items, pairs, core",
    [
        (DM_REVIEWS, 6_908, 2_490, 382, 6_908, (268, 206, 2_480)),
        (GC_REVIEWS, 2_972, 458, 148, 2_965, (453, 147, 2_941)),
        (MAG_RATINGS, 89_689, 72_098, 2_428, 88_318, (294, 132, 2_027)),
        (BEAUTY_REVIEWS, 5_269, 991, 85, 4_092, (137, 24, 686)),
    ],
)
def test_real_reviews_counts(amazon_real, rel, rows, users, items, pairs, core):
    df = read_reviews(amazon_real / rel)
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["rating"].dtype == "float32" and df["timestamp"].dtype == "int64"
    assert df["user"].map(type).eq(str).all() and df["item"].map(type).eq(str).all()
    assert (len(df), df["user"].nunique(), df["item"].nunique()) == (rows, users, items)
    assert len(df.drop_duplicates(["user", "item"])) == pairs  # duplicates are kept
    assert df["rating"].between(1, 5).all() and (df["timestamp"] > 0).all()
    kept = five_core(df)
    assert (kept["user"].nunique(), kept["item"].nunique(), len(kept)) == core


def test_real_review_values(amazon_real):
    first = read_reviews(amazon_real / DM_REVIEWS).iloc[0]
    assert (first["user"], first["item"], first["rating"], first["timestamp"]) == (
        "A3EBHHCZO6V2A4",
        "5555991584",
        5.0,
        1158019200,
    )
    mag = read_reviews(amazon_real / MAG_RATINGS).iloc[0]
    assert (mag["item"], mag["user"], mag["rating"], mag["timestamp"]) == (
        "B00005N7P0",
        "AH2IFH762VY5U",
        5.0,
        1005177600,
    )


def test_format_by_name_or_argument(amazon_real, tmp_path):
    odd = tmp_path / "ratings.dat"
    odd.write_bytes((amazon_real / MAG_RATINGS).read_bytes())
    with pytest.raises(DataError, match=r"ratings\.dat.*fmt='csv'"):
        read_reviews(odd)
    expected = read_reviews(amazon_real / MAG_RATINGS)
    pd.testing.assert_frame_equal(read_reviews(odd, fmt="csv"), expected)
    # gzip is recognised by content, so a compressed .csv.gz reads the same
    gz = tmp_path / "Magazine_Subscriptions.csv.gz"
    gz.write_bytes(gzip.compress(odd.read_bytes()))
    pd.testing.assert_frame_equal(read_reviews(gz), expected)
    with pytest.raises(ValueError, match="fmt must be"):
        read_reviews(gz, fmt="parquet")


# ----------------------------------------------------------------- real metadata


def test_real_metadata_2014_digital_music(amazon_real, dm_meta):
    meta = dm_meta
    assert list(meta.columns) == ["asin", "title", "brand", "categories", "description", "image_url"]
    assert len(meta) == 7_419 and meta.attrs["duplicate_asins"] == 0
    reviewed = set(read_reviews(amazon_real / DM_REVIEWS)["item"])
    sub = meta[meta["asin"].isin(reviewed)]
    assert len(sub) == 382
    assert (sub["title"] != "").all() and (sub["categories"] != "").all() and sub["image_url"].notna().all()
    assert (sub["description"] != "").sum() == 236
    row = meta.set_index("asin").loc["5555991584"]
    assert row["title"] == "Memory of Trees"
    assert row["categories"] == "CDs & Vinyl > New Age > Celtic New Age"  # the first path only
    assert row["image_url"] == "http://ecx.images-amazon.com/images/I/51b5WDjdhPL._SX300_.jpg"
    assert (row["brand"], row["description"]) == ("", "")  # absent in the record


def test_real_metadata_2018_gift_cards(amazon_real):
    meta = read_metadata(amazon_real / GC_META)
    assert len(meta) == 1_547
    reviewed = set(read_reviews(amazon_real / GC_REVIEWS)["item"])
    sub = meta[meta["asin"].isin(reviewed)]
    assert len(sub) == 148
    assert sub["image_url"].notna().sum() == 116
    # 2018 `image` lists hold 38x50 thumbnails; the reader names the full-size image
    assert not sub["image_url"].dropna().str.contains(r"\._[^/]*_\.jpg$").any()
    row = meta.set_index("asin").loc["B001H53QE4"]
    assert row["description"].startswith("Amazon.com Gift Cards are the perfect way")
    assert "<" not in row["description"] and "href" not in row["description"]
    assert row["categories"] == "Gift Cards > Gift Cards"
    assert row["brand"] == "Amazon"


def test_real_metadata_2018_magazines(amazon_real):
    meta = read_metadata(amazon_real / MAG_META)
    # The file has 3,385 records, but 1,065 asins appear twice (identical records).
    assert len(meta) + meta.attrs["duplicate_asins"] == 3_385
    assert (len(meta), meta.attrs["duplicate_asins"]) == (2_320, 1_065)
    assert meta["asin"].is_unique
    core_items = set(five_core(read_reviews(amazon_real / MAG_RATINGS))["item"])
    assert len(core_items & set(meta["asin"])) == 128
    m = meta.set_index("asin")
    # the title is a cut-off HTML tag in the dump: nothing of it is text
    assert m.loc["B00005N7NQ", "title"] == ""
    assert m.loc["B00005N7NQ", "image_url"] == "https://images-na.ssl-images-amazon.com/images/I/51Iph04Jy3L.jpg"
    assert m.loc["B00005N7OC", "categories"] == "Magazine Subscriptions > Arts, Music & Photography > Music"


def test_item_sentence_on_real_record(dm_meta):
    meta = dm_meta
    row = meta[(meta["brand"] != "") & (meta["description"] != "")].iloc[0]
    text = item_sentence(row["title"], row["brand"], row["categories"], row["description"])
    assert text.startswith(row["title"])
    assert row["brand"] in text and row["categories"] in text and text.endswith(row["description"])


@pytest.mark.parametrize("rel", [DM_META, GC_META])
def test_metadata_restricted_to_asins_equals_filtered_full_read(amazon_real, rel):
    full = read_metadata(amazon_real / rel)
    wanted = set(full["asin"].iloc[::7]) | {"NOT-AN-ASIN"}
    part = read_metadata(amazon_real / rel, asins=wanted)
    expected = full[full["asin"].isin(wanted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)


def test_metadata_with_none_of_the_asins(amazon_real):
    with pytest.raises(DataError, match="none of the 1 reviewed products"):
        read_metadata(amazon_real / DM_META, asins={"NOT-AN-ASIN"})


def test_item_sentence_parts():
    assert item_sentence("", "", "", "") == ""
    assert item_sentence("  T  ", "", "A > B", " d\n e ") == "T A > B d e"
    assert item_sentence(None, float("nan"), "", "x") == "x"  # type: ignore[arg-type]


def test_clean_text():
    assert clean_text('<span class="a-size-medium a-color-secondary"') == ""
    assert clean_text("Arts &amp; Crafts<br/>for <b>kids</b>") == "Arts & Crafts for kids"
    assert clean_text("3 < 4 and 5 > 2") == "3 < 4 and 5 > 2"


# ----------------------------------------------------------------- damaged files


def test_truncated_gzip_is_an_error(amazon_real):
    path = amazon_real / DM_TRUNCATED
    with pytest.raises(DataError) as err:
        read_reviews(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "ends early" in msg and "only the 6,714 complete lines decoded before its last 131,072" in msg
    assert "re-download" in msg and "allow_truncated=True" in msg


def test_truncated_gzip_allowed_keeps_complete_lines(amazon_real):
    # The damaged file's stream holds the head file's 6,908 lines, then part of a 6,909th
    # (reviewer AO2AQRPPSTABB on B0000024WV), which must not come back. Only the lines decoded
    # before the last TRUNCATION_MARGIN compressed bytes are kept: 6,714 (the README's figure).
    data = (amazon_real / DM_TRUNCATED).read_bytes()
    n = len(gzip_rule(data))
    assert n == 6_714
    with pytest.warns(
        TruncatedFileWarning,
        match="kept the 6,714 complete lines .* the 194 complete lines after them "
        "and the incomplete line at the end are not used",
    ):
        df = read_reviews(amazon_real / DM_TRUNCATED, allow_truncated=True)
    pd.testing.assert_frame_equal(df, read_reviews(amazon_real / DM_REVIEWS).iloc[:n])


def test_truncated_gzip_mid_line_gives_a_proper_prefix(tmp_path):
    rng = random.Random(0)  # random text compresses little: the file is a few times the margin
    lines = [
        json.dumps(
            {
                "reviewerID": f"U{i}",
                "asin": f"I{i % 7}",
                "overall": 5.0,
                "unixReviewTime": 1_000_000_000 + i,
                "reviewText": rng.randbytes(150).hex(),
            }
        )
        for i in range(4_000)
    ]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    # what a decompressor can still recover from the cut file, and what the rule keeps of it
    recovered = zlib.decompressobj(wbits=31).decompress(cut.read_bytes())
    n_complete, n_kept = recovered.count(b"\n"), len(gzip_rule(cut.read_bytes()))
    assert 0 < n_kept < n_complete < len(lines) and not recovered.endswith(b"\n")
    with pytest.raises(
        DataError,
        match=rf"cut\.json\.gz.*only the {n_kept:,} complete lines.*the "
        rf"{n_complete - n_kept:,} complete lines after them",
    ):
        read_reviews(cut)
    with pytest.warns(TruncatedFileWarning):
        df = read_reviews(cut, allow_truncated=True)
    assert df["user"].tolist() == [f"U{i}" for i in range(n_kept)]


def test_metadata_truncated_gzip(tmp_path, amazon_real):
    head = (amazon_real / GC_META).read_bytes()
    cut = tmp_path / "meta_cut.json.gz"
    cut.write_bytes(head[: len(head) * 2 // 3])
    with pytest.raises(DataError, match="ends early"):
        read_metadata(cut)
    with pytest.warns(TruncatedFileWarning):
        meta = read_metadata(cut, allow_truncated=True)
    full = read_metadata(amazon_real / GC_META)
    assert 0 < len(meta) < len(full)
    pd.testing.assert_frame_equal(meta, full.iloc[: len(meta)])


# ----------------------------------------------------------------- bad reviews


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_malformed_json_line(tmp_path, suffix):
    path = write_lines(
        tmp_path / f"reviews{suffix}", [review(), review("U2"), '{"reviewerID": "U3", "asin": ', review()]
    )
    with pytest.raises(DataError, match=rf"reviews{suffix.replace('.', '[.]')}:3: not a valid JSON line"):
        read_reviews(path)


def test_missing_required_field(tmp_path):
    path = write_lines(tmp_path / "r.json", [review(), '{"reviewerID": "U2", "asin": "I2", "unixReviewTime": 5}'])
    with pytest.raises(DataError, match=r"r\.json:2: review lacks the required field 'overall'"):
        read_reviews(path)


@pytest.mark.parametrize(
    "bad",
    [
        '{"reviewerID": "U2", "asin": 123, "overall": 5.0, "unixReviewTime": 5}',
        '{"reviewerID": "U2", "asin": "I2", "overall": "five", "unixReviewTime": 5}',
        '{"reviewerID": "U2", "asin": "I2", "overall": 5.0, "unixReviewTime": "yesterday"}',
        '["U2", "I2", 5.0, 5]',
    ],
)
def test_wrong_type(tmp_path, bad):
    path = write_lines(tmp_path / "r.json", [review(), bad])
    with pytest.raises(DataError, match=r"r\.json:2: "):
        read_reviews(path)


def test_incomplete_last_line_of_plain_file(tmp_path):
    # no gzip trailer to tell: the cut-off last line is reported with its number
    path = write_lines(tmp_path / "r.json", [review(), '{"reviewerID": "U2", "as'], newline_at_end=False)
    with pytest.raises(DataError, match=r"r\.json:2: not a valid JSON line"):
        read_reviews(path)
    # a complete last line without a newline is fine, and blank lines are skipped
    path = write_lines(tmp_path / "ok.json", [review(), "", review("U2")], newline_at_end=False)
    assert read_reviews(path)["user"].tolist() == ["U1", "U2"]


def test_bad_csv_rows(tmp_path):
    path = write_lines(tmp_path / "r.csv", ["I1,U1,5.0,1005177600", "I2,U2,5.0"])
    with pytest.raises(DataError, match=r"r\.csv:2: expected 4 comma-separated fields"):
        read_reviews(path)
    path = write_lines(tmp_path / "h.csv", ["item,user,rating,timestamp", "I1,U1,5.0,1005177600"])
    with pytest.raises(DataError, match=r"h\.csv:1: .*no header"):
        read_reviews(path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", gzip.compress(b"")])
def test_empty_reviews_file(tmp_path, content):
    path = tmp_path / "empty.json.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.json\.gz: no reviews"):
        read_reviews(path)


# ----------------------------------------------------------------- bad metadata


@pytest.mark.parametrize(
    "line",
    [
        "__import__('os').system('touch PWNED')",
        "{'asin': 'B1', 'title': __import__('os').system('touch PWNED')}",
        "{'asin': 'B1', 'title': (lambda: __import__('os').system('touch PWNED'))()}",
    ],
)
def test_metadata_code_is_never_run(tmp_path, monkeypatch, line):
    monkeypatch.chdir(tmp_path)
    path = write_lines(tmp_path / "meta.json", ["{'asin': 'B0', 'title': 'ok'}", line])
    with pytest.raises(DataError, match=r"meta\.json:2: neither a JSON object nor a Python dict literal"):
        read_metadata(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "line, match",
    [
        ("['B1', 'title']", "expected one product record"),
        ("{'title': 'no asin'}", "lacks a string 'asin'"),
        ('{"asin": 7}', "lacks a string 'asin'"),
        ('{"asin": "B1", "title": 3.5}', "'title' must be text"),
        ('{"asin": "B1", "categories": "Music"}', "'categories' must be a list"),
        ('{"asin": "B1", "image": [5]}', "non-string URL"),
    ],
)
def test_metadata_bad_records(tmp_path, line, match):
    path = write_lines(tmp_path / "meta.json", ['{"asin": "B0"}', "", line])
    with pytest.raises(DataError, match=rf"meta\.json:3: .*{match}"):
        read_metadata(path)


def test_metadata_fields_2018_and_duplicates(tmp_path):
    thumb = "https://img.example/I/ABC._SX38_SY50_CR,0,0,38,50_.jpg"
    records = [
        {
            "asin": "B1",
            "title": "T &amp; <i>U</i>",
            "description": ["one", "", "<p>two</p>"],
            "category": ["Top", "Sub"],
            "brand": "Br",
            "image": [thumb],
            "imageURL": ["https://img.example/I/X._SX38_.jpg"],
            "imageURLHighRes": ["https://img.example/I/HI.jpg"],
        },
        {"asin": "B2", "image": [thumb]},
        {"asin": "B3", "image": [], "description": []},
        {"asin": "B1", "title": "second copy"},
    ]
    path = write_lines(tmp_path / "meta.json.gz", [json.dumps(r) for r in records])
    meta = read_metadata(path).set_index("asin")
    assert meta.index.tolist() == ["B1", "B2", "B3"]
    assert read_metadata(path).attrs["duplicate_asins"] == 1
    b1 = meta.loc["B1"]
    assert (b1["title"], b1["description"], b1["categories"], b1["brand"]) == ("T & U", "one two", "Top > Sub", "Br")
    assert b1["image_url"] == "https://img.example/I/HI.jpg"  # high-res first
    assert meta.loc["B2", "image_url"] == "https://img.example/I/ABC.jpg"  # thumbnail -> full size
    assert meta.loc["B3", "image_url"] is None
    assert tuple(meta.loc["B3", ["title", "brand", "categories", "description"]]) == ("", "", "", "")


def test_empty_metadata_file(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("")
    with pytest.raises(DataError, match=r"meta\.json: no product records"):
        read_metadata(path)
