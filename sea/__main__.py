"""``python -m sea datasets [-v]`` (or the ``sea`` console script): list the dataset
catalog (sea/data/catalog.yaml): each entry's name, aliases, release, category, how many
files it has and how many of them are pinned; ``-v`` adds every file's URL and pin."""

from __future__ import annotations

import argparse

from sea.data.catalog import listing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sea", description="SEA pipeline helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    datasets = commands.add_parser("datasets", help="list the dataset catalog (dataset.name values)")
    datasets.add_argument("-v", "--verbose", action="store_true", help="every file's URL and pin")
    args = parser.parse_args(argv)
    if args.command == "datasets":
        print(listing(verbose=args.verbose))


if __name__ == "__main__":
    main()
