"""One test per class of hostile or broken input the readers used to crash on or get wrong.

Each input must give either the correct result or a DataError naming the file (and the
1-based line where there is one). The fuzz tests (test_fuzz_readers.py) look for new
classes; these pin the known ones.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_fuzz_readers import gzip_rule

from sea import artifacts
from sea.data.amazon import TruncatedFileWarning, read_metadata, read_reviews
from sea.data.amazon2023 import read_benchmark_csv
from sea.data.arrays import load_features
from sea.data.lines import MAX_GZIP_RATIO, MAX_LINE_BYTES, TRUNCATION_MARGIN
from sea.data.mmrec import read_features, read_inter, read_item_ids
from sea.errors import DataError

DM_REVIEWS = "2014/digital_music/reviews_Digital_Music_5.head.json.gz"
DM_META = "2014/digital_music/meta_Digital_Music.head.json.gz"
INTER_HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"
BOM = "\ufeff"


def review(user: str = "U1", item: str = "I1", rating: object = 5.0, ts: object = 1_000_000_000) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts})


def raw_review(rating: str = "5.0", ts: str = "1000000000", user: str = '"U1"') -> str:
    """A review line with fields written as given (for values json.dumps cannot write)."""
    return f'{{"reviewerID": {user}, "asin": "I1", "overall": {rating}, "unixReviewTime": {ts}}}'


def inter(rows: list[str], header: str = INTER_HEADER) -> str:
    return header + "".join(r + "\n" for r in rows)


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def raises_at(where: str, match: str = ""):
    """pytest.raises(DataError) whose message starts with ``where`` (file[:line]) and has ``match``."""

    return pytest.raises(DataError, match=rf"^{re.escape(where)}\b.*{match}")


# ----------------------------------------------------------------- integer ids (.inter)


@pytest.mark.parametrize("bad", ["4294967299", "2147483647", "-1", "+3", "1.0", "1e3", "٣", "0x10", ""])
def test_inter_id_out_of_range_or_not_an_integer(tmp_path, bad):
    # 4294967299 used to wrap around to item 3 (astype int32); -1 indexed from the end
    path = write(tmp_path / "x.inter", inter(["0\t0\t5.0\t10\t0", f"1\t{bad}\t5.0\t11\t0"]))
    with raises_at(f"{path}:3", "itemID"):
        read_inter(path)


def test_inter_largest_int32_id_is_read_exactly(tmp_path):
    # ids up to 2**31 - 2 are valid ints; here the density rule is what refuses them
    rows = [f"{u}\t{i}\t5.0\t10\t0" for u, i in [(0, 0), (1, 2**31 - 2)]]
    path = write(tmp_path / "x.inter", inter(rows))
    with raises_at(f"{path}:3", "itemID 2,147,483,646 is out of proportion"):
        read_inter(path)


def test_inter_ids_must_be_dense(tmp_path):
    rows = [f"{u}\t{i}\t5.0\t10\t0" for u, i in [(0, 0), (1, 1), (2, 2), (0, 2), (1, 8)]]
    path = write(tmp_path / "x.inter", inter(rows))
    # 4 distinct items but ids up to 8: more than half of 0..8 would be unused
    with raises_at(f"{path}:6", "itemID 8 is out of proportion: only 4 distinct"):
        read_inter(path)
    rows[-1] = "1\t5\t5.0\t10\t0"  # 0..5 with 4 distinct: dense enough, read as written
    df = read_inter(write(path, inter(rows)))
    assert df["item"].tolist() == [0, 1, 2, 2, 5] and df["item"].dtype == "int32"


# ----------------------------------------------------------------- gzip damage


def _stored_gzip(lines: list[str]) -> bytearray:
    """An uncompressed (level 0) gzip, so that a flipped byte changes exactly that byte."""
    return bytearray(gzip.compress("".join(line + "\n" for line in lines).encode(), compresslevel=0, mtime=0))


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_gzip_crc_failure_is_always_an_error(tmp_path, allow_truncated):
    data = _stored_gzip([review(f"USER00{i}") for i in range(8)])
    at = data.index(b"USER004")
    data[at + 6] = ord(" ")  # USER004 -> "USER00 ": still a valid review, only the CRC can tell
    path = write(tmp_path / "r.json.gz.bin", bytes(data))
    with raises_at(str(path), "corrupt.*CRC check failed.*allow_truncated does not apply"):
        read_reviews(path, fmt="json", allow_truncated=allow_truncated)


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_gzip_length_failure_is_always_an_error(tmp_path, allow_truncated):
    data = _stored_gzip([review(f"U{i}") for i in range(8)])
    data[-1] ^= 0x01  # ISIZE, the length modulo 2**32, is the last 4 bytes
    path = write(tmp_path / "r.bin", bytes(data))
    with raises_at(str(path), "corrupt.*Incorrect length"):
        read_reviews(path, fmt="json", allow_truncated=allow_truncated)


def test_real_gzip_with_a_flipped_bit_is_never_read(amazon_real, tmp_path):
    data = bytearray((amazon_real / DM_REVIEWS).read_bytes())
    for offset in (len(data) // 3, len(data) // 2, len(data) - 100):
        damaged = data.copy()
        damaged[offset] ^= 0x10
        path = write(tmp_path / "r.bin", bytes(damaged))
        with pytest.raises(DataError, match=rf"^{path}"):
            read_reviews(path, fmt="json", allow_truncated=True)


def test_gzip_ending_early_keeps_complete_lines_only(tmp_path):
    lines = [review(f"U{i:05d}") for i in range(4_000)]  # 320 KB: over twice TRUNCATION_MARGIN
    data = _stored_gzip(lines)
    cut = data[: data.index(b"U03001") + 2]  # ends inside line 3,002
    path = write(tmp_path / "r.bin", bytes(cut))
    n = len(gzip_rule(bytes(cut)))  # the complete lines decoded before the last TRUNCATION_MARGIN bytes
    # by hand: stored blocks copy the text after a 10-byte header and 5-byte block headers, so
    # line n ends before the margin (which starts at the cut's last byte, "0") and line n + 1 after
    boundary = len(cut) - 1 - TRUNCATION_MARGIN
    text = [len(line) + 1 for line in lines]
    block_headers = len(data) - 18 - sum(text)
    assert 0 < n < 3_001 and 10 + sum(text[:n]) <= boundary < 10 + block_headers + sum(text[: n + 1])
    with pytest.warns(
        TruncatedFileWarning,
        match=f"kept the {n:,} complete lines .* the {3_001 - n:,} complete lines after them and the incomplete line",
    ):
        df = read_reviews(path, fmt="json", allow_truncated=True)
    assert df["user"].tolist() == [f"U{i:05d}" for i in range(n)]


def test_gzip_bomb_is_refused(tmp_path):
    line = review(user="U" * 900) + "\n"
    n = (80 << 20) // len(line)  # 80 MiB out of about 80 KiB: over MAX_GZIP_RATIO
    path = write(tmp_path / "bomb.json.gz", line * n)
    assert path.stat().st_size * MAX_GZIP_RATIO < 64 << 20
    with raises_at(str(path), "expands more than"):
        read_reviews(path)


# ----------------------------------------------------------------- lines cut off, line size


def test_plain_json_cut_mid_line(tmp_path):
    path = write(tmp_path / "r.json", review() + "\n" + review("U2")[:30])
    with raises_at(f"{path}:2", "not a valid JSON line"):
        read_reviews(path)
    path = write(tmp_path / "r.json", review() + "\n" + review("U2"))  # complete, no newline: fine
    assert read_reviews(path)["user"].tolist() == ["U1", "U2"]


def test_plain_metadata_cut_mid_line(tmp_path):
    line = "{'asin': 'B1', 'title': 'Memory of Trees', 'categories': [['CDs & Vinyl', 'New Age']]}"
    path = write(tmp_path / "meta.json", line + "\n" + line.replace("B1", "B2")[:-12])
    with raises_at(f"{path}:2", "neither a JSON object nor a Python dict literal"):
        read_metadata(path)


@pytest.mark.parametrize(
    "name, text",
    [
        ("r.csv", "I1,U1,5.0,1005177600\nI2,U2,5.0,10051"),
        ("x.inter", inter(["0\t0\t5.0\t10\t0"]) + "1\t1\t5.0\t1"),
        ("i_id_mapping.csv", "asin\titemID\nB0\t0\nB1\t1"),
    ],
)
def test_delimited_file_without_final_newline(tmp_path, name, text):
    # a cut row parses (10051 is a valid timestamp): only the missing newline tells
    path = write(tmp_path / name, text)
    with raises_at(f"{path}:{text.count(chr(10)) + 1}", "no newline"):
        if name == "r.csv":
            read_reviews(path)
        elif name == "x.inter":
            read_inter(path)
        else:
            read_item_ids(tmp_path, 2)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_line_size_limit(tmp_path, suffix):
    base = review("U2")
    pad = MAX_LINE_BYTES - len(base) - 2  # with "\n": exactly MAX_LINE_BYTES
    at_limit = base[:-1] + ', "reviewText": "' + "x" * (pad - 17) + '"}'
    assert len(at_limit) + 1 == MAX_LINE_BYTES
    path = write(tmp_path / f"r{suffix}", review() + "\n" + at_limit + "\n")
    assert read_reviews(path)["user"].tolist() == ["U1", "U2"]
    over = at_limit[:-2] + 'x"}'
    path = write(tmp_path / f"r{suffix}", review() + "\n" + over + "\n" + review() + "\n")
    with raises_at(f"{path}:2", rf"line is {MAX_LINE_BYTES + 1:,} bytes, over the limit of {MAX_LINE_BYTES:,}"):
        read_reviews(path)


def test_metadata_line_size_limit(tmp_path):
    # a 14 MiB dict literal used to cost 30 s and 4.8 GB in ast.literal_eval
    huge = "{'asin': 'B1', 'related': {'also_bought': [" + ", ".join(["'B000000000'"] * 1_300_000) + "]}}"
    path = write(tmp_path / "meta.json", "{'asin': 'B0'}\n" + huge + "\n")
    with raises_at(f"{path}:2", "over the limit"):
        read_metadata(path)


# ----------------------------------------------------------------- byte-order mark


def test_bom_is_dropped_in_every_text_reader(tmp_path):
    df = read_reviews(write(tmp_path / "r.json", BOM + review("USER1") + "\n"))
    assert df["user"].tolist() == ["USER1"]
    df = read_reviews(write(tmp_path / "r.json.gz", BOM + review("USER1") + "\n"))
    assert df["user"].tolist() == ["USER1"]
    df = read_reviews(write(tmp_path / "r.csv", BOM + "ITEM1,USER1,5.0,1005177600\n"))
    assert (df["item"].tolist(), df["user"].tolist()) == (["ITEM1"], ["USER1"])
    meta = read_metadata(write(tmp_path / "m.json", BOM + "{'asin': 'B1', 'title': 'T'}\n"), asins={"B1"})
    assert meta["asin"].tolist() == ["B1"]
    df = read_inter(write(tmp_path / "x.inter", BOM + inter(["0\t0\t5.0\t10\t0", "1\t1\t4.0\t11\t2"])))
    assert df["timestamp"].tolist() == [10, 11]
    write(tmp_path / "i_id_mapping.csv", BOM + "asin\titemID\nB0\t0\nB1\t1\n")
    assert read_item_ids(tmp_path, 2).tolist() == ["B0", "B1"]


def test_bom_inside_an_id_is_refused(tmp_path):
    path = write(tmp_path / "r.json", review() + "\n" + review(BOM + "U1") + "\n")
    with raises_at(f"{path}:2", "reviewerID"):
        read_reviews(path)


# ----------------------------------------------------------------- ratings and timestamps


@pytest.mark.parametrize("rating", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, "1e39", "true", '"5"'])
def test_json_rating_must_be_finite_float32(tmp_path, rating):
    path = write(tmp_path / "r.json", review() + "\n" + raw_review(rating=rating) + "\n")
    with raises_at(f"{path}:2", "overall"):
        read_reviews(path)


@pytest.mark.parametrize("ts", ["1.5", "-1", "9223372036854775808", "1e300", "null", '"1000"'])
def test_json_timestamp_must_be_a_whole_number_in_range(tmp_path, ts):
    path = write(tmp_path / "r.json", review() + "\n" + raw_review(ts=ts) + "\n")
    with raises_at(f"{path}:2", "unixReviewTime"):
        read_reviews(path)


def test_json_integral_float_timestamps_are_read(tmp_path):
    path = write(tmp_path / "r.json", raw_review(ts="1005177600.0") + "\n" + raw_review(ts="1005177601") + "\n")
    assert read_reviews(path)["timestamp"].tolist() == [1005177600, 1005177601]


@pytest.mark.parametrize("rating", ["nan", "NaN", "inf", "-inf", "1e400", "1e39", "five", " 5", "1_0", "٥", ""])
def test_csv_rating_must_be_a_plain_finite_number(tmp_path, rating):
    path = write(tmp_path / "r.csv", f"I1,U1,5.0,1005177600\nI2,U2,{rating},1005177600\n")
    with raises_at(f"{path}:2", "rating"):
        read_reviews(path)


@pytest.mark.parametrize("ts", ["1.5", "-1", "1e9", "9223372036854775808", "١٢", "1_000", ""])
def test_csv_timestamp_must_be_a_whole_number_in_range(tmp_path, ts):
    path = write(tmp_path / "r.csv", f"I1,U1,5.0,1005177600\nI2,U2,5.0,{ts}\n")
    with raises_at(f"{path}:2", "timestamp"):
        read_reviews(path)


# Amazon's own ranges: 1-5 stars, review times from 1995-01-01 to 2100-01-01 in the reader's
# unit (seconds for 2014/2018, milliseconds for 2023). Each case is the third line of a file
# of the reader's format (two good lines before it: for the 2023 CSV, the header and one row).
SECONDS, MILLISECONDS = 1_005_177_600, 1_588_687_728_923  # 2001-11-08 and 2020-05-05
READERS = {  # name: (file name, line for (i, rating, ts), header or None, rating field, time field, unit)
    "2014/2018 json": (
        "r.json",
        lambda i, r, t: f'{{"reviewerID": "U{i}", "asin": "I1", "overall": {r}, "unixReviewTime": {t}}}',
        None,
        "overall",
        "unixReviewTime",
        "s",
    ),
    "2018 ratings csv": ("r.csv", lambda i, r, t: f"I1,U{i},{r},{t}", None, "rating", "timestamp", "s"),
    "2023 jsonl": (
        "r.jsonl.gz",
        lambda i, r, t: f'{{"user_id": "U{i}", "parent_asin": "P1", "rating": {r}, "timestamp": {t}}}',
        None,
        "rating",
        "timestamp",
        "ms",
    ),
    "2023 benchmark csv": (
        "All_Beauty.csv.gz",
        lambda i, r, t: f"U{i},P1,{r},{t}",
        "user_id,parent_asin,rating,timestamp",
        "rating",
        "timestamp",
        "ms",
    ),
}


def amazon_file(tmp_path: Path, reader: str, rating: str, ts: str) -> Path:
    """A file for ``reader`` whose line 3 holds ``rating`` and ``ts`` (lines 1-2 are good)."""
    name, row, header, *_, unit = READERS[reader]
    good_ts = SECONDS if unit == "s" else MILLISECONDS
    lines = [header] if header else [row(0, "5.0", good_ts)]
    lines += [row(1, "4.0", good_ts + 1), row(2, rating, ts)]
    return write(tmp_path / name, "".join(line + "\n" for line in lines))


WINDOW = {
    "s": "(788918400 <= {} < 4102444800 unix seconds)",
    "ms": "(788918400000 <= {} < 4102444800000 unix milliseconds)",
}
UNIT_HINT = {
    "s": "it looks like unix milliseconds (as in the 2023 dumps), but this file is read in seconds "
    "(as in the 2014/2018 dumps)",
    "ms": "it looks like unix seconds (as in the 2014/2018 dumps), but this file is read in milliseconds "
    "(as in the 2023 dumps)",
}
CSV_2018_HINT = " (are the columns in the order item,user,rating,timestamp? The 2018 ratings CSV has no header row)"


def case_values(case: str, reader: str) -> tuple[str, str, str]:
    """(rating, timestamp, the whole message after "file:3: ") of a bad line 3 for ``reader``."""
    *_, rating, ts, unit = READERS[reader]
    good = SECONDS if unit == "s" else MILLISECONDS
    other = MILLISECONDS if unit == "s" else SECONDS
    stars = "is outside Amazon's 1-5 stars"
    times = "is outside Amazon's review times, 1995-01-01 to 2100-01-01"
    value, time, message = {
        "rating below 1": ("0.5", good, f"{rating} 0.5 {stars}"),
        "rating above 5": ("5.5", good, f"{rating} 5.5 {stars}"),
        "rating 0": ("0", good, f"{rating} 0.0 {stars}"),
        "swapped columns": (str(good), "2.0", f"{rating} {good}.0 {stars} and looks like a unix time"),
        "time in the other unit": ("5.0", other, f"{ts} {other} {times} {WINDOW[unit].format(ts)}; {UNIT_HINT[unit]}"),
        "timestamp 2": ("5.0", 2, f"{ts} 2 {times} {WINDOW[unit].format(ts)}"),
    }[case]
    return value, str(time), message + (CSV_2018_HINT if reader == "2018 ratings csv" else "")


CASES = ["rating below 1", "rating above 5", "rating 0", "swapped columns", "time in the other unit", "timestamp 2"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reader", list(READERS))
def test_amazon_ratings_and_times_out_of_range(tmp_path, reader, case):
    rating, ts, message = case_values(case, reader)
    path = amazon_file(tmp_path, reader, rating, ts)
    with pytest.raises(DataError) as err:
        read_reviews(path)
    assert str(err.value) == f"{path}:3: {message}"


def test_swapped_ratings_csv_columns_are_refused_at_the_first_row(tmp_path):
    """The tester's file: asin,user,timestamp,rating read as item,user,rating,timestamp used
    to give rating 1.5e9 and timestamp 2."""
    path = write(tmp_path / "r.csv", "B00005N7OD,A2XU18GW8RXVJL,1500940800,2.0\n")
    with raises_at(
        f"{path}:1",
        r"rating 1500940800\.0 is outside Amazon's 1-5 stars and looks like a unix time "
        r"\(are the columns in the order item,user,rating,timestamp\?",
    ):
        read_reviews(path)


@pytest.mark.parametrize("reader", list(READERS))
def test_amazon_range_edges(tmp_path, reader):
    """1 and 5 stars and the first and last second of the window are read; one past is not."""
    from sea.data.lines import END_REVIEW_SECOND, FIRST_REVIEW_SECOND

    *_, unit = READERS[reader]
    per = 1 if unit == "s" else 1000
    first, last = FIRST_REVIEW_SECOND * per, END_REVIEW_SECOND * per - 1
    name, row, header, *_ = READERS[reader]
    lines = ([header] if header else []) + [row(0, "1", first), row(1, "5.0", last), row(2, "4.5", first)]
    df = read_reviews(write(tmp_path / name, "".join(line + "\n" for line in lines)))
    assert df["rating"].tolist() == [1.0, 5.0, 4.5] and df["timestamp"].tolist() == [first, last, first]
    for rating, ts in [("0.99", first), ("5.01", first), ("5.0", first - 1), ("5.0", last + 1)]:
        path = amazon_file(tmp_path, reader, rating, str(ts))
        with raises_at(f"{path}:3", "outside Amazon's"):
            read_reviews(path)


@pytest.mark.parametrize("reader", ["2023 jsonl", "2023 benchmark csv"])
def test_2023_seconds_refused_by_the_split_reader_too(tmp_path, reader):
    path = amazon_file(tmp_path, reader, "5.0", str(SECONDS))
    with raises_at(f"{path}:3", "looks like unix seconds"):
        (read_benchmark_csv if reader.endswith("csv") else read_reviews)(path)


@pytest.mark.parametrize(
    "row, column",
    [
        ("1\t1\tnan\t11\t0", "rating"),
        ("1\t1\tinf\t11\t0", "rating"),
        ("1\t1\t1e400\t11\t0", "rating"),
        ("1\t1\t5.0\t1.5\t0", "timestamp"),
        ("1\t1\t5.0\t-3\t0", "timestamp"),
        ("1\t1\t5.0\t11\t3", "x_label"),
        ("1\t1\t5.0\t11", "fields"),
        ("1\t1\t5.0\t11\t0\t9", "fields"),
    ],
)
def test_inter_cells_are_checked(tmp_path, row, column):
    path = write(tmp_path / "x.inter", inter(["0\t0\t5.0\t10\t0", row]))
    with raises_at(f"{path}:3", column):
        read_inter(path)


def test_inter_cells_are_checked_in_chunks(tmp_path, monkeypatch):
    from sea.data import mmrec

    monkeypatch.setattr(mmrec, "_CHUNK_ROWS", 4)  # several chunks, the last one partial
    rows = [f"{u % 3}\t{u % 5}\t{u}.5\t{1000 + u}\t{u % 3}" for u in range(10)]
    df = read_inter(write(tmp_path / "x.inter", inter(rows[:3] + [""] + rows[3:])))  # an empty line too
    assert df["rating"].tolist() == [u + 0.5 for u in range(10)]
    assert df["timestamp"].tolist() == [1000 + u for u in range(10)]
    assert df["split"].cat.codes.tolist() == [u % 3 for u in range(10)]
    rows[6] = "1\t1\t5.0\t1e3\t0"  # row 7, line 9 (header and the empty line before it)
    with raises_at(f"{tmp_path / 'x.inter'}:9", "timestamp '1e3'"):
        read_inter(write(tmp_path / "x.inter", inter(rows[:3] + [""] + rows[3:])))


def test_unreadable_file(tmp_path):
    with raises_at(str(tmp_path / "missing.json"), "cannot be read"):
        read_reviews(tmp_path / "missing.json")
    with raises_at(str(tmp_path), "cannot be read"):
        read_reviews(tmp_path, fmt="json")


def test_inter_reads_integral_float_timestamps(tmp_path):
    df = read_inter(write(tmp_path / "x.inter", inter(["0\t0\t5\t10.0\t0", "1\t1\t4.5\t1658002729837\t1"])))
    assert df["timestamp"].tolist() == [10, 1658002729837] and df["rating"].tolist() == [5.0, 4.5]


# ----------------------------------------------------------------- headers


def test_inter_duplicate_column(tmp_path):
    # pandas renamed the second one to "timestamp.1" and the timestamps became 0
    path = write(
        tmp_path / "x.inter", inter(["0\t0\t10\t10\t0"], header="userID\titemID\ttimestamp\ttimestamp\tx_label\n")
    )
    with raises_at(f"{path}:1", r"duplicate column\(s\) \['timestamp'\]"):
        read_inter(path)


def test_mapping_duplicate_column(tmp_path):
    write(tmp_path / "i_id_mapping.csv", "asin\titemID\tasin\nB0\t0\tB9\n")
    with raises_at(f"{tmp_path / 'i_id_mapping.csv'}:1", "duplicate column"):
        read_item_ids(tmp_path, 1)


# ----------------------------------------------------------------- i_id_mapping.csv


def test_mapping_is_used_exactly(tmp_path):
    write(tmp_path / "i_id_mapping.csv", "asin\titemID\nB2\t2\nB0\t0\nB1\t1\nB3\t3\n")
    assert read_item_ids(tmp_path, 3).tolist() == ["B0", "B1", "B2"]  # item 3 has no interactions
    (tmp_path / "i_id_mapping.csv").unlink()
    assert read_item_ids(tmp_path, 3).tolist() == ["0", "1", "2"]


@pytest.mark.parametrize(
    "rows, line, match",
    [
        (["B0\t0", "B1\tone", "B2\t2"], 3, "itemID 'one'"),  # one bad row used to drop the whole mapping
        (["B0\t0", "B1\t1\textra", "B2\t2"], 3, "3 fields"),
        (["B0\t0", "B1\t0", "B2\t2"], 3, "itemID 0 is mapped again .first at line 2"),
        (["B0\t0", "B0\t1", "B2\t2"], 3, "asin 'B0' is mapped again"),
        (["B0\t0", "B1\t1", "B2\t5"], 4, "itemID 5 but only 3 items"),
        (["B0\t0", "\tB1\t1", "B2\t2"], 3, "3 fields"),
        (["B0\t0", " \t1", "B2\t2"], 3, "asin must be a non-empty"),
        (["B0\t0", "B1\t-1", "B2\t2"], 3, "itemID '-1'"),
    ],
)
def test_mapping_bad_rows(tmp_path, rows, line, match):
    path = write(tmp_path / "i_id_mapping.csv", "asin\titemID\n" + "".join(r + "\n" for r in rows))
    with raises_at(f"{path}:{line}", match):
        read_item_ids(tmp_path, 3)


def test_mapping_with_too_few_items(tmp_path):
    path = write(tmp_path / "i_id_mapping.csv", "asin\titemID\nB0\t0\nB1\t1\n")
    with raises_at(str(path), "maps 2 items, but the interactions have 3"):
        read_item_ids(tmp_path, 3)


# ----------------------------------------------------------------- metadata pre-filter


REAL_FORMAT_2014 = (
    "{{'asin': '{asin}', 'title': \"Greatest Hits ('asin': '{decoy}' edition)\", 'price': 11.33, "
    "'imUrl': 'http://ecx.images-amazon.com/images/I/21W29WZwDAL._SL500_.jpg', "
    "'related': {{'also_bought': ['B00000282A', 'B0084O8O9S']}}, 'salesRank': {{'Music': 1}}, "
    "'categories': [['CDs & Vinyl', 'Pop']]}}"
)


@pytest.mark.parametrize("decoy_first", [False, True])
def test_metadata_prefilter_with_asin_text_in_the_title(tmp_path, decoy_first):
    line = REAL_FORMAT_2014.format(asin="B0WANTED01", decoy="B0OTHER001")
    if decoy_first:  # the decoy before the real key, as when 'title' comes first
        line = "{'title': \"Greatest Hits ('asin': 'B0OTHER001' edition)\", 'asin': 'B0WANTED01'}"
    path = write(tmp_path / "meta.json", "{'asin': 'B0FILLER01', 'title': 'x'}\n" + line + "\n")
    meta = read_metadata(path, asins={"B0WANTED01"})
    assert meta["asin"].tolist() == ["B0WANTED01"]
    assert "'asin': 'B0OTHER001'" in meta["title"].iloc[0]
    # asking for the decoy finds no product of that asin
    with raises_at(str(path), "none of the 1 reviewed products"):
        read_metadata(path, asins={"B0OTHER001"})


@pytest.mark.parametrize(
    "line",
    [
        "{'as' 'in': 'B0WANTED01', 'title': \"'asin': 'B0OTHER001'\"}",  # key by concatenation
        "{'\\x61sin': 'B0WANTED01', 'title': \"'asin': 'B0OTHER001'\"}",  # key by an escape
        '{"\\u0061sin": "B0WANTED01", "title": "\'asin\': \'B0OTHER001\'"}',  # JSON escape
        "{'asin': 'B0WANT' 'ED01', 'title': \"'asin': 'B0OTHER001'\"}",  # value by concatenation
        "{'asin': u'B0WANTED01', 'title': \"'asin': 'B0OTHER001'\"}",  # value with a prefix
        "{'asin': ('B0WANTED01'), 'title': \"'asin': 'B0OTHER001'\"}",  # value in parentheses
    ],
)
def test_metadata_prefilter_is_never_fooled(tmp_path, line):
    path = write(tmp_path / "meta.json", line + "\n")
    assert read_metadata(path)["asin"].tolist() == ["B0WANTED01"]
    assert read_metadata(path, asins={"B0WANTED01"})["asin"].tolist() == ["B0WANTED01"]


# ----------------------------------------------------------------- feature matrices


def _npy(tmp_path: Path, x: np.ndarray, name: str = "image_feat.npy") -> Path:
    np.save(tmp_path / name, x, allow_pickle=True)
    return tmp_path / name


@pytest.mark.parametrize(
    "x, match",
    [
        (np.ones((3, 4), np.complex64), "dtype complex64"),
        (np.ones((3, 4), np.int64), "dtype int64"),
        (np.ones((3, 4), bool), "dtype bool"),
        (np.array([["a"] * 4] * 3), "dtype <U1"),
        (np.array([[object()] * 4] * 3, dtype=object), "dtype object"),
        (np.zeros((3, 4), dtype=[("a", "<f4"), ("b", "<f4")]), "dtype"),
        (np.ones((3, 0), np.float32), r"shape \(3, 0\)"),
        (np.ones((3,), np.float32), r"shape \(3,\)"),
        (np.ones((3, 4, 1), np.float32), r"shape \(3, 4, 1\)"),
        (np.ones((2, 4), np.float32), "expected at least 3 rows"),
        (np.full((3, 4), 1e300), "beyond float32's range"),  # finite float64, inf as float32
        (np.array([[1.0, np.nan], [1.0, 1.0], [1.0, 1.0]]), "NaN, inf.*row 0"),
        (np.array([[1.0, 1.0], [1.0, 1.0], [np.inf, 1.0]], np.float32), "row 2"),
        (np.zeros((3, 4), np.float32), "every image feature row is zero.*model.modalities"),
    ],
)
def test_bad_feature_matrices(tmp_path, x, match):
    path = _npy(tmp_path, x)
    with raises_at(str(path), match):
        read_features(tmp_path, "image", 3)


def test_feature_header_claiming_a_huge_shape_allocates_nothing(tmp_path):
    import tracemalloc

    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    header = header + " " * (117 - len(header)) + "\n"
    path = tmp_path / "image_feat.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64))
    assert path.stat().st_size < 200
    tracemalloc.start()
    try:
        with raises_at(str(path), "the header says"):
            read_features(tmp_path, "image", 100_000_000_000)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b[:-3], "cut off or has junk"),
        (lambda b: b + b"junk", "cut off or has junk"),
        (lambda b: b[:9], "header is cut off"),
        (lambda b: b"PK\x03\x04" + b[4:], "not a .npy file"),
        (lambda b: b[:6] + b"\x03\x00" + b[8:], "unsupported .npy format version"),
        (lambda b: b[:8] + b"\xff\xff" + b[10:], "header claims 65,535 bytes"),
        (lambda b: b.replace(b"'descr'", b"'descx'"), "unreadable .npy header"),
        (lambda b: b.replace(b"(3, 4)", b"(-3, 4)"), "shape"),
        (lambda b: b.replace(b"(3, 4)", b"(2, 6)"), "expected at least 3 rows"),
        (lambda b: b"", "not a .npy file"),
    ],
)
def test_damaged_npy_files(tmp_path, damage, match):
    path = _npy(tmp_path, np.arange(1, 13, dtype=np.float32).reshape(3, 4))
    path.write_bytes(damage(path.read_bytes()))
    with raises_at(str(path), match):
        read_features(tmp_path, "image", 3)


def test_accepted_feature_matrices_are_float32_c_order(tmp_path):
    x = np.arange(1, 21, dtype=np.float64).reshape(5, 4)
    x[1] = 0  # a zero row (an item without an image) is fine
    for stored in (np.asfortranarray(x), x.astype(np.float16), x.astype(">f8"), x.astype(np.float32)):
        path = _npy(tmp_path, stored)
        got = read_features(tmp_path, "image", 3)  # an MMRec folder may have extra rows
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, 4)
        np.testing.assert_array_equal(got, x[:3].astype(np.float32))
        assert type(got) is np.ndarray  # not a memory map of the file
        np.testing.assert_array_equal(load_features(path, 5, "image"), x.astype(np.float32))


def test_pipeline_features_use_the_same_loader(tmp_path):
    # artifacts.read_features: the stage outputs must have exactly one row per item
    artifacts.write_features("image", np.ones((3, 4)), {"n_decoded": 3}, root=tmp_path)
    assert artifacts.read_features(["image"], 3, root=tmp_path)["image"].shape == (3, 4)
    with raises_at(str(tmp_path / "image.npy"), "expected 2 rows"):
        artifacts.read_features(["image"], 2, root=tmp_path)
    artifacts.write_features("text", np.zeros((3, 4)), {"n_with_text": 3}, root=tmp_path)
    with raises_at(str(tmp_path / "text.npy"), "every text feature row is zero.*model.modalities"):
        artifacts.read_features(["text"], 3, root=tmp_path)
    np.save(tmp_path / "image.npy", np.ones((3, 4), np.complex128))
    with raises_at(str(tmp_path / "image.npy"), "complex128"):
        artifacts.read_features(["image"], 3, root=tmp_path)


def test_mmrec_folder_with_all_zero_features(tmp_path):
    from sea.data.mmrec import precomputed_features

    np.save(tmp_path / "text_feat.npy", np.zeros((4, 8), np.float32))
    with raises_at(str(tmp_path / "text_feat.npy"), "every text feature row is zero.*model.modalities"):
        precomputed_features(tmp_path, "text", 4)


# ----------------------------------------------------------------- other exception classes


@pytest.mark.parametrize(
    "line, match",
    [
        ("[" * 100_000 + "]" * 100_000, "not a valid JSON line .nested too deeply"),  # RecursionError
        ('{"a": ' * 5_000 + "1" + "}" * 5_000, "not a valid JSON line .nested too deeply"),
        (raw_review(rating="1" * 5_000), "not a valid JSON line"),  # int over Python's digit limit
        (raw_review(user='"\\ud800"'), "lone surrogate"),  # UnicodeEncodeError later on
        (raw_review(user='"U\\u0000"'), "control characters"),
        (raw_review(user='"U\\t1"'), "control characters"),
        (raw_review(user='"  "'), "non-empty"),
    ],
)
def test_json_review_exception_classes(tmp_path, line, match):
    path = write(tmp_path / "r.json", review() + "\n" + line + "\n")
    with raises_at(f"{path}:2", match):
        read_reviews(path)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"I2,U2,5.0,\x0010\n", "timestamp"),
        (b'I2,U2,5.0,"' + b"1" * 200_000 + b'"\n', "field larger than field limit"),  # _csv.Error
        (b'I2,"U2\n', "not a CSV row|expected 4"),
        (b"I2,U2,5.0,10\xff\n", "not UTF-8"),
        (b"I2,U\xed\xa0\x80,5.0,10\n", "not UTF-8"),  # an encoded surrogate is not UTF-8
    ],
)
def test_csv_review_exception_classes(tmp_path, raw, match):
    path = write(tmp_path / "r.csv", b"I1,U1,5.0,1005177600\n" + raw)
    with raises_at(f"{path}:2", match):
        read_reviews(path)


@pytest.mark.parametrize(
    "line, match",
    [
        ("[" * 100_000, "neither a JSON object"),  # RecursionError / parser limits
        ("{'asin': 'B1', 'x': " + "(" * 300 + ")" * 300 + "}", "neither a JSON object"),
        ("{'asin': 'B1', 'x': " + "-" * 100_000 + "1}", "neither a JSON object"),
        ("{'asin': 'B1', 'x': {[]: 1}}", "neither a JSON object"),  # TypeError: unhashable
        ("{'asin': 'B1', 'x': " + "9" * 5_000 + "}", "neither a JSON object"),
        ('{"asin": "B1", "title": "\\ud800"}', "'title' holds a lone surrogate"),
        ("{'asin': 'B1', 'description': ['ok', '\\udfff']}", "'description' holds a lone surrogate"),
        ("{'asin': 'B1', 'imUrl': 'http://x/\\ud800.jpg'}", "'imUrl' holds a lone surrogate"),
        ("{'asin': 'B1\\x00'}", "asin"),
        ("{'asin': 'B1', 'title': 1e400}", "'title' must be text"),
    ],
)
def test_metadata_exception_classes(tmp_path, line, match):
    path = write(tmp_path / "meta.json", "{'asin': 'B0'}\n" + line + "\n")
    with raises_at(f"{path}:2", match):
        read_metadata(path)


def test_inter_exception_classes(tmp_path):
    for bad, match in [
        (b"1\t1\t5.0\t11\t0\x00\n", "x_label"),
        (b"1\t1\t5.0\t11\t\xff\n", "not UTF-8"),
        (b'1\t1\t"' + b"5" * 200_000 + b'"\t11\t0\n', "not a tab-separated row"),
        (b"1\t1\t5." + b"0" * 5_000 + b"\t11\t0\n", None),  # long but a plain number: fine
        (b"1\t1\t5.0\t" + b"1" * 5_000 + b"\t0\n", "timestamp"),
    ]:
        path = write(tmp_path / "x.inter", inter(["0\t0\t5.0\t10\t0"]).encode() + bad)
        if match is None:
            assert read_inter(path)["rating"].tolist() == [5.0, 5.0]
            continue
        with raises_at(f"{path}:3", match):
            read_inter(path)


def test_no_warning_for_valid_files(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = read_inter(write(tmp_path / "x.inter", inter(["0\t0\t5.0\t10\t0", "1\t1\t3e2\t11\t1"])))
    assert df.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64", "category"]
    pd.testing.assert_series_equal(
        df["split"].astype(str), pd.Series(["train", "valid"], name="split"), check_dtype=False
    )
