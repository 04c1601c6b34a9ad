"""The dataset catalog (``sea/data/catalog.yaml``): what ``dataset.name`` means.

A catalog entry names one category of one Amazon release (2014, 2018, 2023). Resolving
it (:func:`resolve`) gives the files the download stage fetches, each with its URL, its
local file name and its pin (if the catalog knows one). Explicit ``dataset.*_url`` and
``dataset.*_sha256`` params override the catalog; ``dataset.mirror`` replaces a release's
``base_url``. The bundled ``sample`` is an entry too (release ``bundled``, files under
data/sample/). A ``dataset.name`` that is not in the catalog (a dump of your own) takes its
URLs from the params alone.

Pins come in two kinds (see the header of catalog.yaml): ``sha256`` of the downloaded
bytes, or ``content_sha256`` + ``content_bytes`` of the uncompressed content (the 2023
release publishes those). A file with neither is trusted on first use:
:class:`HashRecord` keeps the sha256 of its first download in ``data/hashes.json``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sea.config import Section, check_folder_name, require, require_choice
from sea.data.amazon2023 import IMAGE_SIZES
from sea.data.split import SPLITS
from sea.errors import ChecksumError, ConfigError, DataError, shown
from sea.files import CHUNK, atomic_path
from sea.net.urls import check_url

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
#: Where the sha256 of files without a pin are recorded on first download (git-tracked).
HASH_RECORD = Path("data/hashes.json")

#: How a downloaded file was verified, as the download stage reports it.
EXPLICIT, PINNED, TOFU_RECORDED, TOFU_VERIFIED = (
    "explicit",
    "pinned",
    "trusted on first use (recorded)",
    "trusted on first use (verified)",
)


@dataclass
class DatasetConfig(Section):
    """Where the data comes from.

    ``source: amazon``: raw review + metadata dumps at URLs (http(s)://, file:// or a path
    relative to the repo). ``source: mmrec``: an MMRec folder at ``path`` (``<name>.inter``,
    ``image_feat.npy``, ``text_feat.npy``) used in place of parsing, splitting and encoding.
    """

    name: str = "sample"
    source: str = "amazon"
    reviews_url: str | None = None
    reviews_sha256: str | None = None
    meta_url: str | None = None
    meta_sha256: str | None = None
    allow_truncated: bool = False
    path: str | None = None
    max_download_mb: float = 20000.0  # size cap per dump file (MB = 10^6 bytes)
    download_timeout: float = 3600.0  # seconds per dump file, all attempts together
    # the dataset catalog (sea/data/catalog.py): a base URL replacing the catalog's host
    # prefix, and which image of a 2023 item ("large", "hi_res" or "thumb") to take
    mirror: str | None = None
    image_size: str = "large"
    metadata: bool = True  # false: fetch no metadata dump (items get no text or image)
    download_retries: int = 4  # further attempts per dump after a failed one (each resumes where it stopped)

    def validate(self, section: str) -> None:
        check_folder_name(self.name, section, "name")
        require_choice(self.source, ("amazon", "mmrec"), section, "source")
        require_choice(self.image_size, IMAGE_SIZES, section, "image_size")
        if self.mirror is not None:
            require(
                re.fullmatch(r"(https?|file)://[^\s]+", self.mirror) is not None,
                section,
                f"mirror must be an http(s):// or file:// base URL, got {shown(self.mirror)}",
            )
        for name in ("reviews_url", "meta_url", "mirror"):
            check_url(getattr(self, name), section, name)
        require(
            self.metadata or not (self.meta_url or self.meta_sha256),
            section,
            "metadata: false contradicts meta_url/meta_sha256 (set them to null, or metadata: true)",
        )
        if self.source == "amazon":
            require(
                bool(self.reviews_url) or catalog().get(self.name) is not None,
                section,
                f"reviews_url is required with source: amazon when name ({shown(self.name)}) is not a catalog "
                f"entry (python -m sea datasets lists them)",
            )
        else:
            require(bool(self.path), section, "path (the MMRec folder) is required with source: mmrec")

        require(
            self.max_download_mb > 0 and self.download_timeout > 0,
            section,
            "max_download_mb and download_timeout must be > 0",
        )
        require(0 <= self.download_retries <= 100, section, "download_retries must be in [0, 100]")

    @property
    def raw_dir(self) -> Path:
        return Path("data/raw") / self.name

    @staticmethod
    def local_name(url: str) -> str:
        """File name a URL is saved under: its last path component."""
        return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


@dataclass(frozen=True)
class Pin:
    """A known hash of one file: of its bytes (``sha256``) or of its uncompressed content."""

    sha256: str | None = None
    content_sha256: str | None = None
    content_bytes: int | None = None


@dataclass(frozen=True)
class Release:
    """One Amazon release: its base URL and the path templates of its files."""

    key: str
    title: str
    base_url: str
    suffix: str
    reviews: str
    meta: str
    image_features: str | None = None
    full_reviews: str | None = None
    split: str | None = None
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class CatalogFile:
    """A file of a catalog entry: ``role`` (reviews, meta, train/valid/test, ...), its
    path under the release's base URL, and its pin (None: trusted on first use)."""

    role: str
    path: str
    pin: Pin | None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Entry:
    """One catalog entry: a category of a release."""

    name: str
    release: Release
    category: str
    aliases: tuple[str, ...] = ()
    pins: dict[str, Pin] = field(default_factory=dict, compare=False, repr=False)

    def file(self, role: str, template: str, **fill: str) -> CatalogFile:
        path = template.format(category=self.category, **fill)
        return CatalogFile(role, path, self.pins.get(path))

    @property
    def reviews(self) -> CatalogFile:
        return self.file("reviews", self.release.reviews)

    @property
    def meta(self) -> CatalogFile:
        return self.file("meta", self.release.meta)

    @property
    def image_features(self) -> CatalogFile | None:
        """2014: the category's 4096-d CNN image features (``image_features_<Category>.b``)."""
        tpl = self.release.image_features
        return self.file("image_features", tpl) if tpl else None

    @property
    def full_reviews(self) -> CatalogFile | None:
        """2023: every review of the category (JSON lines), not 5-core filtered."""
        tpl = self.release.full_reviews
        return self.file("full_reviews", tpl) if tpl else None

    def split_files(self, split: str) -> list[CatalogFile]:
        """The train, valid and test files of an official split (2023)."""
        if split not in self.release.splits:
            known = list(self.release.splits) or "none"
            raise ConfigError(
                f"params.yaml [split]: given: {shown(split)} is not an official split of "
                f"{self.name} (release {self.release.key}; its splits: {known})"
            )
        return [self.file(part, self.release.split, split=split, part=part) for part in SPLITS]

    def all_files(self) -> list[CatalogFile]:
        files = [self.reviews, self.meta, self.full_reviews, self.image_features]
        files += [f for s in self.release.splits for f in self.split_files(s)]
        return [f for f in files if f is not None]

    def url(self, f: CatalogFile, mirror: str | None = None) -> str:
        return join_url(mirror or self.release.base_url, f.path)


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path


def _pin(path: str, value: dict, where: str) -> Pin:
    if not isinstance(value, dict) or not set(value) <= {"sha256", "content_sha256", "content_bytes"}:
        raise ValueError(f"{where}: pin of {path} must be a mapping of sha256 / content_sha256, content_bytes")
    pin = Pin(**value)
    for h in (pin.sha256, pin.content_sha256):
        if h is not None and (len(str(h)) != 64 or any(c not in "0123456789abcdef" for c in str(h))):
            raise ValueError(f"{where}: pin of {path}: {h!r} is not a lowercase sha256 hex digest")
    if (pin.content_sha256 is None) != (pin.content_bytes is None):
        raise ValueError(f"{where}: pin of {path} needs content_sha256 and content_bytes together")
    return pin


@dataclass(frozen=True)
class Catalog:
    releases: dict[str, Release]
    entries: dict[str, Entry]  # canonical name -> entry
    names: dict[str, str]  # every name and alias -> canonical name

    @classmethod
    def load(cls, path: Path = CATALOG_FILE) -> Catalog:
        data = yaml.safe_load(Path(path).read_text())
        releases = {}
        for key, r in data["releases"].items():
            r = dict(r)
            r["splits"] = tuple(r.get("splits", ()))
            releases[str(key)] = Release(key=str(key), **r)
        pins = {
            str(k): {p: _pin(p, v, str(path)) for p, v in (v or {}).items()}
            for k, v in (data.get("pins") or {}).items()
        }
        entries, names = {}, {}
        for name, e in data["datasets"].items():
            release = releases[str(e["release"])]
            entry = Entry(name, release, e["category"], tuple(e.get("aliases", ())), pins.get(release.key, {}))
            entries[name] = entry
            for n in (name,) + entry.aliases:
                if n in names:
                    raise ValueError(f"{path}: dataset name {n!r} appears twice")
                names[n] = name
        known = {p for e in entries.values() for f in e.all_files() for p in [f.path]}
        for key, ps in pins.items():
            stray = sorted(set(ps) - known)
            if stray:
                raise ValueError(f"{path}: pins of release {key} for files no entry has: {stray[:3]}")
        return cls(releases, entries, names)

    def get(self, name: str) -> Entry | None:
        """The entry ``name`` (or an alias) names, or None when it is not in the catalog."""
        canonical = self.names.get(name)
        return self.entries[canonical] if canonical else None


@functools.cache
def catalog() -> Catalog:
    """The repo's catalog (``sea/data/catalog.yaml``), loaded once."""
    return Catalog.load()


# --------------------------------------------------------------------------- resolving params


@dataclass(frozen=True)
class Download:
    """One file the download stage fetches: ``role`` (reviews, meta, train, valid, test),
    where from, under which local name, and how it is verified."""

    role: str
    url: str
    name: str
    sha256: str | None  # explicit (params) or pinned sha256 of the bytes
    pin: Pin | None  # the catalog's pin, when the file has one
    check: str  # "explicit", "pinned" or "tofu" (trusted on first use)
    record_key: str  # key in data/hashes.json (dataset/file name)


def resolve(ds: DatasetConfig, given_split: str | None = None) -> list[Download]:
    """The files ``ds`` names, catalog filled in and params applied (see module docstring).

    Raises ConfigError for params the catalog contradicts: an explicit URL whose file name
    is not the catalog's for that role (a dump of one's own under a catalog name), a mirror or an
    official split without a catalog entry, or a reviews URL next to ``split.given``.
    """
    entry = catalog().get(ds.name)
    if entry is None:
        if ds.mirror:
            raise ConfigError(
                f"params.yaml [dataset]: mirror is set, but name {shown(ds.name)} is not a catalog "
                f"entry (python -m sea datasets lists them): a mirror replaces a catalog URL's host"
            )
        if given_split:
            raise ConfigError(
                f"params.yaml [split]: given: {shown(given_split)} needs a catalog entry with official "
                f"splits (the 2023 release, e.g. all_beauty-2023); {shown(ds.name)} is not one"
            )
        if not ds.reviews_url:
            raise ConfigError(
                f"params.yaml [dataset]: name {shown(ds.name)} is not in the dataset catalog (python -m "
                f"sea datasets lists it), so reviews_url is required"
            )
        roles = [("reviews", ds.reviews_url, ds.reviews_sha256), ("meta", ds.meta_url, ds.meta_sha256)]
        # (metadata: false with a meta_url is refused by DatasetConfig)
        return [_download(role, url, sha, None, ds.name) for role, url, sha in roles if url]

    if given_split:
        if ds.reviews_url or ds.reviews_sha256:
            raise ConfigError(
                "params.yaml [dataset]: reviews_url and reviews_sha256 are not read with split.given "
                "(the official split files, pinned in the catalog, replace the reviews file); set "
                "them to null"
            )
        files = entry.split_files(given_split)
    else:
        files = [entry.reviews]
    if ds.metadata:
        files.append(entry.meta)
    out = []
    for f in files:
        role, url, sha = f.role, entry.url(f, ds.mirror), None
        if role in ("reviews", "meta"):
            explicit_url, sha = getattr(ds, f"{f.role}_url"), getattr(ds, f"{f.role}_sha256")
            if explicit_url:
                # the reviews may also be the entry's full reviews file (2023: not 5-core filtered)
                allowed = [f] + ([entry.full_reviews] if f.role == "reviews" and entry.full_reviews else [])
                match = [a for a in allowed if a.name == DatasetConfig.local_name(explicit_url)]
                if not match:
                    raise ConfigError(
                        f"params.yaml [dataset]: {f.role}_url {shown(explicit_url)} names the file "
                        f"{shown(DatasetConfig.local_name(explicit_url))}, but catalog entry {shown(ds.name)} "
                        f"({entry.release.key} "
                        f"{entry.category}) has {' or '.join(repr(a.name) for a in allowed)}: set {f.role}_url "
                        f"and {f.role}_sha256 to null to take the catalog's (dataset.mirror for another host), "
                        f"or choose a dataset.name outside the catalog for a dump of your own"
                    )
                f, url = match[0], explicit_url
        out.append(_download(role, url, sha, f.pin, entry.name))
    return out


def image_features_url(ds: DatasetConfig) -> str | None:
    """The URL of the 2014 CNN image features (``image_features_<Category>.b``) of the
    catalog entry ``ds.name`` names (with ``dataset.mirror`` applied); None when the entry
    has none (2018, 2023) or ``ds.name`` is not in the catalog."""
    entry = catalog().get(ds.name)
    f = entry.image_features if entry else None
    return entry.url(f, ds.mirror) if f else None


def _download(role: str, url: str, explicit: str | None, pin: Pin | None, key: str) -> Download:
    name = DatasetConfig.local_name(url)
    if explicit:
        return Download(role, url, name, explicit.lower(), None, EXPLICIT, f"{key}/{name}")
    if pin is not None:
        return Download(role, url, name, pin.sha256, pin, PINNED, f"{key}/{name}")
    return Download(role, url, name, None, None, "tofu", f"{key}/{name}")


# --------------------------------------------------------------------------- verification


def content_digest(path: Path, limit: int) -> tuple[str, int]:
    """sha256 and size of ``path``'s content: gunzipped when it is gzip, else its bytes.
    Reads at most ``limit`` + 1 content bytes (a larger content cannot match its pin)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        try:
            while n <= limit and (chunk := stream.read(min(CHUNK, limit + 1 - n))):
                h.update(chunk)
                n += len(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: the gzip stream is damaged ({e}); re-download it") from None
    return h.hexdigest(), n


def verify_pin(path: Path, d: Download) -> None:
    """Check ``path`` against the content pin of ``d`` (the bytes' sha256 is checked while
    downloading); raise ChecksumError naming both hashes."""
    pin = d.pin
    if pin is None or pin.content_sha256 is None:
        return
    digest, n = content_digest(path, pin.content_bytes)
    if n != pin.content_bytes or digest != pin.content_sha256:
        size = f"{n:,}" if n <= pin.content_bytes else f"more than {pin.content_bytes:,}"
        raise ChecksumError(
            f"{d.url}: the uncompressed content does not match the catalog's pin "
            f"(sea/data/catalog.yaml: sha256 {pin.content_sha256}, {pin.content_bytes:,} bytes; "
            f"got sha256 {digest if n <= pin.content_bytes else '-'}, {size} bytes)"
        )


class HashRecord:
    """The sha256 of files without a pin, recorded on their first download
    (``data/hashes.json``: ``{"<dataset>/<file>": {"sha256": ..., "bytes": ...}}``, sorted,
    no dates or paths, so the file is reproducible and fit for git)."""

    def __init__(self, path: Path = HASH_RECORD) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"{self.path}: not valid JSON ({e}); fix or delete it") from None
            if not isinstance(data, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in data.values()
            ):
                raise DataError(f'{self.path}: expected {{"<dataset>/<file>": {{"sha256": ...}}}}')
            self.entries = data

    def expected(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry["sha256"] if entry else None

    def add(self, key: str, sha256: str, size: int) -> None:
        self.entries[key] = {"sha256": sha256, "bytes": size}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(dict(sorted(self.entries.items())), indent=2) + "\n")


# --------------------------------------------------------------------------- listing


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"  # pragma: no cover


def listing(cat: Catalog | None = None, verbose: bool = False) -> str:
    """The catalog as text: one line per entry (name, aliases, release, category, files,
    how many are pinned); with ``verbose``, every file's URL, known size and pin."""
    cat = cat or catalog()
    lines = [f"{'name':32} {'release':7} {'category':28} files  pinned  aliases"]
    for e in cat.entries.values():
        files = e.all_files()
        pinned = sum(f.pin is not None for f in files)
        lines.append(
            f"{e.name:32} {e.release.key:7} {e.category:28} {len(files):5}  {pinned:6}  {', '.join(e.aliases)}"
        )
        if verbose:
            for f in files:
                pin = (
                    "unpinned (trusted on first use)"
                    if f.pin is None
                    else (
                        f"pinned, content {_size(f.pin.content_bytes)} uncompressed"
                        if f.pin.content_sha256
                        else "pinned"
                    )
                )
                lines.append(f"    {f.role:14} {e.url(f)}  [{pin}]")
    lines.append("")
    lines.append("Releases: " + "; ".join(f"{r.key}: {r.title} <{r.base_url}>" for r in cat.releases.values()))
    lines.append(
        "Use: dataset.name: <name or alias> (params.yaml), with dataset.reviews_url/meta_url and their "
        "sha256 null; dataset.mirror: <base URL> for a mirror; split.method: given + split.given: "
        "<split> for a 2023 official split."
    )
    return "\n".join(lines)
