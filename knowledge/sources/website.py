"""Websites: by sitemap (sitemap index files too) or crawled breadth-first under a path.

Every page is fetched with the guards of knowledge.sources.http and a conditional
request (ETag / Last-Modified) against a small cache under DATA_DIR/cache/sites,
which keeps each page's extracted text and links: a 304, or a sitemap `lastmod`
that did not move, reuses them without downloading or extracting the page again.
A page that answers 404 or 410, or leaves the sitemap, is gone (its chunks are
deleted by the indexer); a page that fails otherwise (500, timeout) keeps its
previous text and is reported in `problems`. The crawler stays on the start
URL's host under its path, obeys robots.txt (urllib.robotparser), stops at
CRAWL_MAX_PAGES and waits CRAWL_DELAY_SECONDS (or robots.txt's Crawl-delay)
between requests, with a clear user agent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import requests

from knowledge.errors import SourceError
from knowledge.sources.base import Source
from knowledge.sources.formats import FormatError, html_to_markdown, pdf_to_markdown
from knowledge.sources.http import FetchError, conditional_headers, fetch, read_json, validators, write_json
from knowledge.sources.spec import display, one_line
from knowledge.types import Document

log = logging.getLogger("knowledge.sources")

GONE = (404, 410)
MAX_SITEMAPS = 50
PROGRESS_EVERY = 50  # requests between progress log lines
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_SKIP_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".css", ".js", ".json", ".xml",
                  ".zip", ".gz", ".tar", ".mp4", ".mp3", ".woff", ".woff2", ".ttf", ".txt")


class _Site(Source):
    """What both website kinds share: the page cache, polite fetching, page -> Document."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        key = hashlib.sha256(self.spec.location.encode()).hexdigest()[:16]
        self._cache_path = Path(self.options.cache_dir) / "sites" / f"{self.spec.name}-{key}.json"
        self._cache: dict[str, dict] = {}
        self._session = requests.Session()
        self._last_request = 0.0
        self.delay = self.options.crawl_delay
        self.fetched = 0  # pages downloaded (200) in this read; 304s and lastmod hits are not
        self.requests = 0

    # -- cache ---------------------------------------------------------------------------
    def _load_cache(self) -> None:
        self._cache = read_json(self._cache_path).get("pages", {})

    def _save_cache(self, pages: dict[str, dict]) -> None:
        write_json(self._cache_path, {"pages": pages})

    # -- fetching ------------------------------------------------------------------------
    def _polite_fetch(self, url: str, *, headers: dict[str, str] | None = None):
        wait = self._last_request + self.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.requests += 1
        if self.requests % PROGRESS_EVERY == 0:  # a crawl can take minutes: show it moving
            log.info("%s: %d requests so far (%d pages downloaded, the rest unchanged)", self.label,
                     self.requests, self.fetched)
        try:
            return fetch(url, options=self.options, session=self._session, headers=headers)
        finally:
            self._last_request = time.monotonic()

    def _page(self, url: str, *, lastmod: str = "", keep_on_error: bool = True) -> dict | None:
        """The page's cache entry (text, links, validators), fresh or reused; None when it is gone.

        Raises FetchError when it failed and no earlier copy exists (or `keep_on_error` is off).
        """
        cached = self._cache.get(url)
        if cached and lastmod and cached.get("lastmod") == lastmod:
            return cached  # the sitemap says it did not change: no request at all
        try:
            response = self._polite_fetch(url, headers=conditional_headers(cached or {}))
        except FetchError as error:
            if error.status in GONE:
                log.info("%s: %s is gone (HTTP %s)", self.label, display(url), error.status)
                return None
            if cached and keep_on_error:
                self.problems.append(f"{display(url)}: {one_line(error)} (previous text kept)")
                return cached
            raise
        if response.status == 304 and cached:
            return {**cached, "lastmod": lastmod or cached.get("lastmod", "")}
        self.fetched += 1
        entry = {**validators(response.headers), "lastmod": lastmod, "url": response.url}
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if url.lower().endswith(".pdf") or content_type == "application/pdf":
            try:
                entry["text"] = pdf_to_markdown(response.body, path=urlsplit(url).path)
            except FormatError as error:
                self.problems.append(f"{display(url)}: {error}")
                return cached
            entry["links"] = []
            entry["pdf"] = True
            return entry
        if content_type and content_type not in _HTML_TYPES:
            return {**entry, "text": "", "links": []}
        html = _decode(response.body, response.headers)
        entry["text"] = html_to_markdown(html, fallback_title=_title_of(url))
        entry["links"] = _links(html, base=response.url)
        return entry

    def _documents(self, pages: dict[str, dict]) -> list[Document]:
        docs = []
        for url in sorted(pages):
            text = pages[url].get("text") or ""
            if not text.strip():
                continue
            docs.append(Document(source=url, text=text, source_name=self.spec.name, link=f"{url}#{{anchor}}"))
        return docs


class SitemapSource(_Site):
    """Every page a sitemap (or sitemap index) lists, up to CRAWL_MAX_PAGES."""

    def read(self) -> list[Document]:
        self._load_cache()
        entries = self._sitemap_urls()
        pages: dict[str, dict] = {}
        for url, lastmod in entries[: self.options.crawl_max_pages]:
            try:
                page = self._page(url, lastmod=lastmod)
            except FetchError as error:
                self.problems.append(f"{display(url)}: {one_line(error)}")
                continue
            if page is not None:
                pages[url] = page
        if len(entries) > self.options.crawl_max_pages:
            self.problems.append(f"the sitemap lists {len(entries)} pages; only the first "
                                 f"{self.options.crawl_max_pages} are read (CRAWL_MAX_PAGES)")
        if not pages:
            raise SourceError(f"{self.label}: no page of the sitemap could be read"
                              + (f" ({self.problems[0]})" if self.problems else ""))
        self._save_cache(pages)
        return self._documents(pages)

    def _sitemap_urls(self) -> list[tuple[str, str]]:
        """(url, lastmod) of every page, sitemap index files followed; raises SourceError."""
        from lxml import etree

        queue, seen, found = deque([self.spec.location]), set(), {}
        while queue and len(seen) < MAX_SITEMAPS:
            url = queue.popleft()
            if url in seen:
                continue
            seen.add(url)
            try:
                response = self._polite_fetch(url)
                parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
                root = etree.fromstring(response.body, parser=parser)
            except (FetchError, etree.XMLSyntaxError) as error:
                raise SourceError(f"{self.label}: sitemap {display(url)} unreadable: {one_line(error)}") from None
            for item in root:
                tag = etree.QName(item).localname if isinstance(item.tag, str) else ""
                loc = _child_text(item, "loc")
                if not loc:
                    continue
                if tag == "sitemap":
                    queue.append(urljoin(url, loc))
                elif tag == "url":
                    page = urldefrag(urljoin(url, loc))[0]
                    found.setdefault(page, _child_text(item, "lastmod"))
        return list(found.items())


class CrawlSource(_Site):
    """Pages on the start URL's host under its path, breadth-first, robots.txt obeyed."""

    def read(self) -> list[Document]:
        self._load_cache()
        start = urldefrag(self.spec.location)[0]
        parts = urlsplit(start)
        scope = parts.path if parts.path.endswith("/") else parts.path.rsplit("/", 1)[0] + "/"
        robots = self._robots(parts)
        queue, queued = deque([start]), {start}
        pages: dict[str, dict] = {}
        while queue and len(pages) < self.options.crawl_max_pages:
            url = queue.popleft()
            if not robots.can_fetch(self.options.user_agent, url):
                log.info("%s: %s is disallowed by robots.txt", self.label, display(url))
                continue
            try:
                # The start page failing means the site is down: the whole source keeps its chunks.
                page = self._page(url, keep_on_error=url != start)
            except FetchError as error:
                if url == start:
                    raise SourceError(f"{self.label}: {display(url)} failed: {one_line(error)}") from None
                self.problems.append(f"{display(url)}: {one_line(error)}")
                continue
            if page is None:
                continue
            pages[url] = page
            for link in page.get("links") or []:
                if link not in queued and _in_scope(link, parts, scope):
                    queued.add(link)
                    queue.append(link)
        if queue:
            self.problems.append(f"stopped at {self.options.crawl_max_pages} pages (CRAWL_MAX_PAGES)")
        if not any((p.get("text") or "").strip() for p in pages.values()):
            raise SourceError(f"{self.label}: no page with text was found under {display(start)}")
        self._save_cache(pages)
        return self._documents(pages)

    def _robots(self, parts) -> RobotFileParser:
        robots = RobotFileParser()
        url = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
        try:
            response = self._polite_fetch(url)
            robots.parse(_decode(response.body, response.headers).splitlines())
        except FetchError as error:
            if error.status is not None and 400 <= error.status < 500:
                robots.parse([])  # no robots.txt: everything is allowed
            else:
                raise SourceError(f"{self.label}: robots.txt unreadable ({one_line(error)})") from None
        delay = robots.crawl_delay(self.options.user_agent)
        if delay:
            self.delay = max(self.delay, float(delay))
        return robots


def _in_scope(url: str, start, scope: str) -> bool:
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc) != (start.scheme, start.netloc) or not parts.path.startswith(scope):
        return False
    return not parts.path.lower().endswith(_SKIP_SUFFIXES)


def _links(html: str, *, base: str) -> list[str]:
    from lxml import html as lxml_html

    try:
        tree = lxml_html.fromstring(html)
    except (ValueError, TypeError):
        return []
    links = []
    for anchor in tree.iter("a"):
        href = (anchor.get("href") or "").strip()
        if not href or href.startswith(("mailto:", "javascript:", "tel:", "#")):
            continue
        links.append(urldefrag(urljoin(base, href))[0])
    return list(dict.fromkeys(links))


def _decode(body: bytes, headers: dict[str, str]) -> str:
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    charset = content_type.split("charset=")[-1].split(";")[0].strip() if "charset=" in content_type else "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _child_text(item, name: str) -> str:
    for child in item:
        if isinstance(child.tag, str) and child.tag.rsplit("}", 1)[-1] == name:
            return (child.text or "").strip()
    return ""


def _title_of(url: str) -> str:
    path = urlsplit(url).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or urlsplit(url).hostname or url
