"""Guarded HTTP for sources: https only (loopback or SOURCE_ALLOW_HTTP excepted), size cap,
total deadline, redirects checked like the first URL, conditional requests, a download cache.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import requests

from knowledge.errors import SourceError
from knowledge.sources.options import FetchOptions
from knowledge.sources.spec import display, one_line

log = logging.getLogger("knowledge.sources")

MAX_REDIRECTS = 5
_BLOCK = 1 << 16


class FetchError(Exception):
    """A request that did not give a usable answer; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RefusedError(FetchError):
    """A URL the guards do not allow (plain http, another scheme)."""


@dataclass
class Response:
    url: str  # after redirects
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def is_loopback(host: str) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, options: FetchOptions) -> None:
    """Raise FetchError unless the URL may be fetched: https, or http to loopback / when allowed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and (options.allow_http or is_loopback(parts.hostname or "")):
        return
    if scheme == "http":
        raise RefusedError(f"{display(url)} is plain http; use https (or set SOURCE_ALLOW_HTTP=true)")
    raise RefusedError(f"{display(url)}: only https URLs are fetched")


def fetch(url: str, *, options: FetchOptions, session: requests.Session | None = None,
          headers: dict[str, str] | None = None, sink: Callable[[bytes], None] | None = None,
          deadline: float | None = None) -> Response:
    """GET with the guards; 2xx and 304 come back, anything else raises FetchError.

    The body goes to `sink` block by block when given (downloads), else into
    `Response.body`. Raises FetchError for a refused URL, a network error, the
    size cap or the deadline.
    """
    deadline = deadline or time.monotonic() + options.download_deadline
    session = session or requests
    headers = {"User-Agent": options.user_agent, **(headers or {})}
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, options=options)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"took longer than {options.download_deadline:g} s (SOURCE_DOWNLOAD_DEADLINE_SECONDS)")
        timeout = min(options.request_timeout, remaining)
        try:
            response = session.get(url, headers=headers, stream=True, timeout=(timeout, timeout),
                                   allow_redirects=False)
        except requests.RequestException as error:
            raise FetchError(one_line(error)) from None
        with response:
            if response.is_redirect and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                continue
            result = Response(url=url, status=response.status_code, headers=dict(response.headers))
            if response.status_code == 304:
                return result
            if not 200 <= response.status_code < 300:
                reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
                raise FetchError(reason, status=response.status_code)
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > options.max_download_bytes:
                raise FetchError(_too_big(declared, options))
            blocks: list[bytes] = []
            size = 0
            try:
                for block in response.iter_content(_BLOCK):
                    size += len(block)
                    if size > options.max_download_bytes:
                        raise FetchError(_too_big(size, options))
                    if time.monotonic() > deadline:
                        raise FetchError(
                            f"took longer than {options.download_deadline:g} s (SOURCE_DOWNLOAD_DEADLINE_SECONDS)")
                    if sink is not None:
                        sink(block)
                    else:
                        blocks.append(block)
            except requests.RequestException as error:
                raise FetchError(one_line(error)) from None
            result.body = b"".join(blocks)
            return result
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _too_big(size: int, options: FetchOptions) -> str:
    return f"larger than {options.max_download_bytes:,} bytes (SOURCE_MAX_DOWNLOAD_MB); got {size:,}+"


# --------------------------------------------------------------------------- cached downloads


def download(url: str, *, cache_dir: Path, label: str = "", options: FetchOptions | None = None,
             expect: str = "zip") -> Path:
    """Fetch ``url`` into ``cache_dir`` (keyed by URL) and return the file.

    A cached copy is revalidated with ETag / Last-Modified and kept on 304; if
    the server cannot be reached, the cached copy is used with a warning.
    `expect` ("zip" or "pdf") rejects error or login pages sent with a 200.
    Raises SourceError when there is no usable copy.
    """
    options = options or FetchOptions(cache_dir=Path(cache_dir))
    label = label or f"Source {display(url)}"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = PurePosixPath(unquote(urlsplit(url).path)).name or f"source.{expect}"
    folder = Path(cache_dir) / "downloads"
    target = folder / f"{key}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
    meta_path = target.with_name(target.name + ".json")
    meta = read_json(meta_path) if target.is_file() else {}

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                response = fetch(url, options=options, headers=conditional_headers(meta), sink=out.write)
            if response.status == 304 and target.is_file():
                log.info("%s: cached download is current", label)
                return target
            if response.status == 304:
                raise FetchError("the server answered 304 but nothing is cached")
            problem = _not_expected(Path(tmp_name), expect)
            if problem:  # e.g. an HTML error or login page: never cache it
                raise FetchError(problem)
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        write_json(meta_path, validators(response.headers))
    except (FetchError, OSError) as error:
        reason = one_line(error)
        if target.is_file() and not isinstance(error, RefusedError):
            log.warning("%s: download failed (%s); using the cached copy", label, reason)
            return target
        raise SourceError(f"{label}: download of {display(url)} failed: {reason}") from None
    return target


def _not_expected(path: Path, expect: str) -> str:
    import zipfile

    if expect == "zip" and not zipfile.is_zipfile(path):
        return "the server did not send a zip file"
    if expect == "pdf":
        with path.open("rb") as handle:
            if not handle.read(1024).lstrip().startswith(b"%PDF"):
                return "the server did not send a PDF"
    return ""


def conditional_headers(meta: dict) -> dict[str, str]:
    headers = {}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    return headers


def validators(headers: dict[str, str]) -> dict[str, str]:
    lower = {k.lower(): v for k, v in headers.items()}
    return {"etag": lower.get("etag", ""), "last_modified": lower.get("last-modified", "")}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
