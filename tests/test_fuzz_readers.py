"""Seeded property-based fuzzing of every data reader.

Inputs are real lines from ../shared/data/amazon-real (small synthetic lines in the same
formats where the folder is absent, so these tests always run) and generated ``.inter``,
``i_id_mapping.csv`` and ``.npy`` files, mutated: flipped and deleted bytes, cut lines and
files, inserted nasty values (NaN, 1e400, -1, 2**40, BOM, NUL, lone surrogates, deep
nesting, huge numbers, quotes, newlines, duplicate headers...).

The property: a reader returns a result that holds its documented invariants and agrees
with an independent parse of the same bytes, or raises a DataError whose message starts
with the file's path. Any other exception fails the test. Hypothesis is derandomized, so
every run tries the same inputs.
"""

from __future__ import annotations

import ast
import collections
import csv
import gzip
import io
import json
import math
import random
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_graph_stream import assert_same_reviews

from sea.data import lines as lines_module
from sea.data.amazon import _fast_meta, _slow_meta, clean_text, read_metadata, read_reviews
from sea.data.arrays import load_features
from sea.data.lines import END_REVIEW_SECOND, FIRST_REVIEW_SECOND, FLOAT32_MAX, Lines, TruncatedFileWarning
from sea.data.mmrec import read_inter, read_item_ids
from sea.errors import DataError

AMAZON_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-real"
_FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(n: int) -> settings:
    """Seeded settings with ``n`` examples."""
    return settings(_FUZZ, max_examples=n)


# ----------------------------------------------------------------- seed lines


def _head(rel: str, n: int) -> list[bytes] | None:
    """The first ``n`` lines of a real dump, or None where the shared folder is absent."""
    path = AMAZON_REAL / rel
    if not path.is_file():
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [f.readline().rstrip(b"\n") for _ in range(n)]


# Synthetic lines in the real formats (used only where the real dumps are absent).
_SYNTH_REVIEWS = [
    json.dumps(
        {
            "reviewerID": f"A{i:013d}",
            "asin": f"B00{i % 3:07d}",
            "reviewerName": "name",
            "helpful": [i, 2],
            "reviewText": "Text with 'quotes' and \"doubles\" \u00e9",
            "overall": 5.0 - i % 5,
            "summary": "s",
            "unixReviewTime": 1_058_140_800 + i,
            "reviewTime": "07 14, 2003",
        }
    ).encode()
    for i in range(10)
]
_SYNTH_CSV = [f"B00{i % 4:07d},A{i:013d},{1 + i % 5}.0,{1_005_177_600 + i}".encode() for i in range(15)]
_SYNTH_META_2014 = [
    repr(
        {
            "asin": f"B00{i:07d}",
            "title": f"Album {i} (Don't)",
            "price": 11.33,
            "imUrl": "http://ecx.images-amazon.com/images/I/21W29WZwDAL._SL500_.jpg",
            "related": {"also_bought": ["B00000282A", "B0084O8O9S"]},
            "salesRank": {"Music": i},
            "categories": [["CDs & Vinyl", "Pop"], ["Music"]],
            "description": "<b>Great</b> &amp; good",
        }
    ).encode()
    for i in range(6)
]
_SYNTH_META_2018 = [
    json.dumps(
        {
            "category": ["Gift Cards", "Gift Cards"],
            "tech1": "",
            "description": ["<div>Gift</div>"],
            "title": f"Card {i}",
            "brand": "Amazon",
            "also_buy": ["B001H53QDK"],
            "asin": f"B01{i:07d}",
            "image": ["https://images-na.ssl-images-amazon.com/images/I/41u._SS40_.jpg"],
        }
    ).encode()
    for i in range(6)
]

REVIEW_LINES = (_head("2014/digital_music/reviews_Digital_Music_5.head.json.gz", 6) or _SYNTH_REVIEWS[:6]) + (
    _head("2018/gift_cards/Gift_Cards_5.json.gz", 6) or _SYNTH_REVIEWS[6:]
)
CSV_LINES = _head("2018/magazine_subscriptions/Magazine_Subscriptions.csv", 15) or _SYNTH_CSV
META_LINES = (_head("2014/digital_music/meta_Digital_Music.head.json.gz", 5) or _SYNTH_META_2014) + (
    _head("2018/gift_cards/meta_Gift_Cards.json.gz", 5) or _SYNTH_META_2018
)

NASTY = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"nan",
    b"inf",
    b"1e400",
    b"-1e400",
    b"-1",
    b"1099511627776",
    b"4294967299",
    b"2147483647",
    b"1.5",
    b"1e39",
    b"0",
    b"9" * 400,
    b"9" * 5000,
    b"\xef\xbb\xbf",
    b"\\ud800",
    b"\\udfff",
    b"\\u0000",
    b"\\x61",
    b"\x00",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xe2\x80\xae",
    b"[" * 3000,
    b"{" * 3000,
    b"(" * 300,
    b'"',
    b"'",
    b"\\",
    b"\n",
    b"\r",
    b"\t",
    b",",
    b"}",
    b"]",
    b":",
    b" ",
    b"'asin': 'B0DECOY001', ",
    b'"asin": "B0DECOY001", ',
    b"'as' 'in': ",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b"__import__('os')",
    b'"""',
    b"''",
    b"1_0",
    b"\xd9\xa5",
]
VALUE = re.compile(rb"""(?<=:\s)("[^"]*"|'[^']*'|[-+0-9.eE]+|true|false|null|NaN|\[[^\[\]]*\])""")


@st.composite
def mutated_lines(draw, lines: list[bytes], max_ops: int = 3) -> bytes:
    """The lines joined with newlines, after 1..max_ops random mutations."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, max_ops))):
        k = draw(st.integers(0, len(lines) - 1))
        line = lines[k]
        op = draw(st.sampled_from(["flip", "delete", "insert", "value", "value", "cut", "dup", "drop", "blank"]))
        pos = draw(st.integers(0, len(line)))
        if op == "flip" and line:
            pos = min(pos, len(line) - 1)
            line = line[:pos] + bytes([line[pos] ^ draw(st.integers(1, 255))]) + line[pos + 1 :]
        elif op == "delete":
            line = line[:pos] + line[pos + draw(st.integers(1, 40)) :]
        elif op == "insert":
            line = line[:pos] + draw(st.sampled_from(NASTY)) + line[pos:]
        elif op == "value" and (values := list(VALUE.finditer(line))):
            m = draw(st.sampled_from(values))
            nasty = draw(st.sampled_from(NASTY))
            quote = draw(st.sampled_from([b"", b'"', b"'"]))
            line = line[: m.start()] + quote + nasty + quote + line[m.end() :]
        elif op == "cut":
            line = line[:pos]
        elif op == "dup":
            lines.insert(k, line)
        elif op == "drop" and len(lines) > 1:
            del lines[k]
            continue
        elif op == "blank":
            lines.insert(k, draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])))
        lines[k] = line
    data = b"".join(line + b"\n" for line in lines)
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # cut the file anywhere
    return data


def _content_lines(data: bytes) -> list[bytes]:
    """The non-blank lines of a file as a reader should see them (BOM dropped)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    return [line for line in data.split(b"\n") if line.strip()]


def _valid_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and not re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufeff]", value)
    )


def _check_frame_or_error(read, path: Path):
    """Call ``read()``; a DataError must name the file. Returns the result or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read()
        except DataError as e:
            assert str(e).startswith(str(path)), f"DataError without the file name: {e}"
            return None


def _check_review_frame(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["user", "item", "rating", "timestamp"] and len(df) > 0
    assert df["rating"].dtype == np.float32 and df["timestamp"].dtype == np.int64
    assert df["rating"].between(1, 5).all()  # Amazon's stars; also rules out NaN
    assert df["timestamp"].between(FIRST_REVIEW_SECOND, END_REVIEW_SECOND - 1).all()  # 2014/2018: seconds
    assert all(map(_valid_id, df["user"])) and all(map(_valid_id, df["item"]))


# ----------------------------------------------------------------- reviews


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_seed_files_are_read(fuzz_dir):
    """The unmutated seeds are valid: the fuzzers start from inputs the readers accept."""
    for name, lines in [("r.json", REVIEW_LINES), ("r.csv", CSV_LINES)]:
        path = fuzz_dir / name
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        assert len(read_reviews(path)) == len(lines)
    path = fuzz_dir / "m.json"
    path.write_bytes(b"".join(line + b"\n" for line in META_LINES))
    assert len(read_metadata(path)) == len({_parse_oracle(line)["asin"] for line in META_LINES})


@fuzz(700)
@given(data=mutated_lines(REVIEW_LINES), gz=st.booleans(), allow_truncated=st.booleans())
def test_fuzz_json_reviews(fuzz_dir, data, gz, allow_truncated):
    path = fuzz_dir / ("reviews.json.gz" if gz else "reviews.json")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    df = _check_frame_or_error(lambda: read_reviews(path, allow_truncated=allow_truncated), path)
    if df is None:
        return
    _check_review_frame(df)
    lines = _content_lines(data)
    assert len(df) == len(lines)  # one row per non-blank line, none dropped or invented
    for row, line in zip(df.itertuples(index=False), lines, strict=True):
        rec = json.loads(line.decode("utf-8"))  # what the line says, parsed independently
        assert (row.user, row.item) == (rec["reviewerID"], rec["asin"])
        assert row.rating == np.float32(rec["overall"]) and row.timestamp == rec["unixReviewTime"]


@fuzz(300)
@given(data=mutated_lines(REVIEW_LINES), gz=st.booleans(), batch_bytes=st.integers(1, 4096))
def test_fuzz_streamed_reviews_as_read_reviews(fuzz_dir, data, gz, batch_bytes):
    """The graph stage's streaming reader (orjson batches checked column by column, a batch
    with anything odd parsed again line by line) gives read_reviews' rows, or its error."""
    path = fuzz_dir / ("streamed.json.gz" if gz else "streamed.json")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    assert_same_reviews(path, batch_bytes)


def _same_record_when_quick(text: str) -> None:
    """Where the quick metadata parse gives a record, the slow one (json, then
    ast.literal_eval) gives the very same: same types, keys in the same order."""
    fast = _fast_meta(text)
    if fast is not None:
        assert repr(fast) == repr(_slow_meta(text, "line"))


@fuzz(400)
@given(data=mutated_lines(META_LINES))
def test_fuzz_quick_metadata_parse_as_the_slow_one(data):
    for line in data.split(b"\n"):
        _same_record_when_quick(line.decode("utf-8", "replace").strip())


@fuzz(600)
@given(text=st.text(alphabet="{}[]:,'\" \\\t\r\x0c1-0.5eE+TrueFalsNontrufalsnul_xu()#é", max_size=40))
def test_fuzz_quick_metadata_tokens(text):
    """Strings of the characters that matter to the quick parse (quotes, backslashes,
    keywords, numbers, brackets): none is read otherwise than by json/literal_eval."""
    _same_record_when_quick("{'k': " + text + "}")
    _same_record_when_quick(text)


@fuzz(400)
@given(data=mutated_lines(CSV_LINES))
def test_fuzz_csv_reviews(fuzz_dir, data):
    path = fuzz_dir / "ratings.csv"
    path.write_bytes(data)
    df = _check_frame_or_error(lambda: read_reviews(path), path)
    if df is None:
        return
    _check_review_frame(df)
    lines = _content_lines(data)
    assert len(df) == len(lines) and not data[data.rfind(b"\n") + 1 :].strip()  # no cut-off last row
    for row, line in zip(df.itertuples(index=False), lines, strict=True):
        item, user, rating, ts = next(csv.reader([line.decode("utf-8").rstrip("\r")]))
        assert (row.item, row.user) == (item, user)
        assert rating.isascii() and row.rating == np.float32(float(rating))
        assert ts.isascii() and ts.isdigit() and row.timestamp == int(ts)


@pytest.fixture(scope="module")
def seed_reviews(fuzz_dir) -> tuple[bytes, pd.DataFrame]:
    whole = b"".join(line + b"\n" for line in REVIEW_LINES)
    (fuzz_dir / "seed.json").write_bytes(whole)
    return gzip.compress(whole, mtime=0), read_reviews(fuzz_dir / "seed.json")


@fuzz(300)
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=2),
    allow_truncated=st.booleans(),
)
def test_fuzz_damaged_gzip(fuzz_dir, seed_reviews, cut, flips, allow_truncated):
    """A damaged gzip gives the whole file, a prefix of complete lines (cut, allowed) or an error."""
    compressed, full = seed_reviews
    data = bytearray(compressed)
    for at, mask in flips:
        data[at % len(data)] ^= mask
    data = data[:cut]
    path = fuzz_dir / "damaged.json.gz"
    path.write_bytes(bytes(data))
    df = _check_frame_or_error(lambda: read_reviews(path, allow_truncated=allow_truncated), path)
    if df is None:
        return
    _check_review_frame(df)
    if not allow_truncated:  # the CRC protects the content: only unchecked header bytes may differ
        pd.testing.assert_frame_equal(df, full)
    else:  # cut, flipped or both: never a line the original does not have (see the gzip section below)
        pd.testing.assert_frame_equal(df, full.iloc[: len(df)])


# ----------------------------------------------------------------- gzip: corruption vs a clean cut
# Seeded damage to real complete gzips (real compressed text: how far garbage decodes depends
# on it, so these tests skip where ../shared is absent). The property: with
# allow_truncated=True, Lines either refuses the file or yields only lines of the original, in
# order from its start. A clean cut keeps exactly what the documented rule says (worked out
# below with zlib alone).


def gzip_rule(data: bytes) -> list[bytes] | None:
    """What the documented rule does with a one-member gzip whose stream ends early, worked out
    with zlib alone: None (refused as corrupt) when its last 4 bytes read as this stream's
    trailer length within TRAILER_TOLERANCE of the size decoded, else the complete lines
    decoded from its bytes before the last TRUNCATION_MARGIN (counted back from a final run
    of one repeated byte). Raises zlib.error for bad deflate data (refused too)."""
    decoded = zlib.decompressobj(wbits=31).decompress(data)
    gap = (int.from_bytes(data[-4:], "little") - len(decoded)) % 2**32
    if len(data) >= 18 and min(gap, 2**32 - gap) <= lines_module.TRAILER_TOLERANCE:
        return None
    end = len(data.rstrip(data[-1:])) - lines_module.TRUNCATION_MARGIN
    safe = zlib.decompressobj(wbits=31).decompress(data[: max(end, 0)])
    return safe[: safe.rfind(b"\n") + 1].splitlines(keepends=True)


def read_allowing_cut(path: Path) -> tuple[list[bytes] | None, str]:
    """The lines Lines yields with allow_truncated=True, or None and the DataError's message."""
    lines = Lines(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedFileWarning)
        try:
            got = [line for _, line in lines]
            lines.check_complete(allow_truncated=True)
        except DataError as e:
            return None, str(e)
    return got, "cut short" if lines.truncated else "complete"


def _damage(rng: random.Random, data: bytes) -> bytes:
    """One seeded corruption: a flipped bit or byte, a zeroed or random run of 1-64 bytes (three
    times in four near the end: log-uniform distance), or a zeroed or random tail."""
    kind = rng.choice(["bit", "byte", "zero", "random", "zero", "random", "zero tail", "random tail"])
    size = len(data)
    if kind.endswith("tail"):  # the last 1 .. size/2 bytes, log-uniform
        at = size - max(1, int(2 ** rng.uniform(0, math.log2(size // 2))))
    elif rng.random() < 0.75:
        at = size - min(int(2 ** rng.uniform(0, math.log2(size - 2))), size - 2)
    else:
        at = rng.randrange(2, size)  # (bytes 0-1, the gzip magic: then it is no gzip at all)
    if kind == "bit":
        patch = bytes([data[at] ^ 1 << rng.randrange(8)])
    elif kind == "byte":
        patch = bytes([data[at] ^ rng.randrange(1, 256)])
    else:
        n = size - at if kind.endswith("tail") else min(rng.randint(1, 64), size - at)
        patch = rng.randbytes(n) if kind.startswith("random") else bytes(n)
    return data[:at] + patch + data[at + len(patch) :]


@pytest.mark.parametrize(
    "rel, n", [("2018/gift_cards/Gift_Cards_5.json.gz", 300), ("2018/all_beauty/All_Beauty_5.json.gz", 80)]
)
def test_gzip_corruption_never_yields_an_altered_line(amazon_real, tmp_path, rel, n):
    data = (amazon_real / rel).read_bytes()
    original = zlib.decompress(data, wbits=31).splitlines(keepends=True)
    path = tmp_path / "damaged.json.gz"
    rng = random.Random(rel)
    outcomes = collections.Counter()
    for _ in range(n):
        damaged = _damage(rng, data)
        path.write_bytes(damaged)
        got, how = read_allowing_cut(path)
        if got is None:
            outcomes["trailer" if "reads as its own trailer" in how else "refused"] += 1
            continue
        outcomes[how] += 1
        assert got == original[: len(got)], f"an altered line was kept ({how})"
    # the seeded damage reaches both rules: streams that end early are kept as cut (zero
    # tails: a preallocated download) or refused by the trailer test
    assert outcomes["cut short"] > 0 and outcomes["trailer"] > 0, outcomes


def _with_known_final_block(lines: list[bytes], k: int = 40) -> tuple[bytes, int]:
    """A gzip whose final deflate block holds the last ``k`` lines and starts at a known byte:
    a full flush before them ends the block before on a byte boundary (then the flush's empty
    stored block, 3 header bits padded to a byte and ``00 00 ff ff``)."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    head = c.compress(b"".join(lines[:-k])) + c.flush(zlib.Z_FULL_FLUSH)
    return head + c.compress(b"".join(lines[-k:])) + c.flush(), len(head)


@pytest.mark.parametrize("margin", ["documented", "1 KiB"])
def test_gzip_damage_before_the_final_block_is_refused(amazon_real, tmp_path, monkeypatch, margin):
    """Every bit flipped, one at a time, in the 8 bytes before the final block (the end of
    the block before it: its end-of-block code) and the first 8 bytes of the final block (its
    BFINAL, BTYPE and code-length header). A damaged end-of-block code makes the decoder read
    on with the old codes, decoding garbage without error to the end of the file: that used
    to be kept as "ends early". With the margin cut to 1 KiB, the trailer test alone must
    refuse it."""
    if margin == "1 KiB":
        monkeypatch.setattr(lines_module, "TRUNCATION_MARGIN", 1024)
    gift_cards = (amazon_real / "2018/gift_cards/Gift_Cards_5.json.gz").read_bytes()
    lines = zlib.decompress(gift_cards, wbits=31).splitlines(keepends=True)
    data, final = _with_known_final_block(lines)
    assert data[final - 4 : final] == b"\x00\x00\xff\xff" and data[final] & 0b111 == 0b101  # BFINAL, dynamic
    path = tmp_path / "final.json.gz"
    outcomes = collections.Counter()
    for bit in range(-64, 64):
        damaged = bytearray(data)
        damaged[final + bit // 8] ^= 1 << bit % 8
        path.write_bytes(bytes(damaged))
        got, how = read_allowing_cut(path)
        if got is None:
            outcomes["trailer" if "reads as its own trailer" in how else "refused"] += 1
            continue
        outcomes[how] += 1  # "complete": a flipped padding bit of the flush, which nothing reads
        assert got == lines[: len(got)], f"bit {bit}: an altered line was kept ({how})"
    assert outcomes["trailer"] > 0 and outcomes["cut short"] == 0, outcomes


@pytest.mark.parametrize(
    "rel, n",
    [("2018/all_beauty/All_Beauty_5.json.gz", 40), ("2014/digital_music/reviews_Digital_Music_5.head.json.gz", 10)],
)
def test_gzip_clean_cuts_keep_the_lines_before_the_margin(amazon_real, tmp_path, rel, n):
    """A cut anywhere (and a cut padded with zeros to the full size) keeps exactly the lines
    the rule says: those decoded before the last TRUNCATION_MARGIN bytes."""
    data = (amazon_real / rel).read_bytes()
    original = zlib.decompress(data, wbits=31).splitlines(keepends=True)
    path = tmp_path / "cut.json.gz"
    rng = random.Random(rel)
    accepted = 0
    for _ in range(n):
        at = rng.randrange(1, len(data))
        path.write_bytes(data[:at])
        got, how = read_allowing_cut(path)
        want = gzip_rule(data[:at])
        if want is not None:  # (None: refused by the trailer test, by chance about 1 in 33,000)
            assert (got, how) == (want, "cut short") and got == original[: len(got)]
            accepted += 1
        else:
            assert got is None
        # the same cut padded with zeros to the full size (a preallocated download): the zeros
        # are not counted as data, so at most the same lines are kept, or the file is refused
        path.write_bytes(data[:at] + bytes(len(data) - at))
        padded, how = read_allowing_cut(path)
        assert padded is None or (padded == original[: len(padded)] and len(padded) <= len(got or []))
    assert accepted == n  # the seeded cuts: none fell within the trailer tolerance


# ----------------------------------------------------------------- metadata


def _parse_oracle(line: bytes) -> dict:
    text = line.decode("utf-8").strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return ast.literal_eval(text)


@fuzz(500)
@given(data=mutated_lines(META_LINES), gz=st.booleans(), pick=st.lists(st.integers(0, 9), max_size=4))
def test_fuzz_metadata(fuzz_dir, data, gz, pick):
    path = fuzz_dir / ("meta.json.gz" if gz else "meta.json")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    full = _check_frame_or_error(lambda: read_metadata(path), path)
    wanted = {_parse_oracle(META_LINES[i % len(META_LINES)])["asin"] for i in pick} | {"B0DECOY001"}
    part = _check_frame_or_error(lambda: read_metadata(path, asins=wanted), path)
    for frame in (full, part):
        if frame is None:
            continue
        assert list(frame.columns) == ["asin", "title", "brand", "categories", "description", "image_url"]
        assert frame["asin"].is_unique and all(map(_valid_id, frame["asin"]))
        for col in ("title", "brand", "categories", "description"):
            assert all(isinstance(v, str) and v == v.encode("utf-8").decode() for v in frame[col])
        assert all(v is None or (isinstance(v, str) and v) for v in frame["image_url"])
    if full is None:
        assert part is None or set(part["asin"]) <= wanted
        return
    # every line was a record: the asins are the records' own, first copy kept
    records = [_parse_oracle(line) for line in _content_lines(data)]
    asins = list(dict.fromkeys(r["asin"].strip() for r in records))
    assert full["asin"].tolist() == asins
    first = {}
    for r in records:
        first.setdefault(r["asin"].strip(), r)
    for asin, title in zip(full["asin"], full["title"], strict=True):
        t = first[asin].get("title")
        assert title == (clean_text(t) if isinstance(t, str) else clean_text(" ".join(t or [])))
    assert_prefilter_keeps_exactly(part, full, wanted)


# ----------------------------------------------------------------- MMRec .inter


@st.composite
def inter_files(draw) -> bytes:
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    n_rows = draw(st.integers(max(n_users, n_items), 14))
    users = [i % n_users for i in range(n_rows)]  # every id occurs: dense, as MMRec writes them
    items = draw(st.permutations([i % n_items for i in range(n_rows)]))
    header = ["userID", "itemID", "rating", "timestamp", "x_label"]
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    rows = []
    for u, i in zip(users, items, strict=True):
        cell = {
            "userID": str(u),
            "itemID": str(i),
            "x_label": str(draw(st.integers(0, 2))),
            "rating": draw(st.sampled_from(["5.0", "4", "1.5", "3e0", "0.0"])),
            "timestamp": str(draw(st.sampled_from([0, 1357776000, 1658002729837, 2**62]))),
        }
        rows.append([cell[c] for c in header])
    lines = ["\t".join(header).encode()] + ["\t".join(r).encode() for r in rows]
    if draw(st.integers(0, 3)) == 0:  # a header mutation: duplicate, drop or rename a column
        op = draw(st.sampled_from(["dup", "drop", "rename"]))
        col = draw(st.integers(0, 4))
        names = lines[0].split(b"\t")
        if op == "dup":
            names[col] = names[(col + 1) % 5]
        elif op == "drop":
            del names[col]
        else:
            names[col] = names[col] + b".1"
        lines[0] = b"\t".join(names)
    return draw(mutated_lines(lines)) if draw(st.integers(0, 4)) else b"".join(line + b"\n" for line in lines)


@pytest.fixture(scope="module")
def small_chunks():
    """Check .inter cells 4 rows at a time, so that the fuzzed files span several chunks."""
    from sea.data import mmrec

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmrec, "_CHUNK_ROWS", 4)
        yield


@fuzz(700)
@given(data=inter_files())
def test_fuzz_inter(fuzz_dir, small_chunks, data):
    path = fuzz_dir / "x.inter"
    path.write_bytes(data)
    df = _check_frame_or_error(lambda: read_inter(path), path)
    if df is None:
        return
    assert df.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64", "category"]
    for col in ("user", "item"):
        assert (df[col] >= 0).all() and df[col].max() + 1 <= 2 * df[col].nunique()
    assert np.isfinite(df["rating"]).all() and (df["timestamp"] >= 0).all()
    # the same bytes through the csv module: every value is the file's own
    text = data.decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True) if r]
    header, rows = rows[0], rows[1:]
    assert len(rows) == len(df)
    col = {name: [r[header.index(name)] for r in rows] for name in header}
    assert df["user"].tolist() == [int(v) for v in col["userID"]]
    assert df["item"].tolist() == [int(v) for v in col["itemID"]]
    assert df["split"].cat.codes.tolist() == [int(v) for v in col["x_label"]]
    if "rating" in col:
        assert df["rating"].tolist() == [float(np.float32(float(v))) for v in col["rating"]]
    if "timestamp" in col:
        assert df["timestamp"].tolist() == [int(v.split(".")[0]) for v in col["timestamp"]]


# ----------------------------------------------------------------- i_id_mapping.csv


@st.composite
def mapping_files(draw) -> tuple[bytes, int]:
    m = draw(st.integers(1, 8))
    order = draw(st.permutations(range(m)))
    lines = [b"asin\titemID"] + [f"B{i:09d}\t{i}".encode() for i in order]
    data = draw(mutated_lines(lines)) if draw(st.integers(0, 3)) else b"".join(line + b"\n" for line in lines)
    return data, draw(st.integers(1, m))


@fuzz(400)
@given(file=mapping_files())
def test_fuzz_item_mapping(fuzz_dir, file):
    data, n_items = file
    folder = fuzz_dir / "mapping"
    folder.mkdir(exist_ok=True)
    path = folder / "i_id_mapping.csv"
    path.write_bytes(data)
    asins = _check_frame_or_error(lambda: read_item_ids(folder, n_items), path)
    if asins is None:
        return
    assert len(asins) == n_items and asins.is_unique and all(map(_valid_id, asins))
    rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter="\t", strict=True) if r]
    header, rows = rows[0], rows[1:]
    by_id = {int(r[header.index("itemID")]): r[header.index("asin")] for r in rows}
    assert sorted(by_id) == list(range(len(rows)))  # a bijection over 0..m-1
    assert asins.tolist() == [by_id[i] for i in range(n_items)]


# ----------------------------------------------------------------- .npy features

FLOAT_DTYPES = ["<f2", "<f4", "<f8", ">f8", ">f4"]
OTHER_DTYPES = ["<c8", "<i4", "<i8", "|b1", "<U3", "|O", "<f4,<f4", "<u2"]


@st.composite
def npy_files(draw) -> tuple[np.ndarray, int, bool]:
    """An array (mostly a float matrix), the rows to ask for and whether extra rows are fine."""
    often = st.sampled_from([True, True, True, False])  # mostly the usable case
    dtype = np.dtype(draw(st.sampled_from(FLOAT_DTYPES if draw(often) else OTHER_DTYPES)))
    rows = draw(st.integers(1, 5) if draw(often) else st.integers(0, 5))
    dim = draw(st.integers(1, 4) if draw(often) else st.integers(0, 4))
    shape = (rows, dim) if draw(often) else draw(st.sampled_from([(rows,), (rows, dim, 1), ()]))
    size = int(np.prod(shape))
    value = (
        st.floats(-1e3, 1e3)
        if draw(often)
        else st.one_of(st.floats(width=64), st.sampled_from([0.0, 1e39, -3e38, 1e-46, np.nan, np.inf]))
    )
    values = draw(st.lists(value, min_size=size, max_size=size))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = np.array(values, dtype=np.float64).reshape(shape)
        if dtype.kind in "fc":
            x = base.astype(dtype)
        elif dtype.fields is not None:
            x = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "O":
            x = base.astype(object)
        else:
            x = np.nan_to_num(base).clip(-1e6, 1e6).astype(dtype)
    if draw(st.booleans()) and x.ndim == 2:
        x = np.asfortranarray(x)
    n_rows = rows if draw(often) else draw(st.integers(1, 6))
    return x, max(n_rows, 1), draw(st.booleans())


@fuzz(600)
@given(
    file=npy_files(),
    damage=st.one_of(
        st.none(),
        st.none(),
        st.tuples(st.sampled_from(["flip", "cut", "append"]), st.integers(0, 400), st.integers(1, 255)),
    ),
)
def test_fuzz_npy(fuzz_dir, file, damage):
    x, n_rows, extra_rows = file
    path = fuzz_dir / "image_feat.npy"
    np.save(path, x, allow_pickle=True)
    if damage is not None:
        op, at, mask = damage
        raw = bytearray(path.read_bytes())
        if op == "flip":
            raw[at % len(raw)] ^= mask
        elif op == "cut":
            raw = raw[: at % len(raw)]
        else:
            raw += bytes([mask]) * (at % 9 + 1)
        path.write_bytes(bytes(raw))
    got = _check_frame_or_error(lambda: load_features(path, n_rows, "image", extra_rows=extra_rows), path)
    if got is not None:
        assert type(got) is np.ndarray and got.dtype == np.float32 and got.flags.c_contiguous
        assert got.ndim == 2 and got.shape[0] == n_rows and got.shape[1] >= 1
        assert np.isfinite(got).all() and got.any()
    if damage is not None:
        return
    # an undamaged file: the outcome is known in advance
    with np.errstate(all="ignore"):
        usable = (
            x.dtype.kind == "f"
            and x.ndim == 2
            and x.shape[1] >= 1
            and (x.shape[0] >= n_rows if extra_rows else x.shape[0] == n_rows)
        )
        want = x[:n_rows].astype(np.float32) if usable else None
    if usable and np.isfinite(want).all() and want.any():
        assert got is not None, "a valid feature file was refused"
        np.testing.assert_array_equal(got, want)
        assert float(np.abs(want).max()) <= FLOAT32_MAX
    else:
        assert got is None


def assert_prefilter_keeps_exactly(part: pd.DataFrame | None, full: pd.DataFrame, wanted) -> None:
    """The metadata pre-filter (asin / parent_asin) never drops a wanted record, nor keeps
    another: reading with ``wanted`` equals reading everything and selecting."""
    expected = full[full["asin"].isin(wanted)].reset_index(drop=True)
    if len(expected) == 0:
        assert part is None
    else:
        assert part is not None
        pd.testing.assert_frame_equal(part.reset_index(drop=True), expected, check_dtype=False)
