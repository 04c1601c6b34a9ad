"""A real HTTP server on 127.0.0.1 (or another loopback host) for the download and image
tests: a request handler class served from a daemon thread on a free port."""

from __future__ import annotations

import http.server
import ssl
import threading


class LocalHTTPServer:
    """Base of the tests' servers: :meth:`serve` starts one, :meth:`close` stops it."""

    def serve(self, handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1", *,
              path: str = "", tls: ssl.SSLContext | None = None, queue_size: int = 5) -> None:
        """Serve ``handler`` on a free port of ``host``; :attr:`url` is its base URL plus
        ``path``, https with ``tls``; ``queue_size`` connections may wait to be accepted."""
        server_class = type("Server", (http.server.ThreadingHTTPServer,),
                            {"daemon_threads": True, "request_queue_size": queue_size})
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
