"""Shared fixtures: the real Amazon sample dumps and a throw-away local HTTP server."""

from __future__ import annotations

from sea.runtime import use_kernels

use_kernels("portable")  # as the pipeline's stages, before any test computes with torch

import functools  # noqa: E402
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AMAZON_REAL = REPO.parent / "shared" / "data" / "amazon-real"


#: The variables urllib takes proxies from (any ``*_proxy``, either case): cleared for every
#: test, so a developer's own proxy never carries the tests' 127.0.0.1 requests, and a
#: test that sets one (with monkeypatch) leaves it to itself.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="session")
def amazon_real() -> Path:
    """The folder of real Amazon dump samples (``../shared/data/amazon-real``), or skip."""
    if not AMAZON_REAL.is_dir():
        pytest.skip("../shared/data/amazon-real is absent: real-dump reader tests need the shared sample dumps")
    return AMAZON_REAL


class DirServer:
    """Serve directories over HTTP on 127.0.0.1; call it with a directory to get a base URL.

    Every request path (GET or HEAD, any server) is appended to :attr:`hits`.
    """

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def __call__(self, directory: str | Path) -> str:
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def send_head(self):  # noqa: ANN201 - the base class's signature
                hits.append(self.path)
                return super().send_head()

            def log_message(self, format: str, *args) -> None:  # keep test output quiet
                pass

        handler = functools.partial(Handler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="serve_dir", daemon=True)
        thread.start()
        self._servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()


@pytest.fixture
def serve_dir() -> Iterator[DirServer]:
    """Factory: ``base_url = serve_dir(directory)``; ``serve_dir.hits`` lists request paths.

    The servers are shut down when the test ends.
    """
    server = DirServer()
    try:
        yield server
    finally:
        server.close()
