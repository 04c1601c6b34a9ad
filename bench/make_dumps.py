"""Seeded raw dumps of a real category's size, for timing the data stages (not committed).

    python bench/make_dumps.py                       # Amazon 2014 Clothing's sizes -> bench/data/clothing/
    python bench/make_dumps.py --reviews 20000 --meta-lines 100000 --out /tmp/small

Writes, in the 2014 formats the graph stage reads:
- ``reviews_Clothing_5.json.gz``: ``--reviews`` JSON lines (default 278,677, the 5-core
  Clothing file's line count) over ``--users`` users and ``--items`` items, each with
  review text and summary like the real dumps (a few hundred bytes a line);
- ``meta_Clothing.json.gz``: ``--meta-lines`` Python dict-literal lines (default 1.5M, a
  full 2014 category file), the reviewed items among them in random order, each with
  ``related`` lists of other asins, sales rank, image URL, categories and description.

Same arguments and seed => the same bytes (gzip mtime 0). Lines are generated and written
65,536 at a time, so memory holds the per-line draws (about 100 bytes a review: some 7 GB
for 67M reviews), not the lines.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

WORDS = (
    "soft cotton fit size small large comfortable fabric color quality great love wear "
    "shirt dress shoes pair washed nice price looks perfect true runs little bit "
    "ordered returned material stretch style summer winter daughter husband gift"
).split()
CATEGORIES = ("Women", "Men", "Girls", "Boys", "Baby", "Novelty", "Shoes", "Jewelry", "Watches")


def asin(i: int) -> str:
    return f"B{i:09d}"


def sentences(rng: np.random.Generator, n: int, words: int) -> list[str]:
    """``n`` pseudo-sentences of about ``words`` words each."""
    vocab = np.array(WORDS)
    lengths = rng.integers(words // 2, words * 3 // 2 + 1, n)
    picks = rng.integers(0, len(vocab), int(lengths.sum()))
    out, start = [], 0
    for length in lengths:
        out.append(" ".join(vocab[picks[start : start + length]]).capitalize() + ".")
        start += length
    return out


def review_lines(rng: np.random.Generator, n: int, n_users: int, n_items: int) -> Iterator[bytes]:
    """``n`` review lines. A base of 5 distinct items per user, spread evenly over the items,
    survives the 5-core filter whole (when 5 * users >= 5 * items); the other lines are
    random users with popularity-skewed items (duplicates possible, as in real dumps)."""
    base_u = np.repeat(np.arange(n_users), 5)
    base_i = (base_u * 5 + np.tile(np.arange(5), n_users)) % n_items
    extra = max(0, n - len(base_u))
    users = np.concatenate([base_u, rng.integers(0, n_users, extra)])[:n]
    items = np.concatenate([base_i, (rng.zipf(1.6, extra) - 1) % n_items])[:n]
    order = rng.permutation(n)
    users, items = users[order], items[order]
    texts = sentences(rng, 4096, 60)
    summaries = sentences(rng, 1024, 5)
    times = rng.integers(1_104_537_600, 1_406_073_600, n)  # 2005 .. July 2014
    ratings = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.05, 0.06, 0.12, 0.22, 0.55])
    pick_t, pick_s, helpful = rng.integers(0, 4096, n), rng.integers(0, 1024, n), rng.integers(0, 5, n)
    for j in tqdm(range(n), desc="reviews", unit="line", unit_scale=True, mininterval=1):
        rec = {
            "reviewerID": f"A{users[j]:013d}",
            "asin": asin(int(items[j])),
            "reviewerName": f"user {users[j]}",
            "helpful": [int(helpful[j]), int(helpful[j]) + 1],
            "reviewText": texts[pick_t[j]],
            "overall": float(ratings[j]),
            "summary": summaries[pick_s[j]],
            "unixReviewTime": int(times[j]),
            "reviewTime": "07 23, 2014",
        }
        yield json.dumps(rec).encode() + b"\n"


def meta_lines(rng: np.random.Generator, n: int, n_items: int) -> Iterator[bytes]:
    """``n`` dict-literal lines; the first ``n_items`` asins are the reviewed ones."""
    order = rng.permutation(n)
    titles = sentences(rng, 4096, 6)
    descriptions = sentences(rng, 4096, 40)
    related = rng.integers(0, n, (n, 8))
    for j in tqdm(range(n), desc="metadata", unit="line", unit_scale=True, mininterval=1):
        i = int(order[j])
        rec = {
            "asin": asin(i),
            "related": {
                "also_bought": [asin(int(r)) for r in related[i, :6]],
                "also_viewed": [asin(int(r)) for r in related[i, 6:]],
            },
            "title": titles[i % 4096],
            "price": round(float(5 + (i % 9000) / 100), 2),
            "salesRank": {"Clothing": int(i * 7 % 1_000_000)},
            "imUrl": f"http://ecx.images-amazon.com/images/I/{i:011d}.jpg",
            "categories": [["Clothing, Shoes & Jewelry", CATEGORIES[i % len(CATEGORIES)]]],
        }
        if i % 3:
            rec["description"] = descriptions[i % 4096]
        yield repr(rec).encode() + b"\n"


def write_gz(path: Path, lines: Iterable[bytes]) -> None:
    """Write ``lines`` 65,536 at a time (memory holds one such block, not the file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    lines = iter(lines)
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz:
        while block := list(itertools.islice(lines, 65536)):
            gz.write(b"".join(block))
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "clothing")
    p.add_argument("--reviews", type=int, default=278_677)
    p.add_argument("--users", type=int, default=39_387)
    p.add_argument("--items", type=int, default=23_033)
    p.add_argument("--meta-lines", type=int, default=1_500_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.meta_lines < args.items:
        p.error("--meta-lines must be at least --items (every reviewed item has a record)")
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_gz(args.out / "reviews_Clothing_5.json.gz", review_lines(rng, args.reviews, args.users, args.items))
    write_gz(args.out / "meta_Clothing.json.gz", meta_lines(rng, args.meta_lines, args.items))
    for f in sorted(args.out.iterdir()):
        print(f"{f}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
