"""Stage download: fetch the dumps that params [dataset] names (through the catalog,
sea/data/catalog.yaml, or the params' own URLs; with ``split.given``, an official
split's files), or copy an MMRec folder, into data/raw/<dataset.name>/ with SOURCE.json:
capped, resumed, each file's sha256 checked. See docs/stages.md and docs/datasets.md."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from sea.artifacts import SOURCE_FILE
from sea.cli import run_stage
from sea.config import load_params
from sea.data.catalog import TOFU_RECORDED, TOFU_VERIFIED, DatasetConfig, Download, HashRecord, resolve, verify_pin
from sea.data.mmrec import FEATURE_FILES, inter_file
from sea.data.split import SplitConfig
from sea.errors import ChecksumError, ConfigError, DataError, FetchTimeoutError, TooLargeError, shown
from sea.files import MB, atomic_dir, is_plain_name, sha256_file
from sea.net.download import fetch

RAW = Path("data/raw")
#: Partial http(s) downloads (``<sha1 of URL>.part`` and ``.json``), resumed by the next
#: run; outside data/raw so DVC never caches one, removed once their dump is complete.
PARTIAL = Path("data/cache/downloads")


def raw_folder(cfg: DatasetConfig) -> Path:
    """data/raw/<name>, once ``name`` is checked to be one plain folder name: ``.`` or ``..``
    would make the stage replace data/raw itself (every other dataset) or data/."""
    if not is_plain_name(cfg.name):
        raise ConfigError(
            f"params.yaml [dataset]: name must be one plain folder name "
            f"(not empty, '.', '..', or with '/', '\\' or NUL), got {shown(cfg.name)}"
        )
    return RAW / cfg.name


def dump_files(cfg: DatasetConfig, given_split: str | None = None) -> list[Download]:
    """The files to fetch (the catalog filled in, params applied: see sea.data.catalog);
    refuses names that are not plain file names or that two URLs share (the second would
    overwrite the first)."""
    files = resolve(cfg, given_split)
    for d in files:
        if not is_plain_name(d.name) or d.name == SOURCE_FILE:
            raise ConfigError(
                f"params.yaml [dataset]: {d.role}_url {shown(d.url)} does not end in a usable file name "
                f"(got {shown(d.name)}); it is saved under data/raw/<name>/ by that name"
            )
    first_named: dict[str, Download] = {}
    for d in files:
        first = first_named.setdefault(d.name, d)
        if first is not d:
            raise ConfigError(
                f"params.yaml [dataset]: {first.role}_url and {d.role}_url both end in the file name "
                f"{shown(d.name)}; one would overwrite the other in data/raw/{cfg.name}/ "
                "(serve them under different names)"
            )
    return files


def fetch_dumps(cfg: DatasetConfig, dest: Path, given_split: str | None = None) -> dict:
    """Fetch every file into ``dest`` and verify it: against an explicit sha256
    (``dataset.*_sha256``), the catalog's pin, or else the hash recorded on its first
    download in data/hashes.json (trust on first use; the first download records it)."""
    sources = {}
    record = HashRecord()
    recorded = False
    for d in dump_files(cfg, given_split):
        check, sha = d.check, d.sha256
        if check == "tofu":
            sha = record.expected(d.record_key)
            check = TOFU_VERIFIED if sha else TOFU_RECORDED
        try:
            path = fetch(
                d.url,
                dest / d.name,
                sha,
                max_bytes=int(cfg.max_download_mb * MB),
                total_timeout=cfg.download_timeout,
                retries=cfg.download_retries + 1,
                partial_dir=PARTIAL,
            )
        except TooLargeError as e:
            raise TooLargeError(f"{e} (dataset.max_download_mb: {cfg.max_download_mb:g})") from None
        except FetchTimeoutError as e:
            raise FetchTimeoutError(f"{e} (dataset.download_timeout: {cfg.download_timeout:g})") from None
        except ChecksumError as e:
            if check == TOFU_VERIFIED:
                raise ChecksumError(
                    f"{e}: the bytes differ from the first download of {d.record_key}, recorded "
                    f"in {record.path} (trust on first use). If the file really changed "
                    f"upstream, delete that entry to record the new hash"
                ) from None
            raise
        verify_pin(path, d)
        # fetch checked the bytes against sha when there is one: no need to read them again
        digest, size = sha.lower() if sha else sha256_file(path), path.stat().st_size
        verified = "trusted on first use" if check in (TOFU_RECORDED, TOFU_VERIFIED) else check  # the same every run
        sources[d.role] = {"url": d.url, "file": path.name, "sha256": digest, "bytes": size, "verified": verified}
        print(f"{d.role}: {d.url} ({size:,} bytes; sha256 {check})")
        if check == TOFU_RECORDED:
            record.add(d.record_key, digest, size)
            recorded = True
            print(
                f"warning: no pin for {d.url}: its sha256 is recorded in {record.path} (trust on first use); "
                f"commit that file so later downloads are verified against it",
                file=sys.stderr,
            )
    if recorded:
        record.save()
    return sources


def copy_mmrec(cfg: DatasetConfig, dest: Path) -> dict:
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset.path is not a folder (source: mmrec)")
    files = [inter_file(folder)] + [folder / f for f in FEATURE_FILES.values()]
    files += sorted(folder.glob("*_id_mapping.csv"))
    sources = {}
    for f in files:
        if not f.exists():
            raise DataError(f"{f}: missing from the MMRec folder")
        shutil.copyfile(f, dest / f.name)
        sources[f.name] = {"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size}
        print(f"mmrec: {f} ({f.stat().st_size:,} bytes)")
    return sources


def main() -> None:
    params = load_params()
    cfg = DatasetConfig.from_dict(params["dataset"], "dataset")
    given = SplitConfig.from_dict(params.get("split"), "split").given  # split.given only
    target = raw_folder(cfg)
    if cfg.source != "mmrec":
        dump_files(cfg, given)  # refuse bad file names before touching anything
    with atomic_dir(target) as tmp:
        sources = copy_mmrec(cfg, tmp) if cfg.source == "mmrec" else fetch_dumps(cfg, tmp, given)
        (tmp / SOURCE_FILE).write_text(json.dumps({"source": cfg.source} | sources, indent=2) + "\n")
    print(f"-> {target}")


if __name__ == "__main__":
    run_stage(main, "download")
