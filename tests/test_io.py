"""Tests of sea.files and sea.net: atomic writes and verified downloads over a real local HTTP server."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sea.errors import ChecksumError, FetchError
from sea.files import atomic_path, sha256_file, write_json
from sea.net.download import fetch
from sea.net.urls import join_link, local_path, resolve_url

PAYLOAD = bytes(range(256)) * 4_000  # ~1 MB: more than one read chunk is not needed, but a real size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(tmp_path: Path, serve_dir) -> str:
    """A served folder holding data/payload.bin; returns the file's URL."""
    root = tmp_path / "www"
    (root / "data").mkdir(parents=True)
    (root / "data" / "payload.bin").write_bytes(PAYLOAD)
    return serve_dir(root) + "/data/payload.bin"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class CannedServer:
    """Answer the n-th connection on 127.0.0.1 with the n-th canned response, then hang up."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/file.bin"
        self.served = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for response in self.responses:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.served += 1  # before answering: the client may finish first
                conn.sendall(response)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def canned() -> Iterator:
    servers: list[CannedServer] = []

    def start(*responses: bytes) -> CannedServer:
        servers.append(CannedServer(list(responses)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ok_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body


# ----------------------------------------------------------------- fetch over HTTP


def test_fetch_http_with_checksum(tmp_path, served, serve_dir):
    dest = tmp_path / "out" / "payload.bin"
    assert fetch(served, dest, PAYLOAD_SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == PAYLOAD_SHA
    assert leftovers(dest.parent) == ["payload.bin"]
    assert serve_dir.hits == ["/data/payload.bin"]
    # the expected digest may be given in upper case
    fetch(served, dest, PAYLOAD_SHA.upper(), progress=False)


def test_fetch_wrong_checksum(tmp_path, served, serve_dir):
    dest = tmp_path / "out" / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=rf"sha256 mismatch for {served}.*expected {wrong}, got {PAYLOAD_SHA}"):
        fetch(served, dest, wrong, progress=False)  # default retries: a mismatch is not retried
    assert not dest.exists()
    assert leftovers(dest.parent) == []  # no temporary file left behind
    assert serve_dir.hits == ["/data/payload.bin"]


def test_fetch_wrong_checksum_keeps_old_file(tmp_path, served):
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"old")
    with pytest.raises(ChecksumError):
        fetch(served, dest, "0" * 64, progress=False)
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["payload.bin", "www"]


def test_fetch_404(tmp_path, served):
    url = served.replace("payload.bin", "missing.bin")
    dest = tmp_path / "out" / "missing.bin"
    with pytest.raises(FetchError, match=rf"{url}.*HTTP 404"):
        fetch(url, dest, retries=1, progress=False)
    assert leftovers(dest.parent) == []


def test_fetch_unreachable(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed on leaving the block: nobody listens there
    url = f"http://127.0.0.1:{port}/x.bin"
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(FetchError, match=rf"cannot fetch {url}"):
        fetch(url, dest, retries=1, timeout=5, progress=False)
    assert leftovers(dest.parent) == []


def test_fetch_body_shorter_than_announced(tmp_path, canned):
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"x" * 10)
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(FetchError, match=r"ended early: 10 of 100 bytes"):
        fetch(server.url, dest, retries=1, progress=False)
    assert leftovers(dest.parent) == []


def test_fetch_chunked_body_broken_off(tmp_path, canned):
    server = canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(FetchError, match=r"broke off"):
        fetch(server.url, dest, retries=1, progress=False)
    assert leftovers(dest.parent) == []


def test_fetch_retries_a_broken_download(tmp_path, canned):
    body = b"complete body"
    broken = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"
    server = canned(broken, ok_response(body))
    dest = tmp_path / "file.bin"
    fetch(server.url, dest, hashlib.sha256(body).hexdigest(), retries=2, progress=False)  # ~1 s back-off
    assert dest.read_bytes() == body and server.served == 2


# ----------------------------------------------------------------- local sources


def test_fetch_file_url_and_relative_path(tmp_path):
    src = tmp_path / "src dir" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    out = tmp_path / "out"
    fetch(src.as_uri(), out / "a.bin", PAYLOAD_SHA, progress=False)
    fetch("src dir/payload.bin", out / "b.bin", PAYLOAD_SHA, base_dir=tmp_path, progress=False)
    fetch("file:src%20dir/payload.bin", out / "c.bin", PAYLOAD_SHA, base_dir=tmp_path, progress=False)
    assert all((out / n).read_bytes() == PAYLOAD for n in ("a.bin", "b.bin", "c.bin"))
    with pytest.raises(ChecksumError):
        fetch(src.as_uri(), out / "d.bin", "f" * 64, progress=False)
    with pytest.raises(FetchError, match="cannot fetch"):
        fetch("src dir/absent.bin", out / "e.bin", base_dir=tmp_path, progress=False)
    assert leftovers(out) == ["a.bin", "b.bin", "c.bin"]


def test_resolve_url(tmp_path):
    assert resolve_url("https://example.org/a.json.gz") == "https://example.org/a.json.gz"
    assert resolve_url("data/a.json", tmp_path) == (tmp_path / "data" / "a.json").resolve().as_uri()
    assert resolve_url("file:data/a.json", tmp_path) == (tmp_path / "data" / "a.json").resolve().as_uri()
    assert resolve_url("file:///srv/a.json", tmp_path) == "file:///srv/a.json"
    assert resolve_url("file://localhost/srv/a.json", tmp_path) == "file:///srv/a.json"
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        resolve_url("ftp://example.org/a.json")
    for remote in ("file://fileserver/srv/a.json", "file://data/a.json"):  # a host: not a local file
        with pytest.raises(FetchError, match="names a file on host"):
            resolve_url(remote, tmp_path)


def test_join_link_takes_links_against_the_metadata_in_every_form(tmp_path):
    """A metadata file named in any accepted form gives its links the same files; links
    of other kinds are left for the fetcher to follow or refuse."""
    meta = tmp_path / "data" / "x" / "meta.json.gz"
    forms = ["data/x/meta.json.gz", "file:data/x/meta.json.gz", meta.as_uri(), f"file://localhost{meta}"]
    links = ["images/a b.png", "file:images/a%20b.png", "../up.png"]
    for link in links:
        named = {local_path(join_link(form, link), tmp_path).resolve() for form in forms}
        assert named == {(meta.parent / link.removeprefix("file:").replace("%20", " ")).resolve()}
    assert join_link("data/x/meta.json.gz", "images/a.png") == "data/x/images/a.png"  # relative stays relative
    for other in ("http://cdn.example/a.png", "ftp://h/a.png", "file://evil/a.png"):
        assert all(join_link(form, other) == other for form in forms)
    assert join_link("/srv/meta.json.gz", "/etc/passwd") == "/etc/passwd"  # refused later: outside the folder
    assert join_link("https://h/d/meta.json.gz", "../img/a.png") == "https://h/img/a.png"


# ----------------------------------------------------------------- atomic writes


def test_atomic_path_keeps_old_target_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == ["out.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert leftovers(target.parent) == ["out.json"]
