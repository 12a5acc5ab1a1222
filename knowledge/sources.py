"""KNOWLEDGE_SOURCES -> Documents: folders, local zips and downloaded zips.

A source entry is ``[name=]location[::glob]`` and entries are separated by
commas. The location is a folder, a ``.zip`` file or an http(s) URL of a zip;
the glob picks the files inside it (paths relative to the folder or zip root).
Milvus-style include lines (``{{fragments/x.md}}``) are replaced by the
included file's text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from knowledge.errors import SourceError
from knowledge.types import Document

log = logging.getLogger(__name__)

DEFAULT_GLOB = "**/*.md"
DEFAULT_NAME = "docs"
MAX_INCLUDE_DEPTH = 5
DOWNLOAD_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds
_CHUNK_BYTES = 1 << 16

# `{{fragments/x.md}}` only: `{{var.x}}`, `{{tab}}` and template code stay as written.
_INCLUDE = re.compile(r"\{\{\s*([\w./-]+\.mdx?)\s*\}\}")
_NAME = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=(.*)$", re.DOTALL)


@dataclass(frozen=True)
class SourceSpec:
    """One KNOWLEDGE_SOURCES entry."""

    name: str
    location: str
    glob: str = DEFAULT_GLOB

    @property
    def is_url(self) -> bool:
        return self.location.lower().startswith(("http://", "https://"))


# --------------------------------------------------------------------------- parsing


def parse_sources(value: str) -> list[SourceSpec]:
    """Parse ``"name=loc::glob, loc2::glob"`` into specs.

    Unnamed entries are called "docs" when alone, else after their folder or
    zip stem. Raises SourceError for an empty value, an entry without a
    location or a name used twice.
    """
    entries = [entry.strip() for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise SourceError("KNOWLEDGE_SOURCES is empty: give a folder, a .zip file or a .zip URL")

    parsed: list[tuple[str | None, str, str]] = []
    for entry in entries:
        name: str | None = None
        match = _NAME.match(entry)
        if match:
            name, entry = match.group(1), match.group(2).strip()
        location, sep, glob = entry.partition("::")
        location, glob = location.strip(), glob.strip()
        if not location:
            raise SourceError(f"Source entry {entry!r} has no location")
        parsed.append((name, location, glob if sep and glob else DEFAULT_GLOB))

    specs: list[SourceSpec] = []
    taken: set[str] = set()
    for name, location, glob in parsed:
        if name is None:
            name = DEFAULT_NAME if len(parsed) == 1 else _unique(_derived_name(location), taken)
        if name in taken:
            raise SourceError(f"Source name {name!r} is used twice in KNOWLEDGE_SOURCES")
        taken.add(name)
        specs.append(SourceSpec(name=name, location=location, glob=glob))
    return specs


def _derived_name(location: str) -> str:
    """A short stable name from a location: its folder name or zip stem."""
    path = urlsplit(location).path if "://" in location else location
    base = PurePosixPath(unquote(path).replace("\\", "/").rstrip("/")).name
    stem = base[:-4] if base.lower().endswith(".zip") else base
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or DEFAULT_NAME


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


# --------------------------------------------------------------------------- globbing


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Compile a path glob: ``**`` spans folders, ``*`` and ``?`` stay inside one."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _matcher(glob: str) -> Callable[[str], bool]:
    pattern = glob_to_regex(glob.lstrip("/"))
    # The default glob also picks MDX files, which are Markdown for our purposes.
    extra = glob_to_regex(DEFAULT_GLOB + "x") if glob == DEFAULT_GLOB else None
    return lambda path: bool(pattern.match(path) or (extra and extra.match(path)))


# --------------------------------------------------------------------------- trees


class _Tree:
    """The files of one source: relative posix paths and their bytes."""

    def __init__(self, label: str, paths: Sequence[str], read: Callable[[str], bytes]) -> None:
        self.label = label
        self.paths = list(paths)
        self._set = set(paths)
        self._read = read

    def has(self, path: str) -> bool:
        return path in self._set

    def read_text(self, path: str) -> str:
        try:
            data = self._read(path)
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError) as error:
            raise SourceError(f"{self.label}: cannot read {path}: {_one_line(error)}") from None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            log.warning("%s: %s is not valid UTF-8; undecodable bytes replaced", self.label, path)
            return data.decode("utf-8", errors="replace")


def _folder_tree(label: str, root: Path) -> _Tree:
    paths = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )
    return _Tree(label, paths, lambda rel: (root / rel).read_bytes())


@contextmanager
def _zip_tree(label: str, path: Path) -> Iterator[_Tree]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"{label}: {path.name} is not a readable zip file ({_one_line(error)})") from None
    with archive:
        # Members are read in memory, never extracted, so "../" names cannot escape.
        paths = sorted(info.filename for info in archive.infolist() if not info.is_dir())
        yield _Tree(label, paths, archive.read)


# --------------------------------------------------------------------------- includes


def resolve_includes(text: str, *, path: str, tree: _Tree, depth: int = 0) -> str:
    """Replace ``{{fragments/x.md}}`` lines with the file's text (recursively).

    The include is looked up from the source root, then beside the including
    file and in each folder above it (a zip's docs often sit under "en/").
    A missing include (or one nested too deep) is dropped with a warning.
    """

    def replace(match: re.Match[str]) -> str:
        target = match.group(1).lstrip("/")
        folders = list(PurePosixPath(path).parents)[:-1]  # the file's folder up to, not incl., root
        candidates = [target, *(_normalise(folder / target) for folder in folders)]
        found = next((c for c in candidates if c and tree.has(c)), None)
        if found is None:
            log.warning("%s: %s includes missing file %s; dropped", tree.label, path, target)
            return ""
        if depth >= MAX_INCLUDE_DEPTH:
            log.warning("%s: %s includes %s too deeply; dropped", tree.label, path, target)
            return ""
        included = tree.read_text(found)
        return resolve_includes(included, path=found, tree=tree, depth=depth + 1).strip("\n")

    return _INCLUDE.sub(replace, text)


def _normalise(path: PurePosixPath) -> str:
    """Collapse "a/../b" without touching the file system; "" when it leaves the root."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return ""
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


# --------------------------------------------------------------------------- reading


def read_documents(specs: Sequence[SourceSpec], *, cache_dir: Path) -> list[Document]:
    """Read every file the specs select, includes resolved, in a stable order.

    Raises SourceError (one line, naming the entry) for a missing folder or
    file, a failed download, a bad zip, an unreadable file or an empty selection.
    """
    documents: list[Document] = []
    for spec in specs:
        documents.extend(_read_spec(spec, cache_dir=cache_dir))
    return documents


def _read_spec(spec: SourceSpec, *, cache_dir: Path) -> list[Document]:
    label = f"Source {spec.name!r} ({_display(spec.location)})"
    if spec.is_url:
        archive = download(spec.location, cache_dir=cache_dir, label=label)
        with _zip_tree(label, archive) as tree:
            return _select(spec, tree)

    path = Path(spec.location).expanduser()
    if path.is_dir():
        return _select(spec, _folder_tree(label, path))
    if path.is_file():
        with _zip_tree(label, path) as tree:
            return _select(spec, tree)
    kind = "zip file" if path.suffix.lower() == ".zip" else "folder"
    raise SourceError(f"{label}: {kind} not found")


def _select(spec: SourceSpec, tree: _Tree) -> list[Document]:
    matches = _matcher(spec.glob)
    selected = [path for path in tree.paths if matches(path)]
    if not selected:
        raise SourceError(f"{tree.label}: no file matches {spec.glob!r}")
    return [
        Document(
            source=path,
            text=resolve_includes(tree.read_text(path), path=path, tree=tree),
            source_name=spec.name,
        )
        for path in selected
    ]


# --------------------------------------------------------------------------- downloads


def download(url: str, *, cache_dir: Path, label: str = "") -> Path:
    """Fetch ``url`` into ``cache_dir`` (keyed by URL) and return the file.

    A cached copy is revalidated with ETag / Last-Modified and kept on 304; if
    the server cannot be reached, the cached copy is used with a warning.
    Raises SourceError when there is no usable copy.
    """
    label = label or f"Source {_display(url)}"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = PurePosixPath(unquote(urlsplit(url).path)).name or "source.zip"
    folder = Path(cache_dir) / "downloads"
    target = folder / f"{key}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
    meta_path = target.with_name(target.name + ".json")
    meta = _read_meta(meta_path) if target.is_file() else {}

    headers = {}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with requests.get(url, headers=headers, stream=True, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code == 304 and target.is_file():
                log.info("%s: cached download is current", label)
                return target
            if response.status_code != 200:
                reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
                raise _DownloadFailed(reason)
            _save(response, target, folder)
            _write_meta(meta_path, response)
    except (_DownloadFailed, requests.RequestException, OSError) as error:
        reason = _one_line(error)
        if target.is_file():
            log.warning("%s: download failed (%s); using the cached copy", label, reason)
            return target
        raise SourceError(f"{label}: download of {_display(url)} failed: {reason}") from None
    return target


class _DownloadFailed(Exception):
    """The server answered, but not with the file."""


def _save(response: requests.Response, target: Path, folder: Path) -> None:
    # Stream to a temp file in the same folder, then rename: readers never see half a file.
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            for block in response.iter_content(_CHUNK_BYTES):
                out.write(block)
        if not zipfile.is_zipfile(tmp_name):  # e.g. an HTML error or login page: never cache it
            raise _DownloadFailed("the server did not send a zip file")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, response: requests.Response) -> None:
    meta = {
        "etag": response.headers.get("ETag", ""),
        "last_modified": response.headers.get("Last-Modified", ""),
    }
    path.write_text(json.dumps(meta), encoding="utf-8")


def _display(location: str) -> str:
    """A location fit for logs: a URL loses its query and credentials (tokens hide there)."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
