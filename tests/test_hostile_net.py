"""Hostile inputs to the download and image stages, against real misbehaving HTTP servers
on 127.0.0.1: endless, trickling and short bodies, redirects to file:// and to refused
hosts, image paths outside the dataset, decompression bombs, dataset names that would
delete other folders, stale temporaries of killed runs; and all of it through a real
forward proxy (http_proxy/https_proxy), which serves every "public" host from 127.0.0.1.

Every server loop is bounded in count and time and stops when the test ends.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image
from servers import ForwardProxy, LocalHTTPServer

from sea.data.catalog import DatasetConfig
from sea.errors import ConfigError, DataError, FetchTimeoutError, RefusedError, TooLargeError
from sea.files import MB, atomic_dir, atomic_path, write_json
from sea.net.download import fetch
from sea.net.http import Deadline, is_public_address, open_public_http

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
#: The longest any server-side loop runs; a client that obeys its caps hangs up far sooner.
SERVER_LOOP_S = 30


def png_bytes(size: tuple[int, int] = (16, 16), colour: str = "red") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


PNG = png_bytes()


# --------------------------------------------------------------------------- a misbehaving server


class Hostile(LocalHTTPServer):
    """A threaded HTTP server on ``host`` whose paths misbehave on purpose.

    ``/ok.png`` a small PNG · ``/endless`` 200 with an endless body (no Content-Length) ·
    ``/slow`` Content-Length 40, one byte a second · ``/slow-headers`` one header byte a
    second · ``/short`` Content-Length 1000 but 10 bytes, then hang up ·
    ``/redirect?to=URL`` a 302 to URL · ``/loop`` redirects to itself.
    Request paths are recorded in :attr:`hits`.
    """

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def trickle(self, data: bytes, period: float = 1.0) -> None:
                """Send ``data`` one byte per ``period`` s (bounded by SERVER_LOOP_S)."""
                end = time.monotonic() + SERVER_LOOP_S
                for i in range(len(data)):
                    if outer.stop.is_set() or time.monotonic() > end:
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    outer.stop.wait(period)

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                outer.hits.append(self.path)
                path, _, query = self.path.partition("?")
                try:
                    getattr(self, "route_" + path.strip("/").replace("-", "_").replace(".", "_"), self.route_404)(query)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up, as it should

            def head(self, status: int = 200, **headers) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), str(v))
                self.end_headers()

            def route_404(self, query: str) -> None:
                self.head(404, Content_Length=0)

            def route_ok_png(self, query: str) -> None:
                self.head(200, Content_Length=len(PNG), Content_Type="image/png")
                self.wfile.write(PNG)

            def route_endless(self, query: str) -> None:
                self.head(200, Connection="close")
                block = b"\0" * 65536
                end = time.monotonic() + SERVER_LOOP_S
                for _ in range(100_000):  # at most 6.5 GB, which a capped client never takes
                    if outer.stop.is_set() or time.monotonic() > end:
                        return
                    self.wfile.write(block)

            def route_slow(self, query: str) -> None:
                body = PNG[:40]
                self.head(200, Content_Length=len(body))
                self.trickle(body)

            def route_slow_headers(self, query: str) -> None:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.trickle(b"X-Slow: " + b"a" * 60 + b"\r\n\r\n")

            def route_short(self, query: str) -> None:
                self.head(200, Content_Length=1000, Connection="close")
                self.wfile.write(PNG[:10])
                self.close_connection = True

            def route_redirect(self, query: str) -> None:
                import urllib.parse

                target = urllib.parse.parse_qs(query)["to"][0]
                self.head(302, Location=target, Content_Length=0)

            def route_loop(self, query: str) -> None:
                self.head(302, Location="/loop", Content_Length=0)

        self.serve(Handler, host, tls=tls)

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def allow_127_0_0_1(ip: str) -> bool:
    """Stand-in for "public" in tests that need a permitted first hop: only 127.0.0.1."""
    return ip == "127.0.0.1"


# --------------------------------------------------------------------------- dumps: size and time caps


def test_dump_endless_body_stops_at_the_size_cap(tmp_path, hostile):
    dest = tmp_path / "raw" / "dump.json.gz"
    with pytest.raises(TooLargeError, match="over the cap of 2,000,000 bytes"):
        fetch(f"{hostile.url}/endless", dest, max_bytes=2 * MB, total_timeout=60, retries=3, progress=False)
    assert leftovers(dest.parent) == []
    assert hostile.hits == ["/endless"]  # an oversized body is not retried


def test_dump_over_the_size_cap_by_content_length(tmp_path, hostile):
    with pytest.raises(TooLargeError, match=f"is {len(PNG):,} bytes, over the cap of 10"):
        fetch(f"{hostile.url}/ok.png", tmp_path / "x.png", max_bytes=10, progress=False)
    assert leftovers(tmp_path) == []


def test_dump_trickling_body_stops_at_the_total_time_cap(tmp_path, hostile):
    # 40 bytes at 1 byte/s: without the cap this download would succeed after 40 s
    dest = tmp_path / "raw" / "dump.json.gz"
    with pytest.raises(FetchTimeoutError, match="took longer than 2 s in total"):
        fetch(f"{hostile.url}/slow", dest, timeout=30, total_timeout=2, retries=3, progress=False)
    assert leftovers(dest.parent) == []
    assert hostile.hits == ["/slow"]


def test_dump_from_a_file_is_capped_too(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 5000)
    with pytest.raises(TooLargeError):
        fetch(str(src), tmp_path / "out" / "big.bin", max_bytes=4096, progress=False)
    assert leftovers(tmp_path / "out") == []


# --------------------------------------------------------------------------- images: caps and cache


def fetch_images(urls, cache, **kw):
    from sea.net.images import fetch_images as fetch

    kw = {"timeout": 10, "workers": 2, "dataset_root": None} | kw
    return fetch(urls, cache, **kw)


def test_image_endless_body_is_too_large_and_not_cached(tmp_path, hostile):
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="1 of 1 images could not be fetched.*too_large 1"):
        paths, failures = fetch_images([f"{hostile.url}/endless"], cache, max_bytes=MB, allow_private_hosts=True)
    assert paths == [None] and failures == {"too_large": 1}
    assert leftovers(cache) == []


def test_image_trickling_body_and_headers_time_out(tmp_path, hostile):
    cache = tmp_path / "cache"
    urls = [f"{hostile.url}/slow", f"{hostile.url}/slow-headers"]
    with pytest.warns(UserWarning, match="timeout 2"):
        paths, failures = fetch_images(urls, cache, timeout=2, allow_private_hosts=True)
    assert paths == [None, None] and failures == {"timeout": 2}
    assert leftovers(cache) == []


def test_image_short_body_is_not_cached_and_fetched_again(tmp_path, hostile):
    cache = tmp_path / "cache"
    url = f"{hostile.url}/short"
    for run in (1, 2):  # a broken-off body is retried (here twice, without waiting), in every run
        with pytest.warns(UserWarning, match="incomplete 1.*ended early: 10 of 1000 bytes"):
            paths, failures = fetch_images([url], cache, allow_private_hosts=True, retries=2, backoff=0)
        assert paths == [None] and failures == {"incomplete": 1}
        assert leftovers(cache) == []
        assert hostile.hits == ["/short"] * 3 * run


def test_image_cache_is_verified_when_reused(tmp_path, hostile):
    cache = tmp_path / "cache"
    url = f"{hostile.url}/ok.png"
    (path,), failures = fetch_images([url], cache, allow_private_hosts=True)
    assert failures == {} and path.read_bytes() == PNG and path.parent == cache
    assert fetch_images([url], cache, allow_private_hosts=True)[0] == [path]
    assert hostile.hits == ["/ok.png"]  # reused without a request

    for damage in (b"", PNG[:-1]):  # emptied, truncated: fetched again
        path.write_bytes(damage)
        (again,), _ = fetch_images([url], cache, allow_private_hosts=True)
        assert again == path and again.read_bytes() == PNG
    assert hostile.hits == ["/ok.png"] * 3
    assert leftovers(cache) == [path.name]


def test_image_cache_removes_stale_temporaries(tmp_path, hostile):
    from sea.net.urls import cache_key

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".{cache_key('http://x/a.png')}.ab12cd_9.tmp"
    stale.write_bytes(b"partial")
    other = cache / "notes.txt"  # not a cache temporary: kept
    other.write_text("keep")
    fetch_images([f"{hostile.url}/ok.png"], cache, allow_private_hosts=True)
    assert not stale.exists() and other.exists()


# --------------------------------------------------------------------------- images: where URLs may lead


def test_loopback_is_refused_unless_allowed(tmp_path, hostile):
    cache = tmp_path / "cache"
    urls = [
        f"{hostile.url}/ok.png",
        f"http://localhost:{hostile.server.server_address[1]}/ok.png",
        f"http://[::ffff:127.0.0.1]:{hostile.server.server_address[1]}/ok.png",
    ]
    with pytest.warns(UserWarning, match="refused_private_host 3"):
        paths, failures = fetch_images(urls, cache)
    assert paths == [None] * 3 and failures == {"refused_private_host": 3}
    assert hostile.hits == []  # not even connected to

    paths, failures = fetch_images(urls[:2], cache, allow_private_hosts=True)
    assert failures == {} and all(p.read_bytes() == PNG for p in paths)


def test_redirect_to_file_url_is_refused(tmp_path, hostile):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    urls = [f"{hostile.url}/redirect?to={secret.as_uri()}", f"{hostile.url}/redirect?to=file:///etc/passwd"]
    with pytest.warns(UserWarning, match="refused_scheme 2"):
        paths, failures = fetch_images(
            urls, tmp_path / "cache", allow_private_hosts=True, dataset_root=tmp_path, allow_files_outside=True
        )
    assert paths == [None, None] and failures == {"refused_scheme": 2}
    assert leftovers(tmp_path / "cache") == []


def test_every_redirect_hop_is_checked(hostile):
    """The first hop (127.0.0.1) is allowed; a redirect to another address (127.0.0.2) is
    refused before anything is sent there."""
    second = Hostile("127.0.0.2")
    try:
        target = f"{second.url}/ok.png"
        with Deadline(10) as deadline, pytest.raises(RefusedError, match="non-public address 127.0.0.2") as err:
            with open_public_http(f"{hostile.url}/redirect?to={target}", deadline, allow_address=allow_127_0_0_1):
                pass
        assert err.value.reason == "refused_private_host"
        assert second.hits == [] and len(hostile.hits) == 1
        # and when the policy allows the second host, the redirect is followed
        with (
            Deadline(10) as deadline,
            open_public_http(f"{hostile.url}/redirect?to={target}", deadline, allow_address=lambda ip: True) as resp,
        ):
            assert resp.read() == PNG
        assert second.hits == ["/ok.png"]
    finally:
        second.close()


def test_malformed_urls_are_counted_not_raised(tmp_path, hostile):
    urls = [
        "http://[::1/x.png",
        f"{hostile.url}/redirect?to=http://[bad/x.png",
        "http:///x.png",
        "http://127.0.0.1:99999/x.png",
    ]
    with pytest.warns(UserWarning, match="bad_url 4"):
        paths, failures = fetch_images(urls, tmp_path / "cache", allow_private_hosts=True)
    assert paths == [None] * 4 and failures == {"bad_url": 4}


def test_redirect_loop_is_bounded(tmp_path, hostile):
    with pytest.warns(UserWarning, match="too_many_redirects 1"):
        _, failures = fetch_images([f"{hostile.url}/loop"], tmp_path / "cache", allow_private_hosts=True)
    assert failures == {"too_many_redirects": 1}
    assert len(hostile.hits) == 6  # the first request and 5 redirects


def self_signed_tls(folder: Path, ip: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for the address ``ip``, and
    the certificate's file (to trust it on the client side)."""
    pytest.importorskip("cryptography", reason="the TLS test makes its certificate with `cryptography`")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"cert-{ip}.pem", folder / f"key-{ip}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert_file


def test_https_images_are_verified_and_bounded(tmp_path, monkeypatch):
    import sea.net.http

    ctx, cert_file = self_signed_tls(tmp_path)
    server = Hostile(tls=ctx)
    try:
        cache = tmp_path / "cache"
        urls = [f"{server.url}/ok.png", f"{server.url}/slow-headers", f"{server.url}/endless"]
        # not trusted yet: the certificate check fails, nothing is cached
        monkeypatch.setattr(sea.net.http, "_ssl_context", None)
        with pytest.warns(UserWarning, match="unreachable 3.*CERTIFICATE_VERIFY_FAILED"):
            paths, _ = fetch_images(urls, cache, allow_private_hosts=True)
        assert paths == [None] * 3 and leftovers(cache) == []

        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        monkeypatch.setattr(sea.net.http, "_ssl_context", None)
        with pytest.warns(UserWarning, match="2 of 3 images"):
            paths, failures = fetch_images(urls, cache, allow_private_hosts=True, timeout=2, max_bytes=MB)
        assert paths[0].read_bytes() == PNG and paths[1:] == [None, None]
        assert failures == {"timeout": 1, "too_large": 1}
        assert leftovers(cache) == [paths[0].name]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),
        ("64:ff9b::7f00:1", False),
    ],
)
def test_public_addresses(ip, public):
    assert is_public_address(ip) is public


def test_local_images_only_inside_the_dataset(tmp_path):
    dataset = tmp_path / "ds"
    inside = dataset / "images" / "a.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(PNG)
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    (dataset / "images" / "link.png").symlink_to(secret)  # a link out of the dataset
    urls = [
        "ds/images/a.png",  # inside, relative to base_dir
        inside.as_uri(),  # inside, file://
        str(secret),  # outside, absolute
        "ds/images/../../secret.png",  # outside through ..
        "ds/images/link.png",  # outside through a symlink
        "file:///etc/passwd",
        "/proc/self/environ",
    ]
    with pytest.warns(UserWarning, match="refused_outside_dataset 5"):
        paths, failures = fetch_images(urls, tmp_path / "cache", base_dir=tmp_path, dataset_root=dataset)
    assert paths[:2] == [inside, inside] and paths[2:] == [None] * 5
    assert failures == {"refused_outside_dataset": 5}

    # remote metadata (no dataset folder): no local file at all
    with pytest.warns(UserWarning, match="refused_outside_dataset 2"):
        paths, _ = fetch_images(urls[:2], tmp_path / "cache", base_dir=tmp_path, dataset_root=None)
    assert paths == [None, None]

    # the opt-in: files outside are used; missing files and a FIFO (a reader would block) are not
    fifo = dataset / "images" / "fifo.png"
    os.mkfifo(fifo)
    with pytest.warns(UserWarning, match="missing_file 2"):
        paths, failures = fetch_images(
            urls[:5] + [str(fifo), "ds/absent.png"],
            tmp_path / "cache",
            base_dir=tmp_path,
            dataset_root=dataset,
            allow_files_outside=True,
        )
    assert paths == [inside, inside, secret, secret, secret, None, None] and failures == {"missing_file": 2}


def test_local_image_over_the_size_cap(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(PNG + b"\0" * 2000)
    with pytest.warns(UserWarning, match="too_large 1"):
        paths, _ = fetch_images([str(big)], tmp_path / "cache", dataset_root=tmp_path, max_bytes=1000)
    assert paths == [None]


# --------------------------------------------------------------------------- decompression bombs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` with one tiny IDAT chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def clip():
    from sea.features.image import load_clip

    return load_clip("ViT-B-32", "none", device="cpu", seed=0)


def test_bombs_are_refused_from_the_header(tmp_path, clip):
    from sea.features.image import encode_images

    strip = tmp_path / "strip.png"
    Image.new("L", (200_000, 1)).save(strip)  # a few hundred bytes; CLIP would make it 44.8e6 x 224
    assert strip.stat().st_size < 2000
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(8000, 6000))  # 48 MP announced
    tall = tmp_path / "tall.png"
    Image.new("RGB", (10, 300)).save(tall)  # 1:30, small but still refused
    good = tmp_path / "good.png"
    good.write_bytes(PNG)
    text = tmp_path / "text.png"
    text.write_text("not an image")

    model, preprocess, _ = clip
    x, info = encode_images([strip, huge, tall, good, text], model, preprocess, device="cpu")
    assert info["n_decoded"] == 1 and info["n_undecodable"] == 4
    assert info["undecodable_reasons"] == {"extreme_aspect_ratio": 2, "too_many_pixels": 1, "undecodable": 1}
    assert (x == x[3]).all()  # the refused ones got the mean: the one decoded image's feature


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("name", [".", "..", "", "a/", "a\\b", "a\0b"])
def test_atomic_targets_must_have_a_plain_name(tmp_path, name):
    keep = tmp_path / "raw" / "other" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("keep")
    targets = [f"{tmp_path}/raw/{name}"]
    if name in ("..", "a\\b", "a\0b"):  # names a Path keeps as they are (it drops "." and "/")
        targets.append(tmp_path / "raw" / name)
    for target in targets:
        for writer in (atomic_dir, atomic_path):
            with pytest.raises(DataError, match="not a plain"):
                with writer(target):
                    pass
    assert keep.read_text() == "keep" and leftovers(tmp_path / "raw") == ["other"]


def test_atomic_dir_replaces_only_its_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    target = tmp_path / "out" / "data"
    target.parent.mkdir()
    target.symlink_to(outside, target_is_directory=True)  # replaced, not followed
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not target.is_symlink() and leftovers(target) == ["new.txt"]
    assert (outside / "keep.txt").read_text() == "keep"

    with atomic_dir(target) as tmp:  # an old folder is replaced whole
        (tmp / "newer.txt").write_text("newer")
    assert leftovers(target) == ["newer.txt"] and leftovers(target.parent) == ["data"]


def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    own_file = tmp_path / ".out.json.k1ll3d_x.tmp"
    own_dir = tmp_path / ".out.json.abcdefgh.tmp"
    others = [
        tmp_path / ".out.json.x.abcdefgh.tmp",  # the temporary of another target "out.json.x"
        tmp_path / ".other.json.abcdefgh.tmp",
        tmp_path / ".out.json.tmp",
        tmp_path / "out.json.abcdefgh.tmp",
    ]
    own_file.write_text("partial")
    own_dir.mkdir()
    (own_dir / "half").write_text("half")
    for p in others:
        p.write_text("not ours")
    write_json(tmp_path / "out.json", {"a": 1})
    assert not own_file.exists() and not own_dir.exists()
    assert all(p.read_text() == "not ours" for p in others)

    stale = tmp_path / ".folder.zzzz9999.tmp"
    stale.mkdir()
    with atomic_dir(tmp_path / "folder"):
        pass
    assert not stale.exists() and all(p.exists() for p in others)


# --------------------------------------------------------------------------- the download stage


def stage(cwd: Path, name: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "pipeline" / f"{name}.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stage_module(name: str):
    """pipeline/<name>.py as a module (the stage scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"pipeline_{name}", REPO / "pipeline" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_params(cwd: Path, **dataset) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = {
        "reviews_url": str(SAMPLE / "reviews_Sample_5.json.gz"),
        "meta_url": None,
        "reviews_sha256": None,
        "meta_sha256": None,
    } | dataset
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("name", [".", "..", "", "a/..", "/tmp"])
def test_download_stage_refuses_names_that_reach_outside(tmp_path, name):
    keep = [tmp_path / "data" / "raw" / "other" / "reviews.json.gz", tmp_path / "data" / "keep.txt"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    write_params(tmp_path, name=name)
    proc = stage(tmp_path, "download")
    assert proc.returncode == 1 and "name" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert all(p.read_text() == "keep" for p in keep)
    assert leftovers(tmp_path / "data" / "raw") == ["other"]

    write_params(tmp_path, name="fine")  # the same set-up with a plain name works
    assert stage(tmp_path, "download").returncode == 0
    assert leftovers(tmp_path / "data" / "raw") == ["fine", "other"] and all(p.read_text() == "keep" for p in keep)


def test_download_stage_refuses_reviews_and_meta_with_one_file_name(tmp_path):
    write_params(tmp_path, name="twins", reviews_url="a/dump.json.gz", meta_url="http://example.org/b/dump.json.gz")
    proc = stage(tmp_path, "download")
    assert proc.returncode == 1
    assert "reviews_url and meta_url" in proc.stderr and "'dump.json.gz'" in proc.stderr
    assert not (tmp_path / "data").exists()

    dump_files = stage_module("download").dump_files  # the same check, called directly
    cfg = DatasetConfig.from_dict(
        {"name": "twins", "reviews_url": "x/r.json.gz", "meta_url": "y/r.json.gz?v=1"}, "dataset"
    )
    with pytest.raises(ConfigError, match="reviews_url and meta_url both end in the file name 'r.json.gz'"):
        dump_files(cfg)
    cfg = DatasetConfig.from_dict({"name": "twins", "reviews_url": "http://h/a/..", "meta_url": None}, "dataset")
    with pytest.raises(ConfigError, match="reviews_url 'http://h/a/..' does not end in a usable file name"):
        dump_files(cfg)


def test_download_stage_caps_size_and_time(tmp_path, hostile):
    write_params(tmp_path, name="capped", reviews_url=f"{hostile.url}/endless", max_download_mb=1)
    proc = stage(tmp_path, "download")
    assert proc.returncode == 1 and "dataset.max_download_mb: 1" in proc.stderr
    write_params(tmp_path, name="capped", reviews_url=f"{hostile.url}/slow", download_timeout=2)
    proc = stage(tmp_path, "download")
    assert proc.returncode == 1 and "dataset.download_timeout: 2" in proc.stderr
    assert leftovers(tmp_path / "data" / "raw") == []


# --------------------------------------------------------------------------- the image stage


def test_image_stage_with_hostile_urls(tmp_path, hostile):
    """The stage script on an item table with hostile image URLs: every refusal counted in
    image.json, nothing outside the dataset read, no absolute path written."""
    import pandas as pd

    dataset = tmp_path / "data" / "shop"
    draw = dataset / "images" / "a.png"
    draw.parent.mkdir(parents=True)
    draw.write_bytes(PNG)
    strip = dataset / "images" / "strip.png"
    Image.new("L", (200_000, 1)).save(strip)
    (tmp_path / "outside.png").write_bytes(png_bytes(colour="blue"))
    urls = [
        "data/shop/images/a.png",
        "data/shop/images/strip.png",
        "data/shop/images/../../../outside.png",
        "file:///etc/passwd",
        f"{hostile.url}/ok.png",
        f"{hostile.url}/redirect?to=file:///etc/passwd",
        "data/shop/images/absent.png",
        None,
    ]
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    pd.DataFrame(
        {"item": range(len(urls)), "asin": [f"A{i}" for i in range(len(urls))], "text": "", "image_url": urls}
    ).astype({"item": "int32"}).to_parquet(processed / "items.parquet")
    write_params(tmp_path, name="shop", meta_url="data/shop/meta.json.gz")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["features"]["image"] |= {"pretrained": "none", "device": "cpu", "timeout": 5, "workers": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    proc = stage(tmp_path, "image_features")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "data" / "features" / "image.json").read_text()
    info = json.loads(text)
    assert info["fetch_failures"] == {"missing_file": 1, "refused_outside_dataset": 2, "refused_private_host": 2}
    assert info["undecodable_reasons"] == {"extreme_aspect_ratio": 1}
    assert (info["n_with_url"], info["n_fetched"], info["n_decoded"]) == (7, 2, 1)
    assert hostile.hits == []
    assert str(tmp_path) not in text and "/etc" not in text
    assert "could not be fetched" in proc.stderr


# --------------------------------------------------------------------------- the metadata URL's forms


META = SAMPLE / "meta_Sample.json.gz"
#: The same metadata file in every form dataset.meta_url accepts (relative ones from the repo root).
META_FORMS = [
    "data/sample/meta_Sample.json.gz",
    "file:data/sample/meta_Sample.json.gz",
    META.as_uri(),
    f"file://localhost{META}",
]


@pytest.mark.parametrize("form", META_FORMS)
def test_every_meta_url_form_names_the_same_images(tmp_path, monkeypatch, form):
    """The sample's metadata named in each form: the same dataset folder, the same image
    files (the graph stage's item table, then the image stage's fetcher on a few items),
    and links that leave the folder are still refused."""
    import pandas as pd

    from sea.data.amazon import read_metadata
    from sea.data.catalog import resolve
    from sea.data.items import item_table
    from sea.net.images import FetchPolicy, ImageFetcher

    monkeypatch.chdir(REPO)  # the stages run in the repo root: relative forms are taken from there
    ds = DatasetConfig.from_dict({"name": "sample", "meta_url": form}, "dataset")
    meta_url = next(f.url for f in resolve(ds) if f.role == "meta")
    assert stage_module("image_features").dataset_root(ds) == SAMPLE

    meta = read_metadata(META).head(5)
    escapes = ["../reviews_Sample_5.json.gz", "file:../../README.md", "images/../../../README.md", "/etc/passwd"]
    meta = pd.concat(
        [meta, meta.tail(len(escapes)).assign(asin=[f"X{i}" for i in range(len(escapes))], image_url=escapes)]
    )
    items, _ = item_table(pd.Index(meta["asin"]), meta.itertuples(index=False, name=None), meta_url)
    with ImageFetcher(
        items["image_url"].tolist(),
        tmp_path / "cache",
        FetchPolicy(workers=2),
        dataset_root=stage_module("image_features").dataset_root(ds),
        progress=False,
    ) as fetcher:
        paths = fetcher.wait()
    assert paths == [SAMPLE / "images" / f"{a}.png" for a in meta["asin"][:5]] + [None] * len(escapes)
    assert fetcher.counts() == {"refused_outside_dataset": len(escapes)}
    assert not (tmp_path / "cache").exists()  # local files are read in place


@pytest.mark.parametrize(
    "url",
    [
        "file://fileserver/share/meta.json.gz",
        "file://data/sample/meta_Sample.json.gz",
        "ftp://example.org/meta.json.gz",
        "file:",
    ],
)
def test_meta_url_that_is_no_local_file_url_is_refused_in_one_line(tmp_path, url):
    with pytest.raises(ConfigError, match=r"^params\.yaml \[dataset\]: meta_url: "):
        DatasetConfig.from_dict({"name": "shop", "reviews_url": "r.json.gz", "meta_url": url}, "dataset")
    write_params(tmp_path, name="shop", meta_url=url)
    proc = stage(tmp_path, "download")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "meta_url" in proc.stderr and not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- through a proxy


#: A public address the tests only name: the test proxy serves it (and any host) from 127.0.0.1.
PUBLIC = "93.184.216.34"


@pytest.fixture
def proxy(hostile, monkeypatch) -> Iterator[ForwardProxy]:
    """A forward proxy answering every host from ``hostile``, set as ``http_proxy``."""
    server = ForwardProxy(hostile.url)
    monkeypatch.setenv("http_proxy", server.url)
    yield server
    server.close()


def test_image_of_a_public_address_through_the_proxy(tmp_path, hostile, proxy, monkeypatch):
    import base64

    url = f"http://{PUBLIC}/ok.png"
    (path,), failures = fetch_images([url], tmp_path / "cache")
    assert failures == {} and Image.open(path).size == (16, 16)  # the bytes arrived whole and decode
    assert proxy.requests == [f"GET {url}"] and hostile.hits == ["/ok.png"] and proxy.auth == [None]

    # credentials in the proxy URL are sent as Proxy-Authorization (as urllib does for the dumps)
    monkeypatch.setenv("http_proxy", proxy.url.replace("://", "://lab:s%40cret@"))
    fetch_images([f"{url}?second"], tmp_path / "cache")
    assert proxy.auth[1] == "Basic " + base64.b64encode(b"lab:s@cret").decode()


def test_private_targets_are_refused_before_the_proxy_is_asked(tmp_path, hostile, proxy):
    port = hostile.server.server_address[1]
    urls = [
        f"http://127.0.0.1:{port}/ok.png",
        "http://10.1.2.3/ok.png",
        f"http://localhost:{port}/ok.png",
        "http://[::1]/ok.png",
        "http://169.254.169.254/latest/meta-data",
    ]
    with pytest.warns(UserWarning, match="refused_private_host 5"):
        paths, failures = fetch_images(urls, tmp_path / "cache")
    assert paths == [None] * 5 and failures == {"refused_private_host": 5}
    assert proxy.requests == [] and hostile.hits == []  # nobody was asked

    # allow_private_hosts: the same check lets them pass, and they go through the proxy
    paths, failures = fetch_images(urls[:3], tmp_path / "cache", allow_private_hosts=True)
    assert failures == {} and all(p.read_bytes() == PNG for p in paths)
    assert sorted(proxy.requests) == sorted(f"GET {u}" for u in urls[:3])


def test_redirects_relayed_by_the_proxy_are_checked(tmp_path, hostile, proxy):
    port = hostile.server.server_address[1]
    base = f"http://{PUBLIC}/redirect?to="
    urls = [
        base + "http://10.0.0.1/ok.png",
        base + f"http://127.0.0.1:{port}/ok.png",
        base + "file:///etc/passwd",
        base + "http://93.184.216.35/ok.png",
        f"http://{PUBLIC}/loop",
    ]
    with pytest.warns(UserWarning, match="4 of 5 images"):
        paths, failures = fetch_images(urls, tmp_path / "cache")
    assert failures == {"refused_private_host": 2, "refused_scheme": 1, "too_many_redirects": 1}
    assert paths[:3] == [None] * 3 and paths[3].read_bytes() == PNG and paths[4] is None
    # each refused redirect: one request (the first hop), none to where it led
    assert sorted(set(proxy.requests)) == sorted({f"GET {u}" for u in urls} | {"GET http://93.184.216.35/ok.png"})
    assert len(proxy.requests) == 4 + 1 + 6  # the loop: the first request and 5 redirects


def test_no_proxy_hosts_are_fetched_directly_under_the_same_rule(tmp_path, hostile, proxy, monkeypatch):
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    url = f"{hostile.url}/ok.png"
    with pytest.warns(UserWarning, match="refused_private_host 1"):
        fetch_images([url], tmp_path / "cache")
    assert hostile.hits == [] and proxy.requests == []

    (path,), failures = fetch_images([url], tmp_path / "cache", allow_private_hosts=True)
    assert failures == {} and path.read_bytes() == PNG
    assert hostile.hits == ["/ok.png"] and proxy.requests == []  # straight to the server

    fetch_images([f"http://{PUBLIC}/ok.png"], tmp_path / "cache")  # a host not listed: through the proxy
    assert proxy.requests == [f"GET http://{PUBLIC}/ok.png"]


def test_size_and_time_caps_hold_through_the_proxy(tmp_path, hostile, proxy):
    urls = [f"http://{PUBLIC}/endless", f"http://{PUBLIC}/slow", f"http://{PUBLIC}/slow-headers"]
    with pytest.warns(UserWarning, match="3 of 3 images"):
        paths, failures = fetch_images(urls, tmp_path / "cache", timeout=2, max_bytes=MB)
    assert paths == [None] * 3 and failures == {"too_large": 1, "timeout": 2}
    assert leftovers(tmp_path / "cache") == []


def test_a_proxy_that_never_answers_times_out(tmp_path, monkeypatch):
    with socket.socket() as silent:  # the kernel accepts connections; nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for var in ("http_proxy", "https_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.warns(UserWarning, match="timeout 2"):  # the GET, and the CONNECT of https
            paths, failures = fetch_images(
                [f"http://{PUBLIC}/a.png", f"https://{PUBLIC}/b.png"], tmp_path / "cache", timeout=2
            )
    assert paths == [None, None] and failures == {"timeout": 2}


def test_a_proxy_refusing_connections_means_offline(tmp_path, monkeypatch):
    from sea.net.images import FetchPolicy, ImageFetcher

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    urls = [f"http://93.184.{i // 200}.{i % 200 + 1}/{i}.png" for i in range(400)]  # 400 public hosts
    with ImageFetcher(urls, tmp_path / "cache", FetchPolicy(workers=8, offline_after=3), progress=False) as fetcher:
        assert fetcher.wait() == [None] * 400
    counts = fetcher.counts()
    assert set(counts) == {"unreachable", "offline"} and counts["unreachable"] <= 3 + 8
    assert fetcher.network.offline and "cannot connect to proxy 127.0.0.1" in fetcher.first_error["unreachable"]


def test_a_proxy_url_that_is_not_http_is_refused_without_its_password(tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "socks5://lab:s3cret@127.0.0.1:1080")
    with pytest.warns(UserWarning, match=r"unreachable 1.*http_proxy 'socks5://127\.0\.0\.1:1080' is not an http"):
        paths, _ = fetch_images([f"http://{PUBLIC}/a.png"], tmp_path / "cache")
    assert paths == [None]


def test_https_through_the_proxy_is_a_tunnel_verified_against_the_target(tmp_path, monkeypatch):
    """CONNECT to the target; TLS inside is checked against the target's name (a certificate
    for the proxy's own address is refused); the caps hold inside the tunnel; dumps take the
    same tunnel."""
    import hashlib

    import sea.net.http

    ctx, cert_file = self_signed_tls(tmp_path, PUBLIC)
    server = Hostile(tls=ctx)
    proxy = ForwardProxy(server.url)
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        monkeypatch.setattr(sea.net.http, "_ssl_context", None)
        url = f"https://{PUBLIC}/ok.png"
        (path,), failures = fetch_images([url], tmp_path / "cache")
        assert failures == {} and path.read_bytes() == PNG
        assert proxy.requests == [f"CONNECT {PUBLIC}:443"] and server.hits == ["/ok.png"]

        with pytest.warns(UserWarning, match="refused_private_host 1"):  # not even a CONNECT
            fetch_images([f"https://127.0.0.1:{server.server.server_address[1]}/ok.png"], tmp_path / "cache")
        with pytest.warns(UserWarning, match="2 of 2 images"):
            _, failures = fetch_images(
                [f"https://{PUBLIC}/slow-headers", f"https://{PUBLIC}/endless"],
                tmp_path / "cache",
                timeout=2,
                max_bytes=MB,
            )
        assert failures == {"timeout": 1, "too_large": 1} and len(proxy.requests) == 3

        dest = fetch(
            f"https://{PUBLIC}/ok.png",
            tmp_path / "raw" / "ok.png",
            hashlib.sha256(PNG).hexdigest(),
            progress=False,
            total_timeout=30,
        )
        assert dest.read_bytes() == PNG and proxy.requests[-1] == f"CONNECT {PUBLIC}:443"
    finally:
        proxy.close()
        server.close()

    # the proxy's own address in the certificate, not the target's: refused
    ctx, cert_file = self_signed_tls(tmp_path, "127.0.0.1")
    server = Hostile(tls=ctx)
    proxy = ForwardProxy(server.url)
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        monkeypatch.setattr(sea.net.http, "_ssl_context", None)
        with pytest.warns(UserWarning, match="unreachable 1.*CERTIFICATE_VERIFY_FAILED.*mismatch"):
            fetch_images([f"https://{PUBLIC}/ok.png"], tmp_path / "cache2")
        assert proxy.requests == [f"CONNECT {PUBLIC}:443"] and server.hits == []
    finally:
        proxy.close()
        server.close()


def test_dump_downloads_take_the_same_proxy(tmp_path, hostile, monkeypatch):
    """The dumps go through urllib: the proxy variables as they are at each download."""
    import hashlib

    sha = hashlib.sha256(PNG).hexdigest()
    fetch(f"{hostile.url}/ok.png", tmp_path / "a" / "ok.png", sha, progress=False)  # before any proxy is set
    proxy = ForwardProxy(hostile.url)
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        url = f"http://{PUBLIC}/ok.png"
        assert fetch(url, tmp_path / "b" / "ok.png", sha, progress=False, total_timeout=30).read_bytes() == PNG
        assert proxy.requests == [f"GET {url}"]
        with pytest.raises(TooLargeError):
            fetch(f"http://{PUBLIC}/endless", tmp_path / "c" / "x", max_bytes=MB, progress=False, total_timeout=30)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        fetch(f"{hostile.url}/ok.png", tmp_path / "d" / "ok.png", sha, progress=False)
        assert len(proxy.requests) == 2 and hostile.hits == ["/ok.png", "/ok.png", "/endless", "/ok.png"]
    finally:
        proxy.close()
