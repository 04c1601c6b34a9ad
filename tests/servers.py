"""A real HTTP server on 127.0.0.1 (or another loopback host) for the download and image
tests: a request handler class served from a daemon thread on a free port; and a forward
proxy built on it."""

from __future__ import annotations

import contextlib
import http.server
import select
import socket
import ssl
import threading
import time
import urllib.parse


class LocalHTTPServer:
    """Base of the tests' servers: :meth:`serve` starts one, :meth:`close` stops it."""

    def serve(
        self,
        handler: type[http.server.BaseHTTPRequestHandler],
        host: str = "127.0.0.1",
        *,
        path: str = "",
        tls: ssl.SSLContext | None = None,
        queue_size: int = 5,
    ) -> None:
        """Serve ``handler`` on a free port of ``host``; :attr:`url` is its base URL plus
        ``path``, https with ``tls``; ``queue_size`` connections may wait to be accepted."""
        server_class = type(
            "Server", (http.server.ThreadingHTTPServer,), {"daemon_threads": True, "request_queue_size": queue_size}
        )
        self.server = server_class((host, 0), handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"{'https' if tls else 'http'}://{host}:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class ForwardProxy(LocalHTTPServer):
    """A forward HTTP proxy on 127.0.0.1 that sends every request, whatever host it names,
    to ``upstream`` (a base URL of one of the tests' local servers), so nothing leaves the
    machine: an absolute-URI ``GET`` is passed on as an origin-form GET and the answer
    relayed byte for byte (as it arrives: endless and trickling bodies stay so);
    ``CONNECT`` answers 200 and then relays a tunnel to ``upstream`` both ways (a TLS server
    there sees the client's handshake for the host it asked for).

    :attr:`requests` records ``"METHOD target"`` of each request, :attr:`auth` its
    ``Proxy-Authorization`` header (None when absent). Relays stop when either side
    hangs up, when the proxy is closed, or after ``loop_s`` seconds.
    """

    def __init__(self, upstream: str, loop_s: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.loop_s = loop_s
        self.requests: list[str] = []
        self.auth: list[str | None] = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def note(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                outer.auth.append(self.headers.get("Proxy-Authorization"))

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                self.note()
                self.close_connection = True
                url = urllib.parse.urlsplit(self.path)
                if url.scheme != "http":  # not a proxy request
                    self.send_error(400)
                    return
                target = (url.path or "/") + (f"?{url.query}" if url.query else "")
                with socket.create_connection(outer.upstream, timeout=outer.loop_s) as up:
                    up.sendall(f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
                    outer.relay(up, self.connection)

            def do_CONNECT(self) -> None:  # noqa: N802
                self.note()
                self.close_connection = True
                with socket.create_connection(outer.upstream, timeout=outer.loop_s) as up:
                    self.send_response(200, "Connection established")
                    self.end_headers()
                    back = threading.Thread(target=outer.relay, args=(self.connection, up), daemon=True)
                    back.start()
                    outer.relay(up, self.connection)
                    back.join(timeout=outer.loop_s)

        self.serve(Handler)

    def relay(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy bytes from ``src`` to ``dst`` until ``src`` ends, either side fails, the
        proxy is closed or ``loop_s`` pass; then end ``dst``'s sending side."""
        end = time.monotonic() + self.loop_s
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                if not select.select([src], [], [], 0.1)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except (OSError, ValueError):  # a side hung up (or was closed: fileno -1)
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stop.set()
        super().close()
