"""The streamed graph path (reviews into int32 codes, then numpy dedupe, k-core, re-index and
split) against the in-memory one it replaces (read_reviews, dedupe, k_core, reindex, split on
pandas frames of raw ids), which the tests keep as the reference: same rows, same bytes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sea import artifacts
from sea.config import load_params
from sea.data import amazon
from sea.data.amazon import (
    MetadataRecords,
    _fast_meta,
    _slow_meta,
    item_sentence,
    read_metadata,
    read_reviews,
    scan_reviews,
)
from sea.data.catalog import DatasetConfig, resolve
from sea.data.graph import EmptyGraphError, GraphConfig, dedupe, k_core, reindex, reviews_graph
from sea.data.items import item_table
from sea.data.split import split
from sea.errors import ConfigError, DataError
from sea.net.urls import join_link

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
TYPES = {"user": "int32", "item": "int32", "rating": "float32", "timestamp": "int64"}


def old_graph(path: Path, k: int = 5, method: str = "mmrec", seed: int = 999, **read) -> tuple:
    """The graph stage's in-memory path as it was: frames of raw ids."""
    raw = read_reviews(path, **read)
    unique = dedupe(raw)
    core, users, items = reindex(k_core(unique, k))
    inter = split(core, method, seed)[["user", "item", "rating", "timestamp", "split"]].astype(TYPES)
    stats = {
        "raw": {"reviews": len(raw), "users": int(raw["user"].nunique()), "items": int(raw["item"].nunique())},
        "deduplicated": {"interactions": len(unique), "duplicates_dropped": len(raw) - len(unique)},
    }
    return inter, users, items, stats


def parquet_bytes(df: pd.DataFrame, tmp_path: Path) -> bytes:
    path = tmp_path / "out.parquet"
    artifacts.write_parquet(df, path)
    return path.read_bytes()


def assert_same_graph(path: Path, tmp_path: Path, k: int = 5, method: str = "mmrec", batch_bytes: int = 64 << 20):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a truncated file warns on both paths
        inter, users, items, stats = old_graph(path, k, method, allow_truncated=True)
        new_inter, new_users, new_items, new_stats = reviews_graph(
            path, k, method, 999, allow_truncated=True, batch_bytes=batch_bytes
        )
    pd.testing.assert_frame_equal(new_inter.astype(TYPES), inter)
    assert parquet_bytes(new_inter.astype(TYPES), tmp_path) == parquet_bytes(inter, tmp_path)
    assert list(new_users) == list(users) and list(new_items) == list(items)
    assert new_stats == stats


def assert_same_reviews(path: Path, batch_bytes: int) -> None:
    """scan_reviews gives read_reviews' rows (decoded from the codes), or its very error."""
    try:
        expected = read_reviews(path)
    except DataError as e:
        with pytest.raises(DataError) as got:
            scan_reviews(path, batch_bytes=batch_bytes)
        assert str(got.value) == str(e)
        return
    codes = scan_reviews(path, batch_bytes=batch_bytes)
    assert codes.user_ids.take(codes.user).to_pylist() == expected["user"].tolist()
    assert codes.item_ids.take(codes.item).to_pylist() == expected["item"].tolist()
    np.testing.assert_array_equal(codes.rating, expected["rating"].to_numpy())
    np.testing.assert_array_equal(codes.timestamp, expected["timestamp"].to_numpy())


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("method", ["mmrec", "temporal", "leave_one_out"])
@pytest.mark.parametrize("batch_bytes", [64 << 20, 1500])
def test_sample_same_graph(tmp_path, method, batch_bytes):
    assert_same_graph(SAMPLE / "reviews_Sample_5.json.gz", tmp_path, method=method, batch_bytes=batch_bytes)


@pytest.mark.parametrize(
    "rel",
    [
        "2014/digital_music/reviews_Digital_Music_5.head.json.gz",
        "2014/digital_music/reviews_Digital_Music_5.truncated.json.gz",
        "2018/gift_cards/Gift_Cards_5.json.gz",
        "2018/all_beauty/All_Beauty_5.json.gz",
        "2018/magazine_subscriptions/Magazine_Subscriptions.csv",
        "2023/all_beauty/5core/rating_only/All_Beauty.csv.gz",
    ],
)
def test_real_dumps_same_graph(amazon_real, tmp_path, rel):
    for k, method, batch_bytes in ((5, "mmrec", 64 << 20), (2, "temporal", 20_000)):
        assert_same_graph(amazon_real / rel, tmp_path, k, method, batch_bytes)


def test_stage_on_the_sample_writes_the_old_bytes(tmp_path):
    """pipeline/graph.py, run as DVC runs it, writes the bytes of the in-memory path."""
    raw = tmp_path / "data" / "raw" / "sample"
    raw.mkdir(parents=True)
    for f in ("reviews_Sample_5.json.gz", "meta_Sample.json.gz"):
        shutil.copy(SAMPLE / f, raw / f)
    params = load_params(ROOT / "params.yaml")
    params["graph"]["batch_mb"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, str(ROOT / "pipeline" / "graph.py")], cwd=tmp_path, env=env, check=True)
    inter, users, asins, _ = old_graph(raw / "reviews_Sample_5.json.gz")
    meta = read_metadata(raw / "meta_Sample.json.gz", asins=set(asins))
    meta_url = {d.role: d for d in resolve(DatasetConfig.from_dict(params["dataset"], "dataset"), None)}["meta"].url
    out = tmp_path / "data" / "processed"
    assert (out / "interactions.parquet").read_bytes() == parquet_bytes(inter, tmp_path)
    assert (out / "users.parquet").read_bytes() == parquet_bytes(old_user_table(users), tmp_path)
    assert (out / "items.parquet").read_bytes() == parquet_bytes(old_item_table(asins, meta, meta_url), tmp_path)


def old_user_table(users) -> pd.DataFrame:
    """The users table by its definition, as the stage built it from Python strings."""
    return pd.DataFrame({"user": np.arange(len(users), dtype="int32"), "reviewer_id": [str(u) for u in users]})


def old_item_table(asins, meta: pd.DataFrame, meta_url: str | None) -> pd.DataFrame:
    """The item table by its definition, from read_metadata's frame, as the stage built it:
    each item's sentence ("" without a record) and its URL resolved against the dump's."""
    by_asin = {row[0]: row for row in meta.itertuples(index=False, name=None)}
    text, url = [], []
    for a in asins:
        _, title, brand, categories, description, link = by_asin.get(a, (a, "", "", "", "", None))
        text.append(item_sentence(title, brand, categories, description))
        url.append((join_link(meta_url, link) if meta_url else link) if isinstance(link, str) and link else None)
    return pd.DataFrame(
        {"item": np.arange(len(asins), dtype="int32"), "asin": [str(a) for a in asins], "text": text, "image_url": url}
    )


@pytest.mark.parametrize(
    "rel",
    [
        "2014/digital_music/meta_Digital_Music.head.json.gz",
        "2018/gift_cards/meta_Gift_Cards.json.gz",
        "2023/health_and_personal_care/meta_Health_and_Personal_Care.subset1001.jsonl.gz",
    ],
)
def test_streamed_item_table_is_the_frame_one_on_real_metadata(amazon_real, tmp_path, rel):
    """The item table built from streamed records (Arrow, a few bytes over the text) has the
    bytes of the one built from read_metadata's frame: for every product in the file, and
    for half of them plus asins the file lacks (empty text, no URL), with a relative link
    base and with none."""
    path = amazon_real / rel
    meta = read_metadata(path)
    wanted = sorted(set(meta["asin"][::2]) | {"ZZ-NOT-THERE-1", "ZZ-NOT-THERE-2"})
    for asins in (sorted(meta["asin"]), wanted):
        for base in (None, "data/raw/x/meta.json.gz"):
            records = MetadataRecords(path, asins=set(asins))
            items, with_meta = item_table(pd.Index(asins), records, base)
            expected = old_item_table(asins, meta, base)
            assert parquet_bytes(items, tmp_path) == parquet_bytes(expected, tmp_path)
            assert with_meta == int(meta["asin"].isin(asins).sum())


def test_streamed_records_are_read_metadatas_rows(amazon_real):
    """MetadataRecords yields read_metadata's rows, one at a time, and counts its duplicates."""
    path = amazon_real / "2018/magazine_subscriptions/meta_Magazine_Subscriptions.json.gz"
    records = MetadataRecords(path)
    rows = list(records)
    meta = read_metadata(path)
    assert rows == list(meta.itertuples(index=False, name=None))
    assert records.duplicates == meta.attrs["duplicate_asins"] > 0


@pytest.mark.parametrize(
    "rel",
    [
        "2014/digital_music/meta_Digital_Music.head.json.gz",
        "2018/gift_cards/meta_Gift_Cards.json.gz",
        "2018/magazine_subscriptions/meta_Magazine_Subscriptions.json.gz",
        "2023/health_and_personal_care/meta_Health_and_Personal_Care.subset1001.jsonl.gz",
    ],
)
def test_quick_metadata_parse_on_real_lines(amazon_real, rel):
    """Every line of the real metadata files: the quick parse (orjson, 2014 literals made
    JSON) gives what json/ast.literal_eval give, and takes nearly every line."""
    texts = [line.decode().strip() for line in gzip.open(amazon_real / rel)]
    quick = 0
    for text in texts:
        fast = _fast_meta(text)
        if fast is not None:
            assert repr(fast) == repr(_slow_meta(text, rel))
            quick += 1
    assert quick >= 0.9 * len(texts)


@pytest.mark.parametrize(
    "text",
    [
        r"""{'a': 1, 'b': [True, None, False], 'c': "Men's", 'd': {'x': 1.5e3, 'y': -0, 'z': -0.0}}""",
        r"""{'a': true}""",
        r"""{'a': null, 'b': 'null'}""",
        r"""{'a': 'b' 'c'}""",
        r"""{'a': 1,}""",
        r"""{1: 2}""",
        r"""{'a': 12345678901234567890123}""",
        r"""{"a": true, "b": null, "c": 1e400, "d": NaN}""",
        r"""{'a': u'x'}""",
        r"""{'a': (1, 2)}""",
        r"""{'a': {1, 2}}""",
        "{'a': '\t'}",
        r"""{'a':.5, 'b': 5., 'c': +1, 'd': 0x1f, 'e': 1_0, 'f': 01}""",
        r"""{'a': 1e400}""",
        r"""{'a': 'it\'s', 'b': 'x\\y', 'c': 'q\"r', 'd': 'q"r', 'e': '\xe9\n\t\r'}""",
        r"""{'a': '\\x41', 'b': '\u00e9', 'c': '\ud83d\ude00', 'd': '\x4', 'e': '\N{BULLET}', 'f': '\q'}""",
        r"""{'a': 1} # note""",
        r"""{'a': '''x'''}""",
        "{'a': 1}\x0c",
        "{'a': '\x00'}",
        r"""{'a': 'x', 'a': 'y', 'b': 2}""",
        r"""[{'a': 1}]""",
    ],
)
def test_quick_metadata_parse_edge_cases(text):
    """Python literals JSON reads otherwise, or not at all: the quick parse gives what
    json/ast.literal_eval give, or steps aside."""
    fast = _fast_meta(text)
    if fast is not None:
        assert repr(fast) == repr(_slow_meta(text, "line"))


# --------------------------------------------------------------------------- generated files


def review_line(user: str, item: str, rating, ts, release: str = "2014") -> bytes:
    keys = ("reviewerID", "asin", "overall", "unixReviewTime")
    if release == "2023":
        keys = ("user_id", "parent_asin", "rating", "timestamp")
    return json.dumps(dict(zip(keys, (user, item, rating, ts))), ensure_ascii=False).encode() + b"\n"


def awkward_dump(path: Path, seed: int, n: int = 3000) -> Path:
    """Seeded reviews that take every branch: duplicate pairs across batches with equal and
    unequal times, non-ASCII ids (sorted by code point), whole-number float times and int
    ratings (the per-line path), blank lines, and a few 2023 lines (milliseconds)."""
    rng = np.random.default_rng(seed)
    users = [f"U{j:03d}" for j in range(60)] + ["é", "Z", "a", "日本", "Ω1", "\U0001f600"]
    items = [f"I{j:02d}" for j in range(25)] + ["ß", "b", "İ"]
    lines = []
    for _ in range(n):
        u, i = users[rng.integers(len(users))], items[rng.integers(len(items))]
        ts = int(rng.integers(1_300_000_000, 1_300_000_050))  # narrow: many equal times
        rating = float(rng.integers(1, 6))
        kind = rng.integers(50)
        if kind == 0:
            lines.append(b"\n")
        if kind == 1:
            lines.append(review_line(u, i, int(rating), float(ts)))
        elif kind == 2:
            lines.append(review_line(u, i, rating, ts * 1000, "2023"))
        else:
            lines.append(review_line(u, i, rating, ts))
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    return path


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch_bytes", [1, 700, 64 << 20])
def test_awkward_dump_same_graph(tmp_path, seed, batch_bytes):
    path = awkward_dump(tmp_path / "reviews.json.gz", seed)
    assert_same_reviews(path, batch_bytes)
    for k in (1, 3, 8):
        assert_same_graph(path, tmp_path, k, "mmrec", batch_bytes)


GOOD = review_line("A1", "B1", 5.0, 1_300_000_000)
BAD_LINES = [
    b"not json\n",
    b"[1, 2]\n",
    b'"reviewerID"\n',
    b'{"reviewerID": "A1", "asin": "B1", "overall": 5.0}\n',
    b'{"asin": "B1", "overall": 5.0, "unixReviewTime": 1300000000}\n',
    review_line("", "B1", 5.0, 1_300_000_000),
    review_line("  ", "B1", 5.0, 1_300_000_000),
    review_line("A\t1", "B1", 5.0, 1_300_000_000),
    review_line("A1", "B\u200e\x85", 5.0, 1_300_000_000),
    b'{"reviewerID": "\\ud800", "asin": "B1", "overall": 5.0, "unixReviewTime": 1300000000}\n',
    review_line(7, "B1", 5.0, 1_300_000_000),
    review_line("A1", "B1", True, 1_300_000_000),
    review_line("A1", "B1", "5", 1_300_000_000),
    review_line("A1", "B1", 0.5, 1_300_000_000),
    review_line("A1", "B1", 5.5, 1_300_000_000),
    b'{"reviewerID": "A1", "asin": "B1", "overall": NaN, "unixReviewTime": 1300000000}\n',
    b'{"reviewerID": "A1", "asin": "B1", "overall": 1e400, "unixReviewTime": 1300000000}\n',
    review_line("A1", "B1", None, 1_300_000_000),
    review_line("A1", "B1", 5.0, 1_300_000_000.5),
    review_line("A1", "B1", 5.0, 1_300_000_000_000),
    review_line("A1", "B1", 5.0, -1),
    review_line("A1", "B1", 5.0, 2**64),
    review_line("A1", "B1", 5.0, 10**30),
    review_line("A1", "B1", 5.0, 1_300_000_000, "2023"),
    review_line("A1", "B1", 5.0, "1300000000"),
    b"\xff\xfe\n",
]
ACCEPTED_LINES = [
    review_line("A1", "B1", 5, 1_300_000_000),
    review_line("A1", "B1", 5.0, 1_300_000_000.0),
    b'{"reviewerID": "A1", "reviewerID": "A2", "asin": "B1", "overall": 5.0, "unixReviewTime": 1300000000}\n',
    b'  {"reviewerID": "A1", "asin": "B1", "overall": 4.0, "unixReviewTime": 1300000000}  \r\n',
    b'{"reviewerID": "A1", "user_id": "X", "asin": "B1", "overall": 4.0, "unixReviewTime": 1300000000}\n',
    review_line(" A1 ", "B\u00e91", 1.0, 1_300_000_000),
    review_line("A1", "B1", 3.0, 1_300_000_000_000, "2023"),
]


@pytest.mark.parametrize("odd", BAD_LINES + ACCEPTED_LINES)
def test_odd_line_as_the_per_line_reader(tmp_path, odd):
    """Across batch boundaries, a line the per-line reader refuses gives its very message
    (file and 1-based line); one it accepts gives its values."""
    for where in (1, 137, 400):
        lines = [GOOD] * 400
        lines[where - 1] = odd
        path = tmp_path / "reviews.json"
        path.write_bytes(b"".join(lines))
        for batch_bytes in (1, 1000, 64 << 20):
            assert_same_reviews(path, batch_bytes)
        if odd in BAD_LINES:
            with pytest.raises(DataError, match=f"reviews.json:{where}: "):
                scan_reviews(path, batch_bytes=1000)


@pytest.mark.parametrize("bad_first", [True, False])
def test_over_long_line_after_a_bad_one(tmp_path, bad_first):
    """Reading stops at a line over the length limit; a bad line before it, in the same
    batch, is still the error reported, as by the per-line reader."""
    lines = [GOOD] * 30
    lines[19] = b'{"x": "' + b"y" * (1 << 20) + b'"}\n'
    if bad_first:
        lines[9] = b"not json\n"
    path = tmp_path / "reviews.json"
    path.write_bytes(b"".join(lines))
    for batch_bytes in (1, 500, 64 << 20):
        assert_same_reviews(path, batch_bytes)
    with pytest.raises(DataError, match=f"reviews.json:{10 if bad_first else 20}: "):
        scan_reviews(path)


def test_empty_core_names_the_file(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_bytes(review_line("A1", "B1", 5.0, 1_300_000_000) + review_line("A2", "B2", 5.0, 1_300_000_000))
    with pytest.raises(EmptyGraphError) as old:
        k_core(dedupe(read_reviews(path)), 5)
    with pytest.raises(EmptyGraphError) as new:
        reviews_graph(path, 5, "mmrec", 0)
    assert str(new.value) == f"{path}: {old.value}"


@pytest.mark.parametrize("value", [0, -1, 4097, "64"])
def test_batch_mb_is_checked(value):
    with pytest.raises(ConfigError, match=r"params.yaml \[graph(\.batch_mb)?\]: .*batch_mb|batch_mb"):
        GraphConfig.from_dict({"batch_mb": value}, "graph")


# --------------------------------------------------------------------------- metadata pre-filter


def wanted_by_definition(line: bytes, asins) -> bool:
    """The pre-filter as its docstring defines it: every `asin` found by a scan of the line,
    then the escapes and concatenations searched for at every byte."""
    from sea.data import amazon2023

    w = amazon2023.wanted_2023(line, asins)
    if w is not None:
        return w
    values = amazon._ASIN_KEY.findall(line)
    if not values or len(values) != line.count(b"asin") or amazon._HIDDEN_KEY.search(line):
        return True
    return any(v.decode("utf-8", "replace").strip() in asins for _, v in values)


def hostile_meta_lines(seed: int, n: int = 20_000) -> list[bytes]:
    """Seeded lines built from the pieces the pre-filter looks at: keys written plainly, with
    escapes or as adjacent literals, quoted "a"/"as"/"asi", backslashes, values that hold
    "asin", odd spacing and endings."""
    rng = np.random.default_rng(seed)
    pieces = [
        b"{",
        b"}",
        b", ",
        b": ",
        b"'asin'",
        b'"asin"',
        b"asin",
        b"'B01'",
        b'"B02"',
        b"'B0 1'",
        b"'x'",
        b"'as' 'in'",
        b"'a' 'sin'",
        b"'asi' u'n'",
        b'"as""in"',
        b"'\\x61sin'",
        b'"\\u0061sin"',
        b"\\",
        b"'a'",
        b"'as\"",
        b"\"asi'",
        b"'also_bought'",
        b"'title'",
        b"'asin': 'B03'",
        b"'asin':'B04'}",
        b" ",
        b"\t",
        b"'B05' 'X'",
        b"'asinine'",
        b"'parent_asin'",
        b"\n",
        b"\xc3\xa9",
        b"''",
    ]
    return [b"".join(pieces[j] for j in rng.integers(len(pieces), size=rng.integers(1, 14))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_quick_prefilter_is_its_definition_on_hostile_lines(seed):
    asins = {"B01", "B03", "B0 1"}
    lines = hostile_meta_lines(seed)
    got = [amazon._wanted(line, asins) for line in lines]
    assert got == [wanted_by_definition(line, asins) for line in lines]
    assert 0 < sum(got) < len(got)  # both answers occur


def test_quick_prefilter_is_its_definition_on_real_lines(amazon_real):
    for rel in (
        "2014/digital_music/meta_Digital_Music.head.json.gz",
        "2018/gift_cards/meta_Gift_Cards.json.gz",
        "2018/magazine_subscriptions/meta_Magazine_Subscriptions.json.gz",
    ):
        lines = gzip.open(amazon_real / rel).read().splitlines(keepends=True)
        asins = {m["asin"] for m in (read_metadata(amazon_real / rel).iloc[::3].to_dict("records"))}
        got = [amazon._wanted(line, asins) for line in lines]
        assert got == [wanted_by_definition(line, asins) for line in lines]
        assert 0 < sum(got) < len(got)
