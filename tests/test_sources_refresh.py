"""Refreshing an index over several source kinds: changed pages only are embedded, a failed
source is reported by name and keeps serving its previous chunks, citations default to each
document's own location."""

from __future__ import annotations

import pytest

from bot.refresher import summary
from knowledge.errors import SourceError
from knowledge.settings import DEFAULT_DOCS_BASE_URL, DEFAULT_SOURCES, KnowledgeSettings
from tests.fixtures.site import html_page, local_site  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)


def _site(site, pages=4):
    links = tuple(f"/docs/p{i}.html" for i in range(pages))
    site.page("/robots.txt", "User-agent: *\nAllow: /\n", content_type="text/plain")
    site.page("/docs/", html_page("Docs", {"Welcome": "The product documentation starts here."}, links=links))
    for i in range(pages):
        site.page(f"/docs/p{i}.html", html_page(f"Topic {i}", {
            "Overview": f"Topic {i} covers the retention rules for tier {i} storage in detail.",
            "Limits": f"Tier {i} keeps at most {i + 3} replicas of every segment.",
        }, links=links))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "faq.md").write_text("# FAQ\n\n## Who runs backups?\n\nThe platform team runs nightly backups.\n")
    return root


def test_changed_page_only_is_embedded_and_a_failed_source_keeps_serving(make_kb, local_site, folder):
    _site(local_site)
    kb = make_kb(sources=f"notes={folder},site={local_site.url('/docs/')}", reranker=False, api_key="",
                 crawl_delay_seconds=0, abstain_dense_threshold=-1)
    first = kb.indexer.last_report
    assert first.failed == {} and first.documents == 6
    total = kb.store.count()

    local_site.page("/docs/p2.html", html_page("Topic 2", {
        "Overview": "Topic 2 covers the retention rules for tier 2 storage in detail.",
        "Limits": "Tier 2 now keeps at most 9 replicas of every segment.",
    }, links=tuple(f"/docs/p{i}.html" for i in range(4))))
    local_site.clear()
    report = kb.refresh()
    assert (report.added + report.updated, report.deleted) == (1, 0) and report.unchanged == total - 1
    assert local_site.fetched(200) == ["/robots.txt", "/docs/p2.html"]  # the rest answered 304

    # One page fails: reported under the source's name, its previous text kept.
    local_site.status("/docs/p1.html", 500)
    report = kb.refresh()
    assert report.failed == {} and "p1.html: HTTP 500" in report.problems["site"][0]
    assert (report.added, report.updated, report.deleted) == (0, 0, 0)

    # The site goes down: reported by name, its chunks stay and answer; the folder still refreshes.
    local_site.status("/docs/", 500)
    (folder / "faq.md").write_text("# FAQ\n\n## Who runs backups?\n\nThe storage team runs hourly backups.\n")
    report = kb.refresh()
    assert list(report.failed) == ["site"] and "HTTP 500" in report.failed["site"]
    assert report.deleted == 0 and report.updated == 1 and kb.store.count() == total
    line = summary(report.to_dict())
    assert "Source `site` failed, its previous chunks kept" in line and "HTTP 500" in line
    answer = kb.ask("How many replicas does tier 2 keep?")
    assert any("9 replicas" in c.chunk.text for c in answer.candidates)

    # A rebuild would drop them: refused while the source fails.
    with pytest.raises(SourceError, match="Not rebuilding while a source fails"):
        kb.refresh(rebuild=True)

    # A removed page is deleted once the site answers again.
    local_site.page("/docs/", html_page("Docs", {"Welcome": "The product documentation starts here."},
                                        links=tuple(f"/docs/p{i}.html" for i in range(4))))
    local_site.remove("/docs/p3.html")
    local_site.page("/docs/p1.html", html_page("Topic 1", {"Overview": "Topic 1 is back."}))
    report = kb.refresh()
    assert report.failed == {} and report.deleted >= 1 and report.updated == 1
    assert not [c for c in kb.ask("tier 3 replicas").candidates if c.chunk.source.endswith("p3.html")]


def test_every_source_failing_leaves_the_index_alone(make_kb, tmp_path, folder):
    kb = make_kb(sources=f"notes={folder}", reranker=False, api_key="")
    count = kb.store.count()
    kb.settings.knowledge_sources = f"notes={tmp_path / 'gone'}"
    with pytest.raises(SourceError, match="folder not found"):
        kb.refresh()
    assert kb.store.count() == count


def test_citations_default_to_the_documents_own_location(make_kb, folder, local_site):
    _site(local_site, pages=1)
    kb = make_kb(sources=f"notes={folder},site={local_site.url('/docs/')}", reranker=False, api_key="",
                 docs_base_url="", crawl_delay_seconds=0)
    urls = {c.chunk.url for c in kb.ask("Who runs backups? tier 0 replicas").candidates}
    assert (folder / "faq.md").resolve().as_uri() + "#who-runs-backups" in urls
    assert any(url.startswith(local_site.url("/docs/p0.html#")) for url in urls)
    assert not any("milvus.io" in url for url in urls)


def test_docs_base_url_default_and_the_milvus_warning():
    assert KnowledgeSettings(_env_file=None).citation_template == DEFAULT_DOCS_BASE_URL
    own = KnowledgeSettings(_env_file=None, knowledge_sources="/srv/docs")
    assert own.citation_template == "" and own.citation_warning() == ""
    stale = KnowledgeSettings(_env_file=None, knowledge_sources="/srv/docs", docs_base_url=DEFAULT_DOCS_BASE_URL)
    assert "milvus.io" in stale.citation_warning()
    assert KnowledgeSettings(_env_file=None, knowledge_sources=DEFAULT_SOURCES,
                             docs_base_url=DEFAULT_DOCS_BASE_URL).citation_warning() == ""


def test_serve_warns_once_when_citations_would_link_to_milvus_io(fake_slack, tmp_path, caplog):
    import threading

    from bot.server import serve
    from bot.settings import BotSettings

    class _KB:
        def status(self):
            return {"chunks": 1}

    settings = BotSettings(_env_file=None, slack_bot_token=fake_slack.bot_token, slack_app_token=fake_slack.app_token,
                           slack_api_url=fake_slack.api_url, feedback_db=tmp_path / "f.sqlite",
                           reindex_schedule="never", knowledge_sources=str(tmp_path),
                           docs_base_url=DEFAULT_DOCS_BASE_URL)
    stop = threading.Event()
    stop.set()  # serve comes up and goes down at once
    with caplog.at_level("WARNING"):
        serve(settings, _KB(), stop=stop)
    warnings = [r for r in caplog.records if "milvus.io" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
