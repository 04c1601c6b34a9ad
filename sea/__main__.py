"""``python -m sea datasets [-v]`` (or the ``sea`` console script): list the dataset
catalog (sea/data/catalog.yaml): each entry's name, aliases, release, category, how many
files it has and how many of them are pinned; ``-v`` adds every file's URL and pin."""

from __future__ import annotations

import argparse
import os
import sys

from sea.data.catalog import listing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sea", description="SEA pipeline helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    datasets = commands.add_parser("datasets", help="list the dataset catalog (dataset.name values)")
    datasets.add_argument("-v", "--verbose", action="store_true", help="every file's URL and pin")
    args = parser.parse_args(argv)
    if args.command == "datasets":
        try:
            print(listing(verbose=args.verbose), flush=True)
        except BrokenPipeError:  # `sea datasets | head`: the reader left, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
