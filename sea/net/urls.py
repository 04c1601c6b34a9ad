"""URL and path forms: which local file a URL names, links taken against the file they
were found in, and the names of files cached for a URL. No sockets are opened here."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from sea.errors import ConfigError, FetchError, RefusedError


def _file_path(url: str) -> str | None:
    """The path a bare path or local ``file:`` URL names, as written (a relative path stays
    relative, ``%xx`` of a ``file:`` URL decoded); ``None`` for http(s) URLs.

    The local forms are a plain path, ``file:relative/path``, ``file:///abs/path`` and
    ``file://localhost/abs/path``. A ``file://`` URL naming another host (a remote share,
    or a relative path mis-spelt as ``file://data/x``) and other schemes raise a
    :class:`RefusedError` (reason ``refused_scheme``).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        if parts.netloc and parts.netloc.lower() != "localhost":
            raise RefusedError(
                f"{url!r} names a file on host {parts.netloc!r}: only local files are read "
                "(file:relative/path, file:///abs/path, file://localhost/abs/path or a plain path)",
                reason="refused_scheme",
            )
        path = urllib.parse.unquote(parts.path)
    elif parts.scheme == "" or len(parts.scheme) == 1:  # plain path (or a Windows drive)
        path = url
    else:
        raise RefusedError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r} (use http(s)://, file:// or a path)",
            reason="refused_scheme",
        )
    if "\0" in path:
        raise RefusedError(f"NUL character in the path of {url!r}", reason="bad_url")
    if not path:
        raise RefusedError(f"no path in {url!r}", reason="bad_url")
    return path


def local_path(url: str, base_dir: str | os.PathLike = ".") -> Path | None:
    """The filesystem path a bare path or local ``file:`` URL names (see :func:`_file_path`
    for the forms), made absolute against ``base_dir`` but not resolved (links and ``..``
    kept); ``None`` for http(s) URLs. Other URLs raise a :class:`RefusedError`."""
    path = _file_path(url)
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir).resolve() / p


def check_url(value: str | None, section: str, name: str) -> None:
    """A URL param: null, http(s)://, a path, or a local file URL (``file:relative/path``,
    ``file:///abs/path``, ``file://localhost/abs/path``); anything else (another scheme, a
    ``file://`` URL naming another host) is one line naming the param."""
    if value is not None:
        try:
            local_path(value)
        except FetchError as e:
            raise ConfigError(f"params.yaml [{section}]: {name}: {e}") from None


def join_link(base: str, link: str) -> str:
    """What ``link``, a URL or path found in the file at ``base``, names: a relative link is
    taken against ``base``'s folder, as a browser takes a link in a web page.

    With an http(s) ``base`` this is :func:`urllib.parse.urljoin`. With a local ``base``
    (any form :func:`local_path` accepts) a path or local ``file:`` link becomes a plain
    path, relative when ``base`` is (to the same folder ``base`` is relative to): so
    ``data/x/meta.json.gz``, ``file:data/x/meta.json.gz`` and ``file:///repo/data/x/meta.json.gz``
    give links to the same files. ``..`` and links are kept, for the reader to resolve. A
    link of another kind (http(s), another scheme, a ``file://`` URL with a host) is
    returned as it is, to be fetched or refused where it is used.
    """
    folder = _file_path(base)
    if folder is None:
        return urllib.parse.urljoin(base, link)
    try:
        path = _file_path(link)
    except RefusedError:
        return link
    return link if path is None else os.path.join(os.path.dirname(folder), path)


def resolve_url(url: str, base_dir: str | os.PathLike = ".") -> str:
    """Turn a relative path or ``file:`` URL into an absolute ``file://`` URL (links and
    ``..`` resolved); ``http(s)://`` URLs are returned unchanged. See :func:`local_path`."""
    path = local_path(url, base_dir)
    return url if path is None else path.resolve().as_uri()


def cache_key(url: str) -> str:
    """The sha1 hex of a URL: what files cached or resumed for it are named after."""
    return hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()
