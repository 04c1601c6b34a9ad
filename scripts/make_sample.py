"""Regenerate the bundled sample dataset (``data/sample`` by default).

Usage::

    python scripts/make_sample.py --out data/sample --seed 0

Prints the raw counts and the sha256 of the two dump files, to be pasted into
``params.yaml``. The output is byte-identical for the same seed and sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sample_data import META_FILE, REVIEWS_FILE, generate_sample  # scripts/sample_data.py, beside this file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--n-users", type=int, default=None, help="raw number of users")
    parser.add_argument("--n-items", type=int, default=None, help="raw number of items")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = {"n_users": args.n_users, "n_items": args.n_items}
    sizes = {name: value for name, value in sizes.items() if value is not None}
    start = time.perf_counter()
    stats = generate_sample(args.out, seed=args.seed, **sizes)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(stats['files'])} files to {args.out} in {elapsed:.1f}s")
    print(
        f"raw: {stats['n_reviews']} reviews ({stats['n_duplicate_reviews']} duplicated pairs), "
        f"{stats['n_users']} users, {stats['n_reviewed_items']} reviewed items, "
        f"{stats['n_items']} items with metadata"
    )
    print(
        f"metadata gaps: {stats['n_without_description']} without description, "
        f"{stats['n_without_image']} without imUrl, "
        f"{len(stats['corrupt_image_asins'])} with a corrupt image"
    )
    for name in (REVIEWS_FILE, META_FILE):
        print(f"sha256 {name}: {stats['sha256'][name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
