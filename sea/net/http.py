"""HTTP for URLs found in downloaded data, and bounded reading of any response.

:func:`open_public_http` only talks to public internet addresses, checked again on every
redirect hop (or to the ``http_proxy``/``https_proxy`` the environment names, once the
target passed that check). A :class:`Deadline` bounds a download's total time, and
:func:`copy_body` its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import BinaryIO

from sea.errors import FetchError, FetchTimeoutError, HTTPStatusError, IncompleteError, RefusedError, TooLargeError
from sea.files import CHUNK
from sea.net.retry import parse_retry_after

#: How many redirects :func:`open_public_http` follows before giving up.
MAX_REDIRECTS = 5
USER_AGENT = "sea-pipeline/0.1"


# --------------------------------------------------------------------------- bounded reading


class Deadline:
    """A total time budget for one download, over every connection, redirect and read.

    The socket given to :meth:`watch` is shut down when the time is up, so no connect,
    TLS handshake, header line or body read can block past the deadline (a server that
    trickles one byte per second included). Use as a context manager.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self._timer: threading.Timer | None = None
        if math.isfinite(seconds):
            self._timer = threading.Timer(max(0.0, seconds), self._expire)
            self._timer.daemon = True
            self._timer.start()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down at the deadline (or now, if it has passed)."""
        with self._lock:
            self._sock = sock
            if sock is not None and self._expired:
                _shutdown(sock)

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.at

    def remaining(self) -> float:
        """Seconds left; raises :class:`FetchTimeoutError` when none are."""
        left = self.at - time.monotonic()
        if self._expired or left <= 0:
            raise FetchTimeoutError(f"took longer than {self.seconds:g} s in total")
        return left

    def check(self, url: str) -> None:
        if self.expired:
            raise FetchTimeoutError(f"download of {url} took longer than {self.seconds:g} s in total")


def _shutdown(sock: socket.socket) -> None:
    # the plain socket method: SSLSocket.shutdown would also drop its SSL object under a
    # reader in another thread
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def content_length(resp) -> int | None:
    """The response's Content-Length as a non-negative int, or None (absent or invalid)."""
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def copy_body(
    resp, out: BinaryIO, url: str, *, max_bytes: int | None, deadline: Deadline, on_chunk=None, hasher=None
) -> tuple[int, str]:
    """Copy a response body into ``out``; return its size and sha256 hex digest (of
    ``hasher``, when given: a sha256 already fed with the bytes before this body).

    Reads at most one socket read at a time (``read1``), so the size cap and the deadline
    are checked after every piece that arrives. Raises :class:`TooLargeError` past
    ``max_bytes``, :class:`FetchTimeoutError` past the deadline, and
    :class:`IncompleteError` when the body breaks off or is shorter than its
    Content-Length (a body cut short by the deadline counts as a timeout).
    """
    expected = content_length(resp)
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise TooLargeError(f"{url} is {expected:,} bytes, over the cap of {max_bytes:,}")
    read = getattr(resp, "read1", resp.read)
    h = hasher if hasher is not None else hashlib.sha256()
    n = 0
    while True:
        deadline.check(url)
        try:
            chunk = read(CHUNK)
        except (OSError, ValueError, http.client.HTTPException) as e:
            deadline.check(url)
            raise IncompleteError(f"download of {url} broke off: {e}") from e
        if not chunk:
            break
        n += len(chunk)
        if max_bytes is not None and n > max_bytes:
            raise TooLargeError(f"{url} is over the cap of {max_bytes:,} bytes")
        out.write(chunk)
        h.update(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    if expected is not None and n == expected:
        return n, h.hexdigest()
    deadline.check(url)  # the watchdog ends a stalled body with an EOF: that is a timeout
    if expected is not None:
        raise IncompleteError(f"download of {url} ended early: {n} of {expected} bytes")
    return n, h.hexdigest()


# --------------------------------------------------------------------------- URLs from data


#: NAT64's well-known prefix: the low 32 bits are an IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = (301, 302, 303, 307, 308)
_ssl_context: ssl.SSLContext | None = None


def _is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return addr.is_global and not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or getattr(addr, "is_site_local", False)
    )


def is_public_address(ip: str) -> bool:
    """True for a global unicast address: not loopback, private, link-local, multicast,
    reserved, unspecified or shared; IPv4 addresses inside IPv6 (mapped, 6to4, NAT64,
    Teredo) must be public too."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return _is_public(addr.ipv4_mapped)
        inner = [addr.sixtofour, *(addr.teredo or ())]
        if addr in _NAT64:
            inner.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if not all(_is_public(a) for a in inner if a is not None):
            return False
    return _is_public(addr)


def _addresses(url: str, host: str, port: int, allow_address: Callable[[str], bool]) -> list[tuple]:
    """Resolve ``host``; refuse it when any of its addresses is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchError(
            f"cannot fetch {url}: cannot resolve {host}: {e}", reason="unresolvable", no_connection=True
        ) from e
    for info in infos:
        if not allow_address(info[4][0]):
            raise RefusedError(
                f"refusing {url}: {host} has the non-public address {info[4][0]}", reason="refused_private_host"
            )
    return infos


def _proxy_for(url: str, parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The forward proxy for one hop, by urllib's own rules (those of the dump downloads):
    ``http_proxy`` for http, ``https_proxy`` for https (:func:`urllib.request.getproxies`),
    None when unset or when ``no_proxy`` matches the host (:func:`urllib.request.proxy_bypass`).
    Only ``http://`` proxies are spoken to (https goes through them with CONNECT)."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    try:
        found = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        usable = found.scheme == "http" and bool(found.hostname) and found.port != 0  # .port raises if invalid
    except ValueError:
        usable = False
    if not usable:  # every URL fails alike: counted as no connection, so the fetcher stops soon
        shown = re.sub(r"^(\w+://)?[^/]*@", r"\1", proxy)  # never a password
        raise FetchError(
            f"cannot fetch {url}: {parts.scheme}_proxy {shown!r} is not an http://host[:port] proxy", no_connection=True
        )
    return found


def _proxy_headers(proxy: urllib.parse.SplitResult | None) -> dict[str, str]:
    """``Proxy-Authorization`` (Basic) when the proxy URL carries ``user:password@``."""
    if proxy is None or proxy.username is None:
        return {}
    import base64

    pair = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}


def _open_socket(url: str, where: str, infos: list[tuple], deadline: Deadline) -> socket.socket:
    """A TCP connection to the first of ``infos`` (addresses of ``where``) that answers,
    shut down by ``deadline``."""
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        deadline.watch(sock)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
            deadline.check(url)
    raise FetchError(f"cannot fetch {url}: cannot connect to {where}: {last}", no_connection=True)


def _tls_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _connect(
    url: str,
    parts: urllib.parse.SplitResult,
    port: int,
    infos: list[tuple],
    proxy: urllib.parse.SplitResult | None,
    deadline: Deadline,
) -> http.client.HTTPConnection:
    """An open HTTP(S) connection for one hop: straight to the vetted addresses ``infos``
    of the target (no second DNS lookup), or to ``proxy`` (an address of the user's own
    configuration, not checked). Through a proxy an https target gets a CONNECT tunnel
    (http.client's ``set_tunnel``), inside which TLS is verified against the target host."""
    host = parts.hostname or ""
    if proxy is None:
        endpoint, addresses = (host, port), infos
    else:
        endpoint = (proxy.hostname or "", proxy.port or 80)
        addresses = _addresses(url, endpoint[0], endpoint[1], lambda ip: True)
    where = f"{'proxy ' if proxy else ''}{endpoint[0]}:{endpoint[1]}"
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(*endpoint, context=_tls_context())
        if proxy is not None:
            conn.set_tunnel(host, port, headers=_proxy_headers(proxy))
    else:
        conn = http.client.HTTPConnection(*endpoint)
    # http.client's own connect (CONNECT, then the TLS handshake) on a socket opened here:
    # _create_connection is its socket factory (socket.create_connection, 3.11 to 3.13)
    conn._create_connection = lambda *_: _open_socket(url, where, addresses, deadline)
    try:
        conn.connect()
    except (OSError, http.client.HTTPException) as e:  # the tunnel refused, TLS failed
        conn.close()
        deadline.check(url)
        kind = "TLS" if isinstance(e, ssl.SSLError) else where
        raise FetchError(f"cannot fetch {url}: {kind}: {e}") from e
    except FetchError:
        conn.close()
        raise
    deadline.watch(conn.sock)  # the TLS socket, when wrapped
    return conn


@contextlib.contextmanager
def open_public_http(
    url: str,
    deadline: Deadline,
    *,
    allow_address: Callable[[str], bool] = is_public_address,
    max_redirects: int = MAX_REDIRECTS,
) -> Iterator[http.client.HTTPResponse]:
    """GET a URL found in downloaded data; yield the ``200`` response.

    Only http(s) is followed, and only to hosts whose every address passes
    ``allow_address`` (by default: public internet addresses), resolved here and checked
    again on every redirect hop (at most ``max_redirects``). The connection goes to the
    checked address, or, when ``http_proxy``/``https_proxy`` apply (see
    :func:`_proxy_for`), to that proxy, but only once the target passed the same check;
    a redirect the proxy relays is checked before it is followed. Residual trust with a
    proxy: it resolves the host name itself, so a name that resolves differently there
    than here is outside this check (an IP literal is not); and a name that does not
    resolve here is not fetched, proxy or not. Refusals raise
    :class:`RefusedError` (reason ``refused_scheme`` or ``refused_private_host``); other
    statuses :class:`HTTPStatusError`; the ``deadline`` bounds everything.
    """
    current = url
    for _ in range(max_redirects + 1):
        try:
            parts = urllib.parse.urlsplit(current)
        except ValueError as e:  # e.g. an unclosed [IPv6 bracket
            raise RefusedError(f"refusing {url}: {current!r}: {e}", reason="bad_url") from e
        if parts.scheme not in ("http", "https"):
            raise RefusedError(
                f"refusing {url}: it leads to {current!r}, which is not http(s)", reason="refused_scheme"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise RefusedError(f"refusing {url}: {e}", reason="bad_url") from e
        if not parts.hostname:
            raise RefusedError(f"refusing {url}: no host in {current!r}", reason="bad_url")
        infos = _addresses(url, parts.hostname, port, allow_address)  # with a proxy or without
        proxy = _proxy_for(url, parts)
        conn = _connect(url, parts, port, infos, proxy, deadline)
        resp: http.client.HTTPResponse | None = None
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if proxy is not None and parts.scheme == "http":  # a plain proxy takes the absolute URL
                target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
                headers |= _proxy_headers(proxy)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                deadline.check(url)
                raise FetchError(f"cannot fetch {url}: {e}") from e
            except ValueError as e:  # http.client's InvalidURL, a non-ASCII host
                raise RefusedError(f"refusing {url}: {e}", reason="bad_url") from e
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise HTTPStatusError(f"cannot fetch {url}: HTTP {resp.status} without a Location")
                try:
                    current = urllib.parse.urljoin(current, location.strip())
                except ValueError as e:
                    raise RefusedError(f"refusing {url}: redirect to {location!r}: {e}", reason="bad_url") from e
                continue
            if resp.status != 200:
                raise HTTPStatusError(
                    f"cannot fetch {url}: HTTP {resp.status} {resp.reason}",
                    "rate_limited" if resp.status == 429 else None,
                    status=resp.status,
                    retry_after=parse_retry_after(resp.getheader("Retry-After")),
                )
            yield resp
            return
        finally:
            if resp is not None:
                resp.close()
            conn.close()
            deadline.watch(None)
    raise FetchError(f"cannot fetch {url}: more than {max_redirects} redirects", reason="too_many_redirects")
