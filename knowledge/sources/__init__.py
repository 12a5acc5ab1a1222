"""KNOWLEDGE_SOURCES -> Documents: one module per source kind behind one interface (base.Source).

    spec.py      entries, names and kinds (``[name=]location[::glob]``)
    folder.py    local folders and single files (symlinks out of the folder are not followed)
    archive.py   zip files and URLs (member size and ratio caps), single files by URL (PDF)
    website.py   websites by sitemap or by crawl (robots.txt, page cap, delay, conditional requests)
    git.py       git repositories (shallow clone, fetch on refresh, only changed files converted)
    formats.py   Markdown, HTML (trafilatura), plain text, PDF (pypdf) -> Markdown for the chunker
    tree.py      globbing, Milvus-style includes, folder and zip trees with their guards
    http.py      guarded downloads: https only (loopback or SOURCE_ALLOW_HTTP), size cap, deadline

`read_sources` reads every entry and reports each failed one by name instead of
raising, so the indexer can keep serving a failed source's previous chunks;
`read_documents` raises on the first failure (the CLI and older callers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from knowledge.errors import SourceError
from knowledge.sources.base import Source
from knowledge.sources.http import download
from knowledge.sources.options import FetchOptions
from knowledge.sources.spec import DEFAULT_GLOB, DEFAULT_NAME, SourceSpec, display, parse_sources, source_kind
from knowledge.sources.tree import glob_to_regex, resolve_includes
from knowledge.types import Document

log = logging.getLogger("knowledge.sources")

__all__ = [
    "DEFAULT_GLOB", "DEFAULT_NAME", "FetchOptions", "ReadResult", "Source", "SourceSpec", "display", "download",
    "glob_to_regex", "open_source", "parse_sources", "read_documents", "read_sources", "resolve_includes",
]


def open_source(spec: SourceSpec, *, options: FetchOptions) -> Source:
    """The reader for one entry, by its kind (see spec.source_kind)."""
    from knowledge.sources.archive import FileUrlSource, ZipSource
    from knowledge.sources.folder import FolderSource
    from knowledge.sources.git import GitSource
    from knowledge.sources.website import CrawlSource, SitemapSource

    readers = {"folder": FolderSource, "file": FolderSource, "zip": ZipSource, "zip_url": ZipSource,
               "file_url": FileUrlSource, "sitemap": SitemapSource, "crawl": CrawlSource, "git": GitSource}
    return readers[spec.kind](spec=spec, options=options)


@dataclass
class ReadResult:
    """What reading every source gave: the documents, and per source name what went wrong."""

    documents: list[Document] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # source name -> one-line reason (nothing read)
    problems: dict[str, list[str]] = field(default_factory=dict)  # source name -> partial problems
    read: list[str] = field(default_factory=list)  # source names read successfully


def read_sources(specs: Sequence[SourceSpec], *, options: FetchOptions) -> ReadResult:
    """Read every source; a failing one is recorded in `failed` and the others go on."""
    result = ReadResult()
    for spec in specs:
        source = open_source(spec, options=options)
        try:
            docs = source.read()
        except SourceError as error:
            log.debug("%s", error)  # the caller reports it (the indexer: once, by name)
            result.failed[spec.name] = str(error)
            continue
        except Exception as error:  # noqa: BLE001 - one broken reader must not stop the others
            log.exception("%s: unexpected failure", source.label)
            result.failed[spec.name] = f"{source.label}: unexpected {type(error).__name__}: {error}"[:400]
            continue
        if source.problems:
            for problem in source.problems:
                log.warning("%s: %s", source.label, problem)
            result.problems[spec.name] = list(source.problems)
        result.documents.extend(docs)
        result.read.append(spec.name)
    return result


def read_documents(specs: Sequence[SourceSpec], *, cache_dir: Path, options: FetchOptions | None = None
                   ) -> list[Document]:
    """Read every source, in a stable order. Raises SourceError (one line, naming the entry) on the first failure."""
    options = options or FetchOptions(cache_dir=Path(cache_dir))
    documents: list[Document] = []
    for spec in specs:
        documents.extend(open_source(spec, options=options).read())
    return documents
