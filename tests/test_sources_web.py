"""Websites as sources, over a local HTTP site on 127.0.0.1: sitemap and crawl, robots.txt,
conditional refresh, removed, slow and failing pages, HTML -> cited sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.chunking import chunk_document
from knowledge.errors import SourceError
from knowledge.sources import FetchOptions, SourceSpec, open_source, parse_sources
from tests.fixtures.site import html_page, local_site  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


def _options(tmp_path: Path, **overrides) -> FetchOptions:
    values = dict(cache_dir=tmp_path / "cache", crawl_delay=0.0, request_timeout=1.0, download_deadline=5.0)
    values.update(overrides)
    return FetchOptions(**values)


def _build(site, *, pages: int = 3) -> None:
    links = tuple(f"/docs/p{i}.html" for i in range(pages)) + ("/docs/private/secret.html", "/outside.html",
                                                                 "/docs/broken.html", "/docs/slow.html")
    site.page("/docs/", html_page("Docs home", {"Welcome": "Start here to learn about the product."}, links=links))
    for i in range(pages):
        site.page(f"/docs/p{i}.html", html_page(f"Page {i}", {
            "Overview": f"Page {i} explains feature number {i} in detail for operators.",
            "Limits": f"Feature {i} allows at most {i + 10} parallel jobs per cluster.",
        }, links=links))
    site.page("/docs/private/secret.html", html_page("Secret", {"Keys": "The root password is hunter2."}))
    site.page("/outside.html", html_page("Outside", {"Other": "Not under the docs path."}))
    site.status("/docs/broken.html", 500)
    site.page("/docs/slow.html", html_page("Slow", {"Waiting": "This page answers too slowly."}))
    site.slow("/docs/slow.html", 2.5)
    site.page("/robots.txt", "User-agent: *\nDisallow: /docs/private/\n", content_type="text/plain")


def test_kinds_and_names_come_from_the_location():
    specs = parse_sources("https://docs.example.com/sitemap.xml, https://docs.example.com/guide/,"
                          "git+https://git.example.com/org/handbook.git@main::docs/**/*.md, https://x.example/h.pdf")
    assert [(s.name, s.kind) for s in specs] == [
        ("docs.example.com", "sitemap"), ("docs.example.com-2", "crawl"), ("handbook", "git"), ("h", "file_url")]
    assert specs[2].glob == "docs/**/*.md" and specs[2].location.endswith("@main")


def test_crawl_stays_under_the_path_obeys_robots_and_reports_failed_pages(local_site, tmp_path):
    _build(local_site)
    source = open_source(SourceSpec("site", local_site.url("/docs/")), options=_options(tmp_path))
    docs = source.read()
    urls = {d.source for d in docs}
    assert urls == {local_site.url("/docs/")} | {local_site.url(f"/docs/p{i}.html") for i in range(3)}
    assert "/docs/private/secret.html" not in {p for p, _, _ in local_site.requests}  # robots.txt
    assert "/outside.html" not in {p for p, _, _ in local_site.requests}  # another path
    assert any("broken.html" in p and "HTTP 500" in p for p in source.problems)
    assert any("slow.html" in p for p in source.problems)  # timed out, the rest went on
    agents = {h.get("User-Agent") for _, _, h in local_site.requests}
    assert agents == {FetchOptions(cache_dir=tmp_path).user_agent}

    # Main content only, sections cited with the headings' own ids.
    [page] = [d for d in docs if d.source.endswith("p1.html")]
    assert "cookies" not in page.text and "Copyright" not in page.text and "Page 1 explains" in page.text
    chunks = chunk_document(page, max_tokens=200, overlap_tokens=0, min_tokens=0, url_template="")
    assert {c.url for c in chunks} >= {local_site.url("/docs/p1.html#overview"), local_site.url("/docs/p1.html#limits")}


def test_crawl_refresh_is_conditional_and_drops_removed_pages(local_site, tmp_path):
    _build(local_site)
    spec = SourceSpec("site", local_site.url("/docs/"))
    open_source(spec, options=_options(tmp_path)).read()
    local_site.status("/docs/slow.html", 404)
    local_site.clear()

    local_site.page("/docs/p0.html", html_page("Page 0", {"Overview": "Page 0 was rewritten today."}))
    local_site.remove("/docs/p2.html")
    source = open_source(spec, options=_options(tmp_path))
    docs = {d.source: d for d in source.read()}
    assert local_site.url("/docs/p2.html") not in docs  # 404: gone
    assert "rewritten today" in docs[local_site.url("/docs/p0.html")].text
    assert "/docs/p1.html" in local_site.fetched(304)  # unchanged: not downloaded again
    assert local_site.fetched(200) == ["/robots.txt", "/docs/p0.html"]
    assert source.fetched == 1


def test_sitemap_uses_lastmod_and_a_page_leaving_it_is_gone(local_site, tmp_path):
    _build(local_site)
    local_site.sitemap("/sitemap.xml", {"/docs/p0.html": "2024-01-01", "/docs/p1.html": "2024-01-01",
                                        "/docs/p2.html": ""})
    spec = SourceSpec("site", local_site.url("/sitemap.xml"))
    first = open_source(spec, options=_options(tmp_path)).read()
    assert len(first) == 3
    local_site.clear()
    local_site.sitemap("/sitemap.xml", {"/docs/p0.html": "2024-02-01", "/docs/p1.html": "2024-01-01"})
    local_site.page("/docs/p0.html", html_page("Page 0", {"Overview": "Changed in February."}))
    docs = {d.source: d for d in open_source(spec, options=_options(tmp_path)).read()}
    assert set(docs) == {local_site.url("/docs/p0.html"), local_site.url("/docs/p1.html")}
    assert "Changed in February" in docs[local_site.url("/docs/p0.html")].text
    # p1's lastmod did not move: no request at all; p0's did: fetched again.
    assert [p for p, _, _ in local_site.requests] == ["/sitemap.xml", "/docs/p0.html"]


def test_a_site_that_is_down_is_a_source_error_naming_it(local_site, tmp_path):
    local_site.status("/sitemap.xml", 500)
    with pytest.raises(SourceError, match=r"Source 'site' .*sitemap .* unreadable: HTTP 500"):
        open_source(SourceSpec("site", local_site.url("/sitemap.xml")), options=_options(tmp_path)).read()
    local_site.page("/robots.txt", "", content_type="text/plain")
    local_site.status("/docs/", 503)
    with pytest.raises(SourceError, match=r"Source 'site' .*HTTP 503"):
        open_source(SourceSpec("site", local_site.url("/docs/")), options=_options(tmp_path)).read()


def test_page_cap_stops_the_crawl_and_says_so(local_site, tmp_path):
    _build(local_site, pages=6)
    source = open_source(SourceSpec("site", local_site.url("/docs/")), options=_options(tmp_path, crawl_max_pages=3))
    assert len(source.read()) == 3
    assert any("CRAWL_MAX_PAGES" in p for p in source.problems)


def test_sitemap_index_files_are_followed(local_site, tmp_path):
    _build(local_site)
    local_site.sitemap("/sitemaps/a.xml", {"/docs/p0.html": ""})
    local_site.sitemap("/sitemaps/b.xml", {"/docs/p1.html": "", "/docs/p2.html": ""})
    local_site.page("/sitemap_index.xml", '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/'
                    f'schemas/sitemap/0.9"><sitemap><loc>{local_site.url("/sitemaps/a.xml")}</loc></sitemap>'
                    f'<sitemap><loc>{local_site.url("/sitemaps/b.xml")}</loc></sitemap></sitemapindex>',
                    content_type="application/xml")
    docs = open_source(SourceSpec("site", local_site.url("/sitemap_index.xml")), options=_options(tmp_path)).read()
    assert {d.source for d in docs} == {local_site.url(f"/docs/p{i}.html") for i in range(3)}
