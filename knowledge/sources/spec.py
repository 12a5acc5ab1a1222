"""KNOWLEDGE_SOURCES entries: ``[name=]location[::glob]``, comma-separated, and what kind each is.

Kinds, decided from the location alone (no network):

    git+https://host/org/repo.git@main   a git repository (also git+file://, git+ssh://, git+git@host:…)
    https://…/file.zip                   a downloaded zip
    https://…/sitemap.xml                a website by its sitemap (sitemap index files too)
    https://…/file.pdf                   one downloaded PDF
    https://…/any/other/path             a website, crawled under that path
    /a/folder, /a/file.zip, /a/file.pdf  local folder, zip or single file
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from knowledge.errors import SourceError

# Without a glob a folder or zip takes every supported file kind (see knowledge.sources.formats).
DEFAULT_GLOB = "**/*"
DEFAULT_NAME = "docs"
MAX_NAME_LENGTH = 256  # the index's source_name field (knowledge/store.py): a longer name would be cut there

SourceKind = Literal["folder", "zip", "file", "zip_url", "file_url", "sitemap", "crawl", "git"]

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

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.location)


def source_kind(location: str) -> SourceKind:
    """What a location is, from its text (local paths are checked on disk by the reader)."""
    lower = location.lower()
    if lower.startswith("git+"):
        return "git"
    if lower.startswith(("http://", "https://")):
        path = urlsplit(location).path.lower()
        if path.endswith(".zip"):
            return "zip_url"
        if path.endswith(".xml") or path.rsplit("/", 1)[-1].startswith("sitemap"):
            return "sitemap"
        if path.endswith(".pdf"):
            return "file_url"
        return "crawl"
    if lower.endswith(".zip"):
        return "zip"
    if PurePosixPath(lower).suffix in (".pdf", ".md", ".mdx", ".markdown", ".html", ".htm", ".txt"):
        return "file"
    return "folder"


def parse_sources(value: str) -> list[SourceSpec]:
    """Parse ``"name=loc::glob, loc2::glob"`` into specs.

    Unnamed entries are called "docs" when alone, else after their folder, zip,
    site or repository. Raises SourceError for an empty value, an entry without a
    location, a name used twice or one longer than MAX_NAME_LENGTH.
    """
    entries = [entry.strip() for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise SourceError(
            "KNOWLEDGE_SOURCES is empty: give a folder, a .zip file or URL, a website or a git+ repository"
        )

    parsed: list[tuple[str | None, str, str]] = []
    for entry in entries:
        name: str | None = None
        match = _NAME.match(entry)
        # "git+ssh://git@host" and "https://…?a=b" are locations, not "name=location".
        if match and not re.match(r"^\s*[\w.+-]+://", entry):
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
            name = DEFAULT_NAME if len(parsed) == 1 else _unique(derived_name(location), taken)
        if name in taken:
            raise SourceError(f"Source name {name!r} is used twice in KNOWLEDGE_SOURCES")
        if len(name) > MAX_NAME_LENGTH:
            # Cut in the index, it would no longer match CHANNEL_SOURCES or SOURCE_ACCESS.
            raise SourceError(f"Source name {name[:40]!r}… in KNOWLEDGE_SOURCES is longer than {MAX_NAME_LENGTH} "
                              "characters: give it a shorter name (name=location)")
        taken.add(name)
        specs.append(SourceSpec(name=name, location=location, glob=glob))
    return specs


def derived_name(location: str) -> str:
    """A short stable name from a location: folder name, zip stem, repository or site host."""
    kind = source_kind(location)
    if kind == "git":
        location = split_git_location(location)[0]
    if kind in ("sitemap", "crawl"):
        base = urlsplit(location).hostname or ""
    else:
        if "://" in location:
            path = urlsplit(location).path
        elif kind == "git":
            path = location.rsplit(":", 1)[-1]  # git@host:org/repo.git
        else:
            path = location
        base = PurePosixPath(unquote(path).replace("\\", "/").rstrip("/")).name
        for suffix in (".zip", ".git", ".pdf"):
            base = base[: -len(suffix)] if base.lower().endswith(suffix) else base
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or DEFAULT_NAME


def split_git_location(location: str) -> tuple[str, str]:
    """``git+URL[@ref]`` -> (URL, ref); ref "" means the remote's default branch."""
    url = location[4:] if location.lower().startswith("git+") else location
    marker = url.find(".git@")
    if marker >= 0:
        return url[: marker + 4], url[marker + 5 :]
    at = url.rfind("@")
    if at > url.rfind("/") and at > url.find("://") + 3 and not _is_ssh_user(url, at):
        return url[:at], url[at + 1 :]
    return url, ""


def _is_ssh_user(url: str, at: int) -> bool:
    # "git@host:org/repo": the "@" belongs to the user, a ":" follows it.
    return ":" in url[at:] and "://" not in url[:at]


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def display(location: str) -> str:
    """A location fit for logs: a URL loses its query and credentials (tokens hide there)."""
    if "://" not in location:
        return location
    prefix = "git+" if location.lower().startswith("git+") else ""
    parts = urlsplit(location[len(prefix):])
    port = f":{parts.port}" if parts.port else ""
    return f"{prefix}{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def label(spec: SourceSpec) -> str:
    """How errors and logs name a source: "Source 'docs' (/srv/docs)"."""
    return f"Source {spec.name!r} ({display(spec.location)})"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
