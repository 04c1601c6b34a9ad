"""Fetch item images at scale: a resumable cache, per-host limits, retries, offline detection.

The image URLs come from downloaded metadata, so they are not trusted: http(s) downloads
only go to public internet addresses (checked on every redirect hop, see
:func:`sea.net.http.open_public_http`; through ``http_proxy``/``https_proxy`` when set), are
capped in size and time, and land in an :class:`ImageCache`; local paths and ``file://``
URLs are used in place, but only inside the dataset's own folder.

:class:`ImageFetcher` fetches in background threads, in item order, with at most
``per_host`` downloads per host at a time. It is a lazy sequence of local paths: reading
item ``i`` waits for that item only, so an encoder can consume batches while later images
are still downloading. Failed attempts are retried on 408/429/5xx answers and broken-off
bodies, with exponential backoff (deterministic jitter) or the server's ``Retry-After``,
within ``max_wait`` seconds of waiting per image. When hosts cannot be reached at all
(DNS failure, connection refused, no route), the fetcher stops trying them after
``offline_after`` such failures instead of waiting out every URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sea.errors import FetchError, HTTPStatusError, RefusedError, TooLargeError
from sea.files import sha256_file
from sea.net.http import Deadline, copy_body, is_public_address, open_public_http
from sea.net.retry import retry_wait
from sea.net.urls import cache_key, resolve_url

log = logging.getLogger(__name__)

#: Environment variable naming the image cache folder (default ``data/cache/images``).
CACHE_ENV = "SEA_IMAGE_CACHE"


# --------------------------------------------------------------------------- the cache


def cache_name(url: str, sha256: str) -> str:
    """Name of the cached download of ``url`` whose bytes have the sha256 ``sha256``."""
    return f"{cache_key(url)}-{sha256}"


_CACHE_FILE = re.compile(r"([0-9a-f]{40})-([0-9a-f]{64})")
_CACHE_TMP = re.compile(r"\.[0-9a-f]{40}\.[a-z0-9_]{8}\.tmp")
#: HTTP statuses that say a URL is gone for good: remembered, never asked again.
GONE_STATUSES = (404, 410)
_GONE_FILE = re.compile(r"([0-9a-f]{40})\.(404|410)\.gone")


def any_address(ip: str) -> bool:
    """The address policy of ``allow_private_hosts: true``: every address is allowed."""
    return True


class ImageCache:
    """Downloaded images, one file per URL named ``<sha1 of URL>-<sha256 of bytes>``.

    A file enters the cache only when its whole body arrived (Content-Length checked)
    and is renamed into place atomically, so an interrupted run leaves only complete
    files, and the next run fetches just the rest. A cached file is reused only when it
    is not empty, within the size cap, and its bytes still have the sha256 in its name
    (else it is deleted and fetched again). A URL answered 404 or 410 is remembered as an
    empty ``<sha1>.<status>.gone`` file and not asked again (delete those files to ask
    again). Stale ``.<sha1>.*.tmp`` files of a killed run are removed when the cache is
    opened; nothing else in the folder is touched. The folder holds nothing but these
    files, so it can be copied between machines.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, str] = {}
        self.gone: dict[str, int] = {}
        for name in sorted(os.listdir(self.folder)):
            if _CACHE_TMP.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
            elif (m := _CACHE_FILE.fullmatch(name)) and m.group(1) not in self.index:
                self.index[m.group(1)] = name
            elif m := _GONE_FILE.fullmatch(name):
                self.gone.setdefault(m.group(1), int(m.group(2)))

    def gone_status(self, url: str) -> int | None:
        """The 404/410 an earlier attempt got for ``url``, or None."""
        return self.gone.get(cache_key(url))

    def remember_gone(self, url: str, status: int) -> None:
        """Record that ``url`` answered ``status`` (404 or 410): it is gone for good."""
        key = cache_key(url)
        self.gone.setdefault(key, status)
        with contextlib.suppress(OSError):  # not remembered: asked again next run
            (self.folder / f"{key}.{status}.gone").touch()

    def get(self, url: str, max_bytes: int) -> Path | None:
        """The verified cached file of ``url``, or None."""
        name = self.index.get(cache_key(url))
        if name is None:
            return None
        path = self.folder / name
        try:
            size = path.lstat()
            ok = stat.S_ISREG(size.st_mode) and 0 < size.st_size <= max_bytes and sha256_file(path) == name[41:]
        except OSError:
            ok = False
        if not ok:
            with contextlib.suppress(OSError):
                path.unlink()
        return path if ok else None

    def download(self, url: str, *, timeout: float, max_bytes: int, allow_private: bool) -> Path:
        """Fetch ``url`` into the cache: one attempt of at most ``timeout`` seconds in all."""
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_key(url)}.", suffix=".tmp", dir=self.folder)
        tmp_path = Path(tmp)
        try:
            with Deadline(timeout) as deadline, os.fdopen(fd, "wb") as out:
                allow = any_address if allow_private else is_public_address
                with open_public_http(url, deadline, allow_address=allow) as resp:
                    n, digest = copy_body(resp, out, url, max_bytes=max_bytes, deadline=deadline)
            if n == 0:
                raise FetchError(f"{url}: empty body", reason="incomplete")
            path = self.folder / cache_name(url, digest)
            os.replace(tmp_path, path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return path


# --------------------------------------------------------------------------- local files


def _local_path(file_url: str) -> Path:
    """The filesystem path of an absolute ``file://`` URL."""
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(file_url).path))


def _local_image(full_url: str, dataset_root: Path | None, allow_outside: bool, max_bytes: int) -> Path:
    """The checked local file of a ``file://`` URL (links and ``..`` already resolved)."""
    path = _local_path(full_url)
    if not allow_outside and (dataset_root is None or not path.is_relative_to(dataset_root)):
        where = f"outside the dataset folder {dataset_root}" if dataset_root else "not allowed: the metadata is remote"
        raise RefusedError(f"refusing {path}: {where}", reason="refused_outside_dataset")
    try:
        info = path.stat()
    except OSError as e:
        raise FetchError(f"no such file: {path}", reason="missing_file") from e
    if not stat.S_ISREG(info.st_mode):
        raise FetchError(f"not a regular file: {path}", reason="missing_file")
    if info.st_size > max_bytes:
        raise TooLargeError(f"{path} is {info.st_size:,} bytes, over the cap of {max_bytes:,}")
    return path


# --------------------------------------------------------------------------- hosts and network


@dataclass(frozen=True)
class FetchPolicy:
    """How remote images are fetched (the ``features.image`` params of the same names)."""

    timeout: float = 10.0  #: seconds per attempt in total: connect, redirects, body
    max_bytes: int = 20_000_000  #: size cap per image
    allow_private_hosts: bool = False
    workers: int = 8  #: concurrent downloads in all
    per_host: int = 4  #: concurrent downloads per host
    retries: int = 3  #: further attempts after a 408/429/5xx answer or a broken-off body
    backoff: float = 1.0  #: first retry wait in seconds, doubled on each retry
    max_wait: float = 60.0  #: seconds of waiting (backoff, Retry-After) per image at most
    offline_after: int = 3  #: connection failures that mark a host (or the network) absent


class Host:
    """One host's share of the fetching: a concurrency limit, a pause asked for by its
    ``Retry-After``, and its run of connection failures."""

    def __init__(self, limit: int) -> None:
        self.slots = threading.Semaphore(limit)
        self.not_before = 0.0  # monotonic time before which no request starts
        self.failures = 0  # consecutive attempts that could not connect at all


class Network:
    """Decides, from the attempts so far, when a host or the whole network is absent.

    A host is given up after ``offline_after`` consecutive attempts that could not connect
    (its remaining URLs fail as ``host_unreachable``). The network is taken as absent when
    no attempt has connected anywhere yet and ``offline_after`` attempts failed to connect,
    on at least ``min(offline_after, number of hosts)`` distinct hosts: every remaining
    URL then fails as ``offline`` without being tried.
    """

    def __init__(self, policy: FetchPolicy, n_hosts: int) -> None:
        self.policy = policy
        self.n_hosts = n_hosts
        self.lock = threading.Lock()
        self.hosts: dict[str, Host] = {}
        self.connected = False
        self.failed_hosts: set[str] = set()
        self.n_failed = 0
        self.offline = False

    def host(self, name: str) -> Host:
        with self.lock:
            return self.hosts.setdefault(name, Host(self.policy.per_host))

    def skip_reason(self, name: str) -> str | None:
        with self.lock:
            if self.offline:
                return "offline"
            host = self.hosts.get(name)
            return "host_unreachable" if host and host.failures >= self.policy.offline_after else None

    def record(self, name: str, error: FetchError | None) -> None:
        """Note an attempt on host ``name`` that connected (``error`` None or not a
        connection failure) or could not."""
        with self.lock:
            host = self.hosts[name]
            if error is None or not error.no_connection:
                self.connected = True
                host.failures = 0
                return
            host.failures += 1
            self.n_failed += 1
            self.failed_hosts.add(name)
            need = min(self.policy.offline_after, self.n_hosts)
            if not self.connected and self.n_failed >= self.policy.offline_after and len(self.failed_hosts) >= need:
                self.offline = True

    def unreachable_hosts(self) -> list[str]:
        with self.lock:
            return sorted(n for n, h in self.hosts.items() if h.failures >= self.policy.offline_after)


def _retryable(error: FetchError) -> bool:
    return (isinstance(error, HTTPStatusError) and error.retryable) or error.reason == "incomplete"


# --------------------------------------------------------------------------- the fetcher


class ImageFetcher(Sequence):
    """A local file for each image URL (``None`` where there is none), fetched in the
    background; a lazy sequence: ``fetcher[i]`` waits until item ``i`` is settled.

    * ``http(s)://`` URLs are fetched into ``cache_dir`` (see :class:`ImageCache`) in item
      order, by ``policy.workers`` threads, at most ``policy.per_host`` per host; a URL
      listed twice is fetched once. Each attempt gets ``policy.timeout`` seconds in all and
      at most ``policy.max_bytes``; only public addresses are contacted, on every redirect
      hop, unless ``policy.allow_private_hosts``.
    * Plain paths (relative ones taken against ``base_dir``) and ``file://`` URLs are used
      in place, after resolving links and ``..``, when they lie inside ``dataset_root``
      (``None``: no local file is allowed) or ``allow_files_outside`` is set.

    Use it as a context manager (leaving stops the threads); :meth:`wait` settles every
    item. Failure reasons (:attr:`failures`): ``refused_private_host``,
    ``refused_outside_dataset``, ``refused_scheme``, ``bad_url``, ``too_large``,
    ``timeout``, ``http_error``, ``rate_limited`` (429 until the retries or the wait
    ran out), ``incomplete``, ``too_many_redirects``, ``unresolvable`` (DNS),
    ``unreachable`` (no connection or TLS), ``host_unreachable`` and ``offline`` (not
    tried: see :class:`Network`), ``missing_file``.
    """

    def __init__(
        self,
        urls: Sequence[str | None],
        cache_dir: Path,
        policy: FetchPolicy = FetchPolicy(),
        *,
        base_dir: Path = Path("."),
        dataset_root: Path | None = None,
        allow_files_outside: bool = False,
        progress: bool = True,
    ) -> None:
        self.n = len(urls)
        self.policy = policy
        self.result: list[Path | None] = [None] * self.n
        self.failures: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}
        self.sources: Counter[str] = Counter()  # local / cached / downloaded
        self.remote: dict[str, list[int]] = {}  # http(s) URL -> positions that want it
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None

        root = Path(dataset_root).resolve() if dataset_root is not None else None
        for i, url in enumerate(urls):
            if url:
                self._classify(i, url, base_dir, root, allow_files_outside)
        self._done = bytearray([1]) * self.n
        for positions in self.remote.values():
            for i in positions:
                self._done[i] = 0
        self.n_with_url = sum(1 for u in urls if u)
        hosts = {self._host(u) for u in self.remote}
        self.network = Network(policy, len(hosts))
        self._cache = ImageCache(cache_dir) if self.remote else None
        self._pool = ThreadPoolExecutor(max_workers=policy.workers, thread_name_prefix="fetch")
        self._slots = threading.Semaphore(4 * policy.workers)  # futures in flight, at most
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=len(self.remote), desc="fetch images", unit="img", disable=not progress or not self.remote
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="fetch-dispatch", daemon=True)
        self._dispatcher.start()

    # ---- setup

    def _classify(self, i: int, url: str, base_dir: Path, root: Path | None, allow_outside: bool) -> None:
        try:
            full = resolve_url(url, base_dir)
            if full.startswith(("http://", "https://")):
                self.remote.setdefault(full, []).append(i)
            else:
                self.result[i] = _local_image(full, root, allow_outside, self.policy.max_bytes)
                self.sources["local"] += 1
        except FetchError as e:
            self._fail(e)
        except (OSError, ValueError) as e:  # e.g. a path too long to resolve
            self._fail(FetchError(f"{url!r}: {e}", reason="bad_url"))

    @staticmethod
    def _host(url: str) -> str:
        try:
            return (urllib.parse.urlsplit(url).hostname or "").lower()
        except ValueError:
            return ""

    def _fail(self, error: FetchError, n: int = 1) -> None:
        self.failures[error.reason] += n
        self.first_error.setdefault(error.reason, str(error))

    # ---- background work

    def _dispatch(self) -> None:
        try:
            for url in self.remote:
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._pool.submit(self._run, url)
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _run(self, url: str) -> None:
        try:
            source, path, error = self._obtain(url)
        except OSError as e:  # writing the cache
            source, path, error = None, None, FetchError(f"{url}: {e}", reason="unreachable")
        except ValueError as e:  # a URL or answer the HTTP client cannot even parse
            source, path, error = None, None, FetchError(f"{url}: {e}", reason="bad_url")
        except BaseException as e:  # noqa: BLE001 - a bug: handed to the reader
            with self._cond:
                self._error = e
                self._cond.notify_all()
            return
        finally:
            self._slots.release()
        positions = self.remote[url]
        with self._cond:
            if error is not None:
                self._fail(error, len(positions))
            else:
                self.sources[source] += len(positions)
            for i in positions:
                self.result[i] = path
                self._done[i] = 1
            self._cond.notify_all()
            self._bar.update(1)

    def _obtain(self, url: str) -> tuple[str | None, Path | None, FetchError | None]:
        """One URL: from the cache, else downloaded with retries. Never raises FetchError."""
        p = self.policy
        cached = self._cache.get(url, p.max_bytes)
        if cached is not None:
            return "cached", cached, None
        status = self._cache.gone_status(url)
        if status is not None:  # the same failure as the first time, without asking again
            return (
                None,
                None,
                HTTPStatusError(
                    f"{url}: HTTP {status}, remembered from an earlier run "
                    f"(delete {cache_key(url)}.{status}.gone in the image cache "
                    "to ask again)",
                    status=status,
                ),
            )
        name = self._host(url)
        host = self.network.host(name)
        waited = 0.0
        for attempt in range(1, p.retries + 2):
            if self._stop.is_set():
                return None, None, FetchError(f"{url}: stopped", reason="stopped")
            pause = host.not_before - time.monotonic()
            if pause > 0:  # the host asked everyone to wait (Retry-After)
                if waited + pause > p.max_wait:
                    return (
                        None,
                        None,
                        FetchError(
                            f"{url}: {name} asks to wait {pause:.0f} s, over features.image.max_wait",
                            reason="rate_limited",
                        ),
                    )
                self._stop.wait(pause)
                waited += pause
            with host.slots:
                skip = self.network.skip_reason(name)  # checked once a slot is ours: others may have failed
                if skip is not None:
                    return (
                        None,
                        None,
                        FetchError(
                            f"{url}: not tried, {name} or the network is unreachable "
                            f"(see features.image.offline_after)",
                            reason=skip,
                        ),
                    )
                try:
                    path = self._cache.download(
                        url, timeout=p.timeout, max_bytes=p.max_bytes, allow_private=p.allow_private_hosts
                    )
                    self.network.record(name, None)
                    return "downloaded", path, None
                except FetchError as e:
                    self.network.record(name, e)
                    if isinstance(e, HTTPStatusError) and e.status in GONE_STATUSES:
                        self._cache.remember_gone(url, e.status)
                    error = e
            if not _retryable(error) or attempt > p.retries:
                return None, None, error
            wait = retry_wait(error, attempt, p.backoff, url)
            if waited + wait > p.max_wait:
                return None, None, error
            if getattr(error, "retry_after", None) is not None:
                host.not_before = max(host.not_before, time.monotonic() + wait)
            self._stop.wait(wait)
            waited += wait
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- the sequence

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # noqa: ANN001 - int or slice, as Sequence
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        with self._cond:
            while not self._done[i]:
                if self._error is not None:
                    raise self._error
                self._cond.wait(0.5)
        return self.result[i]

    def __iter__(self) -> Iterator[Path | None]:
        for i in range(self.n):
            yield self[i]

    def wait(self) -> list[Path | None]:
        """Every item's file (``None`` where there is none), once all are settled."""
        return list(self)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._dispatcher.join()
        self._bar.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reporting

    def counts(self) -> dict[str, int]:
        """Failures per reason, sorted by reason."""
        return dict(sorted(self.failures.items()))

    @property
    def n_fetched(self) -> int:
        """Items with a file so far (all of them once :meth:`wait` returned)."""
        return sum(p is not None for p in self.result)

    def summary(self) -> dict:
        """What image.json records: counts only, no timings, sorted keys; the split between
        cached and downloaded files varies from run to run and is only printed."""
        n_fetched = self.n_fetched
        return {
            "n_with_url": self.n_with_url,
            "n_fetched": n_fetched,
            "fetch_coverage": round(n_fetched / self.n_with_url, 6) if self.n_with_url else None,
            "fetch_failures": self.counts(),
            "unreachable_hosts": self.network.unreachable_hosts(),
            "offline": self.network.offline,
        }

    def report(self) -> str:
        """One line for the console: where the files came from and what failed."""
        src = ", ".join(f"{k} {self.sources[k]}" for k in ("local", "cached", "downloaded"))
        failed = ", ".join(f"{k} {v}" for k, v in self.counts().items()) or "none"
        line = f"images: {self.n_with_url} with a URL: {src}; failed: {failed}"
        if self.network.offline:
            line += " (the network looks absent: the remaining URLs were not tried)"
        return line

    def warn(self) -> None:
        """One warning summing up the failures, if any."""
        counts = self.counts()
        if counts:
            n = sum(counts.values())
            summary = ", ".join(f"{k} {v}" for k, v in counts.items())
            msg = (
                f"{n} of {self.n} images could not be fetched (they get the mean image feature): "
                f"{summary}; e.g. {self.first_error[next(iter(counts))]}"
            )
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)


def fetch_images(
    urls: Sequence[str | None],
    cache_dir: Path,
    *,
    base_dir: Path = Path("."),
    dataset_root: Path | None = None,
    allow_files_outside: bool = False,
    progress: bool = True,
    **policy,
) -> tuple[list[Path | None], dict[str, int]]:
    """Fetch every image now (see :class:`ImageFetcher`; ``policy``: the fields of
    :class:`FetchPolicy`, e.g. ``timeout``, ``max_bytes``, ``workers``); return a local
    file per URL (``None`` where there is none) and the failures per reason, which are
    summed up in one warning, never raised. ``None``/empty entries are not failures."""
    with ImageFetcher(
        urls,
        cache_dir,
        FetchPolicy(**policy),
        base_dir=base_dir,
        dataset_root=dataset_root,
        allow_files_outside=allow_files_outside,
        progress=progress,
    ) as fetcher:
        paths = fetcher.wait()
    fetcher.warn()
    return paths, fetcher.counts()
