"""Fetching at scale against real HTTP servers on 127.0.0.1 (and 127.0.0.2, a second
"host"): thousands of images, per-host limits, 429/5xx with Retry-After, a killed run
resumed without refetching, a fast answer when hosts cannot be reached, and dump
downloads resumed with HTTP Range. Requests and bytes are counted on the server side;
nothing asserts a duration.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from servers import LocalHTTPServer

from sea.errors import ChecksumError, HTTPStatusError, IncompleteError
from sea.net.download import fetch
from sea.net.images import FetchPolicy, ImageCache, ImageFetcher, fetch_images
from sea.net.retry import backoff_delay, parse_retry_after
from sea.net.urls import cache_key

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 2000


def png(i: int) -> bytes:
    """A distinct 8x8 PNG for item ``i``."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer(LocalHTTPServer):
    """Serves ``/img/<i>.png``; ``/429/<i>.png?after=S`` answers 429 (Retry-After: S) to
    the first request for each path, ``/503/<i>.png`` answers 503 once, ``/500/<i>.png``,
    ``/404/<i>.png`` and ``/410/<i>.png`` always. Counts requests per path (:attr:`hits`)
    and the most requests in progress at once (:attr:`peak`)."""

    def __init__(self, host: str = "127.0.0.1", delay: float = 0.0) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                path, _, query = self.path.partition("?")
                with outer.lock:
                    outer.hits[path] += 1
                    seen = outer.hits[path]
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                try:
                    if delay:
                        time.sleep(delay)
                    kind, _, name = path.strip("/").partition("/")
                    i = int(name.split(".")[0])
                    if kind == "429" and seen == 1:
                        after = urllib.parse.parse_qs(query)["after"][0]
                        return self.answer(429, b"slow down", Retry_After=after)
                    if (kind == "503" and seen == 1) or kind in ("500", "404", "410"):
                        return self.answer(int(kind), b"no")
                    self.answer(200, png(i), Content_Type="image/png")
                finally:
                    with outer.lock:
                        outer.active -= 1

            def answer(self, status: int, body: bytes, **headers) -> None:
                self.send_response(status)
                for k, v in (headers | {"Content_Length": len(body), "Connection": "close"}).items():
                    self.send_header(k.replace("_", "-"), str(v))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        self.serve(Handler, host, queue_size=128)


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def closed_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fetcher_for(urls, cache, **policy) -> ImageFetcher:
    policy = {"allow_private_hosts": True, "backoff": 0.01, "timeout": 20} | policy
    return ImageFetcher(urls, cache, FetchPolicy(**policy), progress=False)


# --------------------------------------------------------------------------- thousands of images


def test_thousands_of_images_fetched_once_in_order_within_host_limits(tmp_path, images):
    second = ImageServer("127.0.0.2")  # another host: its own limit
    try:
        urls = [f"{(images if i % 2 else second).url}/img/{i}.png" for i in range(N_IMAGES)]
        urls += urls[:50] + [None]  # duplicates are fetched once; None is no failure
        cache = tmp_path / "cache"
        with fetcher_for(urls, cache, workers=8, per_host=3) as fetcher:
            paths = list(fetcher)  # read in item order while the rest is still fetching
        assert fetcher.counts() == {} and fetcher.sources["downloaded"] == N_IMAGES + 50
        assert all(paths[i].read_bytes() == png(i) for i in range(N_IMAGES))
        assert paths[N_IMAGES : N_IMAGES + 50] == paths[:50] and paths[-1] is None
        assert set(images.hits.values()) == {1} and set(second.hits.values()) == {1}
        assert sum(images.hits.values()) + sum(second.hits.values()) == N_IMAGES
        assert images.peak <= 3 and second.peak <= 3
        assert fetcher.summary() == {
            "n_with_url": N_IMAGES + 50,
            "n_fetched": N_IMAGES + 50,
            "fetch_coverage": 1.0,
            "fetch_failures": {},
            "unreachable_hosts": [],
            "offline": False,
        }

        # a second run takes everything from the cache (each file verified), no request
        again, failures = fetch_images(urls, cache, allow_private_hosts=True, progress=False)
        assert again == paths and failures == {}
        assert sum(images.hits.values()) + sum(second.hits.values()) == N_IMAGES
    finally:
        second.close()


def test_a_killed_run_is_resumed_without_refetching(tmp_path, images):
    """A separate process fetches until the server has answered 300 requests and is killed
    (SIGKILL: no clean-up). The next run fetches only what the cache lacks: every file that
    was complete is reused, and partial files never count."""
    urls = [f"{images.url}/img/{i}.png" for i in range(N_IMAGES)]
    cache = tmp_path / "cache"
    script = (
        "import sys; from sea.net.images import fetch_images; "
        "urls = sys.stdin.read().split(); "
        "fetch_images(urls, sys.argv[1], allow_private_hosts=True, workers=4, progress=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(cache)],
        stdin=subprocess.PIPE,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        text=True,
    )
    proc.stdin.write("\n".join(urls))
    proc.stdin.close()
    try:
        for _ in range(6000):  # at most ~60 s
            if sum(images.hits.values()) >= 300 or proc.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (cache / f".{cache_key(urls[-1])}.abcd1234.tmp").write_bytes(png(0)[:20])  # a write cut short
    complete = {name.split("-")[0] for name in os.listdir(cache) if not name.startswith(".")}
    first = sum(images.hits.values())
    assert 300 <= first < N_IMAGES and len(complete) >= 300 - 4

    paths, failures = fetch_images(urls, cache, allow_private_hosts=True, workers=4, progress=False)
    assert failures == {} and all(p.read_bytes() == png(i) for i, p in enumerate(paths))
    for i, url in enumerate(urls):  # complete files: never again; 2: in flight when killed
        assert images.hits[f"/img/{i}.png"] in ((1,) if cache_key(url) in complete else (1, 2))
    assert sum(images.hits.values()) <= N_IMAGES + 4  # at most the downloads in flight again
    assert sorted(os.listdir(cache)) == sorted(p.name for p in paths)  # no temporary left


# --------------------------------------------------------------------------- 429 and 5xx


def test_429_and_503_are_retried_honouring_retry_after(tmp_path, images):
    urls = (
        [f"{images.url}/429/{i}.png?after=0" for i in range(20)]
        + [f"{images.url}/503/{i}.png" for i in range(20, 40)]
        + [f"{images.url}/500/{i}.png" for i in range(40, 42)]
        + [f"{images.url}/429/{i}.png?after=3600" for i in range(42, 44)]
    )
    with pytest.warns(UserWarning, match="4 of 44 images could not be fetched"):
        paths, failures = fetch_images(
            urls, tmp_path / "cache", allow_private_hosts=True, retries=2, backoff=0.01, max_wait=30, progress=False
        )
    assert all(paths[i].read_bytes() == png(i) for i in range(40))
    assert failures == {"http_error": 2, "rate_limited": 2}
    assert all(images.hits[f"/429/{i}.png"] == 2 for i in range(20))
    assert all(images.hits[f"/503/{i}.png"] == 2 for i in range(20, 40))
    assert all(images.hits[f"/500/{i}.png"] == 3 for i in (40, 41))  # 1 + retries, then given up
    # Retry-After: 3600 is beyond max_wait: given up at once, not waited out
    assert all(images.hits[f"/429/{i}.png"] == 1 for i in (42, 43))


def test_retry_after_forms_and_deterministic_backoff():
    assert parse_retry_after("120") == 120.0
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon", now=now) is None and parse_retry_after(None) is None
    assert parse_retry_after("-5") is None
    waits = [backoff_delay(k, 1.0, "http://x/a.png") for k in (1, 2, 3)]
    assert waits == [backoff_delay(k, 1.0, "http://x/a.png") for k in (1, 2, 3)]  # no random state
    assert all(2 ** (k - 1) <= w < 1.5 * 2 ** (k - 1) for k, w in zip((1, 2, 3), waits))
    assert backoff_delay(1, 1.0, "http://x/b.png") != waits[0]  # URLs spread out
    assert HTTPStatusError("x", status=429).retryable and not HTTPStatusError("x", status=404).retryable


# --------------------------------------------------------------------------- no network


def test_closed_port_gives_up_after_a_bounded_number_of_attempts(tmp_path):
    port = closed_port()
    urls = [f"http://127.0.0.1:{port}/img/{i}.png" for i in range(N_IMAGES)]
    with fetcher_for(urls, tmp_path / "cache", workers=8, per_host=4, offline_after=3) as fetcher:
        assert fetcher.wait() == [None] * N_IMAGES
    counts = fetcher.counts()
    assert sum(counts.values()) == N_IMAGES and set(counts) == {"unreachable", "offline"}
    assert counts["unreachable"] <= 3 + 4  # offline_after, plus those in flight on the host
    assert fetcher.network.offline and fetcher.summary()["unreachable_hosts"] == ["127.0.0.1"]


def test_unresolvable_hosts_mean_offline_after_a_few_lookups(tmp_path):
    urls = [f"http://img{i % 100}.invalid/{i}.png" for i in range(N_IMAGES)]  # 100 hosts, none resolves
    with pytest.warns(UserWarning, match="offline"):
        paths, failures = fetch_images(urls, tmp_path / "cache", workers=8, offline_after=3, progress=False)
    assert paths == [None] * N_IMAGES
    assert set(failures) == {"unresolvable", "offline"} and failures["unresolvable"] <= 3 + 8


def test_one_dead_host_does_not_stop_the_others(tmp_path, images):
    dead = f"http://127.0.0.2:{closed_port('127.0.0.2')}"
    urls = [f"{images.url}/img/{i}.png" for i in range(300)] + [f"{dead}/img/{i}.png" for i in range(300)]
    with fetcher_for(urls, tmp_path / "cache", workers=8, per_host=2, offline_after=3) as fetcher:
        paths = fetcher.wait()
    assert all(paths[i].read_bytes() == png(i) for i in range(300)) and paths[300:] == [None] * 300
    counts = fetcher.counts()
    assert set(counts) == {"unreachable", "host_unreachable"} and counts["unreachable"] <= 3 + 2
    assert not fetcher.network.offline and fetcher.summary()["unreachable_hosts"] == ["127.0.0.2"]


def test_cached_images_are_used_offline(tmp_path, images):
    """Pre-fetch on a "networked" machine, move the cache, then fetch with every host gone."""
    urls = [f"{images.url}/img/{i}.png" for i in range(50)]
    fetch_images(urls, tmp_path / "online", allow_private_hosts=True, progress=False)
    (tmp_path / "online").rename(tmp_path / "moved")
    images.close()  # the network is gone: nothing listens on that port any more
    paths, failures = fetch_images(
        urls + [urls[0].replace("/0.png", "/999.png")], tmp_path / "moved", allow_private_hosts=True, progress=False
    )
    assert all(paths[i].read_bytes() == png(i) for i in range(50)) and paths[50] is None
    assert failures == {"unreachable": 1}


def test_urls_gone_for_good_are_not_asked_again(tmp_path, images):
    """404 and 410 are remembered in the cache; a 500 is asked again next run; the
    failures counted (what image.json records) are the same either way."""
    urls = [f"{images.url}/{kind}/{i}.png" for i, kind in enumerate(["img", "404", "410", "500"])]
    cache = tmp_path / "cache"
    first = fetch_images(urls, cache, allow_private_hosts=True, progress=False, retries=0)
    assert first[1] == {"http_error": 3} and first[0][0].read_bytes() == png(0)
    assert sorted(p.name.split(".", 1)[1] for p in cache.glob("*.gone")) == ["404.gone", "410.gone"]
    hits = dict(images.hits)
    assert hits == {"/img/0.png": 1, "/404/1.png": 1, "/410/2.png": 1, "/500/3.png": 1}

    second = fetch_images(urls, cache, allow_private_hosts=True, progress=False, retries=0)
    assert second[1] == first[1] and second[0] == first[0]
    assert dict(images.hits) == hits | {"/500/3.png": 2}  # only the 500 was asked again

    next(cache.glob("*.404.gone")).unlink()  # forgetting it asks again
    fetch_images(urls, cache, allow_private_hosts=True, progress=False, retries=0)
    assert images.hits["/404/1.png"] == 2 and images.hits["/410/2.png"] == 1


def test_partial_cache_files_never_count(tmp_path, images):
    url = f"{images.url}/img/5.png"
    cache = ImageCache(tmp_path / "cache")
    good = cache.download(url, timeout=10, max_bytes=10**6, allow_private=True)
    good.write_bytes(png(5)[:-3])  # cut short after it was stored
    assert ImageCache(tmp_path / "cache").get(url, 10**6) is None and not good.exists()


# --------------------------------------------------------------------------- resumable dumps


PAYLOAD = hashlib.sha256(b"seed").digest() * (3 * 2**20 // 32)  # 3 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class DumpServer(LocalHTTPServer):
    """Serves ``/dump.bin`` with an ETag (on a 206 too unless not ``etag_on_206``),
    honouring ``Range``/``If-Range`` unless ``ignore_range``; the first ``cut`` responses
    stop halfway through their body. Counts the body bytes it sent (:attr:`sent`) and the
    requests' Range headers."""

    def __init__(
        self,
        payload: bytes = PAYLOAD,
        *,
        cut: int = 0,
        ignore_range: bool = False,
        etag: str = '"v1"',
        etag_on_206: bool = True,
    ) -> None:
        self.payload, self.cut, self.ignore_range, self.etag = payload, cut, ignore_range, etag
        self.etag_on_206 = etag_on_206
        self.sent = 0
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                body, status, start = outer.payload, 200, 0
                if rng and not outer.ignore_range and self.headers.get("If-Range") in (None, outer.etag):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, body = 206, body[start:]
                self.send_response(status)
                if status == 200 or outer.etag_on_206:
                    self.send_header("ETag", outer.etag)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                self.end_headers()
                if outer.cut > 0:
                    outer.cut -= 1
                    body = body[: len(body) // 2]
                try:
                    self.wfile.write(body)
                    outer.sent += len(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.serve(Handler, path="/dump.bin")


@pytest.fixture
def dump_server() -> Iterator:
    servers: list[DumpServer] = []

    def start(**kw) -> DumpServer:
        servers.append(DumpServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_broken_off_dump_is_resumed_by_the_next_run(tmp_path, dump_server):
    server = dump_server(cut=1)
    dest, partial = tmp_path / "raw" / "dump.bin", tmp_path / "partial"
    with pytest.raises(IncompleteError):
        fetch(server.url, dest, PAYLOAD_SHA, retries=1, progress=False, partial_dir=partial)
    assert not dest.exists() and server.sent == len(PAYLOAD) // 2
    (part,) = partial.glob("*.part")
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]

    fetch(server.url, dest, PAYLOAD_SHA, retries=1, progress=False, partial_dir=partial)
    assert dest.read_bytes() == PAYLOAD and hashlib.sha256(dest.read_bytes()).hexdigest() == PAYLOAD_SHA
    assert server.sent == len(PAYLOAD)  # every byte served once
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert list(partial.iterdir()) == []


def cut_then_rerun(server, tmp_path: Path) -> Path:
    """A run whose download breaks off (the server cuts it), then a second run; the file."""
    dest, partial = tmp_path / "dump.bin", tmp_path / "partial"
    with pytest.raises(IncompleteError):
        fetch(server.url, dest, PAYLOAD_SHA, retries=1, progress=False, partial_dir=partial)
    fetch(server.url, dest, PAYLOAD_SHA, retries=1, progress=False, partial_dir=partial)
    return dest


def test_a_206_without_a_validator_still_resumes_whole(tmp_path, dump_server):
    """The server names its ETag on the 200 only: the resumed part keeps the one it was
    asked with, and the file is the whole payload, not its second half."""
    server = dump_server(cut=1, etag_on_206=False)
    assert cut_then_rerun(server, tmp_path).read_bytes() == PAYLOAD
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"] and server.sent == len(PAYLOAD)


def test_retries_within_one_run_resume_too(tmp_path, dump_server):
    server = dump_server(cut=2)
    dest = tmp_path / "dump.bin"
    fetch(server.url, dest, PAYLOAD_SHA, retries=3, backoff=0.01, progress=False, partial_dir=tmp_path / "p")
    assert dest.read_bytes() == PAYLOAD and server.sent == len(PAYLOAD)
    assert len(server.ranges) == 3


def test_a_server_ignoring_range_restarts_the_file(tmp_path, dump_server):
    server = dump_server(cut=1, ignore_range=True)
    assert cut_then_rerun(server, tmp_path).read_bytes() == PAYLOAD
    assert server.sent == len(PAYLOAD) // 2 + len(PAYLOAD)  # asked for the rest, got (and kept) all


def test_a_changed_file_is_not_spliced(tmp_path, dump_server):
    """The partial half of v1 is not continued with v2's bytes: If-Range fails, the
    server sends v2 whole."""
    old = dump_server(cut=1)
    dest, partial = tmp_path / "dump.bin", tmp_path / "p"
    with pytest.raises(IncompleteError):
        fetch(old.url, dest, retries=1, progress=False, partial_dir=partial)
    new_payload = PAYLOAD[::-1]
    old.payload, old.etag = new_payload, '"v2"'  # the file at that URL changes
    fetch(old.url, dest, hashlib.sha256(new_payload).hexdigest(), retries=1, progress=False, partial_dir=partial)
    assert dest.read_bytes() == new_payload
    assert old.sent == len(PAYLOAD) // 2 + len(new_payload)


def test_resumed_file_with_a_wrong_checksum_is_fetched_afresh_once(tmp_path, dump_server):
    server = dump_server(cut=1)
    dest, partial = tmp_path / "dump.bin", tmp_path / "p"
    with pytest.raises(IncompleteError):
        fetch(server.url, dest, retries=1, progress=False, partial_dir=partial)
    (part,) = partial.glob("*.part")
    part.write_bytes(b"x" * part.stat().st_size)  # the kept half got damaged on disk
    fetch(server.url, dest, PAYLOAD_SHA, retries=1, progress=False, partial_dir=partial)  # within one attempt
    assert dest.read_bytes() == PAYLOAD and list(partial.iterdir()) == []
    with pytest.raises(ChecksumError):  # a fresh file with a wrong sha256: refused, not retried
        fetch(server.url, tmp_path / "again.bin", "0" * 64, retries=3, progress=False, partial_dir=partial)
    assert list(partial.iterdir()) == [] and not (tmp_path / "again.bin").exists()


def test_download_stage_resumes_within_the_run(tmp_path, dump_server):
    from test_hostile_net import leftovers, stage, write_params

    server = dump_server(cut=1)
    write_params(tmp_path, name="big", reviews_url=server.url, reviews_sha256=PAYLOAD_SHA)
    proc = stage(tmp_path, "download")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "raw" / "big" / "dump.bin").read_bytes() == PAYLOAD
    assert server.sent == len(PAYLOAD)
    assert leftovers(tmp_path / "data" / "cache" / "downloads") == []
    assert leftovers(tmp_path / "data" / "raw") == ["big"]


@pytest.mark.parametrize(
    "section, cls, values, param",
    [
        ("features.image", "ImageFeatureConfig", {"per_host": 0}, "per_host"),
        ("features.image", "ImageFeatureConfig", {"retries": -1}, "retries"),
        ("features.image", "ImageFeatureConfig", {"backoff": -1}, "backoff"),
        ("features.image", "ImageFeatureConfig", {"max_wait": -1}, "max_wait"),
        ("features.image", "ImageFeatureConfig", {"offline_after": 0}, "offline_after"),
        ("features.image", "ImageFeatureConfig", {"min_coverage": 1.5}, "min_coverage"),
        ("features.image", "ImageFeatureConfig", {"max_image_mb": 0}, "max_image_mb"),
        ("dataset", "DatasetConfig", {"reviews_url": "x.json", "download_retries": -1}, "download_retries"),
    ],
)
def test_new_params_are_checked(section, cls, values, param):
    from sea.data.catalog import DatasetConfig
    from sea.errors import ConfigError
    from sea.features.image import ImageFeatureConfig

    classes = {c.__name__: c for c in (DatasetConfig, ImageFeatureConfig)}
    base = {"pretrained": "none"} if cls == "ImageFeatureConfig" else {}
    with pytest.raises(ConfigError, match=rf"\[{section}\]: .*{param}"):
        classes[cls].from_dict(base | values, section)


def test_min_coverage_stops_the_stage_in_one_line(tmp_path):
    """Offline (a closed port) with min_coverage 0.5: the stage fails fast, on one line."""
    import pandas as pd
    import yaml
    from test_hostile_net import stage, write_params

    port = closed_port()
    urls = [f"http://127.0.0.1:{port}/{i}.png" for i in range(200)]
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    pd.DataFrame({"item": range(200), "asin": [f"A{i}" for i in range(200)], "text": "", "image_url": urls}).astype(
        {"item": "int32"}
    ).to_parquet(processed / "items.parquet")
    write_params(tmp_path, name="shop")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["features"]["image"] |= {
        "pretrained": "none",
        "device": "cpu",
        "allow_private_hosts": True,
        "min_coverage": 0.5,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage(tmp_path, "image_features")
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if "stage failed" in ln]
    assert "only 0 of 200 item images" in line and "features.image.min_coverage 0.5" in line
    assert "network looks absent" in line
    assert not (tmp_path / "data" / "features").exists()
