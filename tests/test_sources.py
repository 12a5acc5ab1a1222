"""KNOWLEDGE_SOURCES parsing and reading: folders, zips, downloads over local HTTP, includes."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge.errors import SourceError
from knowledge.settings import DEFAULT_SOURCES
from knowledge.sources import DEFAULT_GLOB, SourceSpec, glob_to_regex, parse_sources, read_documents

# --------------------------------------------------------------------------- parse_sources


def test_single_unnamed_source_is_called_docs_with_the_default_glob():
    assert parse_sources("/srv/docs/en") == [SourceSpec("docs", "/srv/docs/en", DEFAULT_GLOB)]


def test_named_and_globbed_entry_with_whitespace():
    specs = parse_sources("  faq = /srv/docs/en :: faq/*.md  ")
    assert specs == [SourceSpec("faq", "/srv/docs/en", "faq/*.md")]


def test_default_setting_is_a_url_with_a_glob():
    (spec,) = parse_sources(DEFAULT_SOURCES)
    assert spec.name == "docs"
    assert spec.is_url
    assert spec.location.endswith("milvus_docs_2.4.x_en.zip")
    assert spec.glob == "en/faq/*.md"


def test_several_unnamed_sources_get_stable_names_from_their_locations():
    value = "/a/en, https://example.test/dl/guide.zip::en/**/*.md ,/b/en, ops=/c/runbooks,"
    specs = parse_sources(value)
    assert [s.name for s in specs] == ["en", "guide", "en-2", "ops"]
    assert specs[1] == SourceSpec("guide", "https://example.test/dl/guide.zip", "en/**/*.md")
    assert parse_sources(value) == specs  # stable across calls


def test_url_with_query_is_not_mistaken_for_a_name():
    (spec,) = parse_sources("https://example.test/a.zip?token=x=y::*.md")
    assert (spec.name, spec.location, spec.glob) == ("docs", "https://example.test/a.zip?token=x=y", "*.md")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "KNOWLEDGE_SOURCES is empty"),
        (" , ,", "KNOWLEDGE_SOURCES is empty"),
        ("docs=::*.md", "has no location"),
        ("a=/x, a=/y", "used twice"),
        ("n" * 257 + "=/x", "longer than 256"),  # the index would cut it: filters on it would miss
        (f"/srv/{'d' * 257}, /srv/b", "longer than 256"),
    ],
)
def test_bad_source_values_raise_source_error(value, message):
    with pytest.raises(SourceError, match=message):
        parse_sources(value)
    assert parse_sources("n" * 256 + "=/x")[0].name == "n" * 256


def test_globs_keep_single_stars_inside_one_folder():
    faq = glob_to_regex("en/faq/*.md")
    assert faq.match("en/faq/a.md")
    assert not faq.match("en/faq/sub/a.md")
    assert not faq.match("en/faq/a.mdx")
    anywhere = glob_to_regex("**/*.md")
    assert anywhere.match("a.md") and anywhere.match("x/y/z.md")
    assert not anywhere.match("a.md.bak")


# --------------------------------------------------------------------------- folders


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def docs_folder(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "en",
        {
            "faq/product_faq.md": "# Product FAQ\n\nIntro.\n\n{{fragments/answer.md}}\n\nVersion {{var.milvus_release_version}}.\n",
            "faq/extra.mdx": "# Extra\n\nMDX page.\n",
            "guide/deep/page.md": "# Deep\n\n{{local.md}}\n\n{{fragments/missing.md}}\nend\n",
            "guide/deep/local.md": "Local include text.",
            "fragments/answer.md": "Answer from a fragment.\n\n{{fragments/nested.md}}\n",
            "fragments/nested.md": "Nested fragment text.\n",
            "fragments/loop.md": "Loop {{fragments/loop.md}}",
            "notes.txt": "plain text notes",
            "logo.png": b"\x89PNG not a document",
        },
    )


def _by_source(docs):
    return {d.source: d for d in docs}


def test_folder_source_paths_are_relative_to_the_folder(docs_folder, tmp_path):
    docs = read_documents(parse_sources(f"{docs_folder}::faq/*.md"), cache_dir=tmp_path / "cache")
    assert [d.source for d in docs] == ["faq/product_faq.md"]
    assert docs[0].source_name == "docs"


def test_default_glob_reads_every_supported_kind_recursively_but_not_other_files(docs_folder, tmp_path):
    docs = read_documents([SourceSpec("kb", str(docs_folder))], cache_dir=tmp_path / "cache")
    sources = [d.source for d in docs]
    assert "faq/extra.mdx" in sources and "guide/deep/page.md" in sources
    assert "notes.txt" in sources and "logo.png" not in sources
    only_md = read_documents([SourceSpec("kb", str(docs_folder), "**/*.md")], cache_dir=tmp_path / "cache")
    assert "faq/extra.mdx" in [d.source for d in only_md] and "notes.txt" not in [d.source for d in only_md]
    assert sources == sorted(sources)
    assert {d.source_name for d in docs} == {"kb"}


def test_includes_are_resolved_recursively_and_template_variables_left_alone(docs_folder, tmp_path):
    docs = _by_source(read_documents([SourceSpec("kb", str(docs_folder))], cache_dir=tmp_path))
    text = docs["faq/product_faq.md"].text
    assert "Answer from a fragment." in text
    assert "Nested fragment text." in text
    assert "{{fragments/" not in text
    assert "{{var.milvus_release_version}}" in text  # not an include


def test_include_beside_the_file_missing_include_and_cycles_are_tolerated(docs_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="knowledge.sources"):
        docs = _by_source(read_documents([SourceSpec("kb", str(docs_folder))], cache_dir=tmp_path))
    page = docs["guide/deep/page.md"].text
    assert "Local include text." in page
    assert "missing.md" not in page and "end" in page
    assert "fragments/missing.md" in caplog.text
    assert "Loop" in docs["fragments/loop.md"].text  # the cycle stopped at the depth limit
    assert "too deeply" in caplog.text


def test_non_utf8_file_is_decoded_with_replacement_and_logged(tmp_path, caplog):
    folder = _write(tmp_path / "kb", {"latin.md": "# Caf\xe9\n".encode("latin-1")})
    with caplog.at_level(logging.WARNING, logger="knowledge.sources"):
        (doc,) = read_documents(parse_sources(str(folder)), cache_dir=tmp_path / "cache")
    assert doc.text.startswith("# Caf\ufffd")
    assert "latin.md is not valid UTF-8" in caplog.text


def test_a_binary_file_named_like_text_fails_its_source_naming_it(tmp_path):
    """Not indexed as noise: the refresh reports the file and the source keeps its previous chunks."""
    folder = _write(tmp_path / "kb", {"ok.md": b"# Fine\n", "blob.md": bytes(range(256)) * 40,
                                      "notes.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"})
    with pytest.raises(SourceError, match=r"(blob\.md|notes\.txt): a binary file, not text"):
        read_documents(parse_sources(str(folder)), cache_dir=tmp_path / "cache")


def test_missing_folder_raises_source_error_naming_the_entry(tmp_path):
    with pytest.raises(SourceError) as error:
        read_documents(parse_sources(f"kb={tmp_path / 'nope'}"), cache_dir=tmp_path)
    message = str(error.value)
    assert "'kb'" in message and "folder not found" in message and "\n" not in message


def test_glob_matching_nothing_raises_source_error(docs_folder, tmp_path):
    with pytest.raises(SourceError, match=r"Source 'docs' .*no file matches 'faq/\*\.txt'"):
        read_documents(parse_sources(f"{docs_folder}::faq/*.txt"), cache_dir=tmp_path)


# --------------------------------------------------------------------------- zips


def _make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for rel, content in files.items():
            archive.writestr(rel, content)
    return path


ZIP_FILES = {
    "en/faq/product_faq.md": "# Product FAQ\n\n## Cost\n\nMilvus is free.\n",
    "en/reference/index.md": "# Index\n\n{{fragments/flat.md}}\n",
    "en/fragments/flat.md": "FLAT scans everything.\n",
    "README.txt": "readme",
}


def test_local_zip_with_glob_keeps_paths_relative_to_the_zip_root(tmp_path):
    archive = _make_zip(tmp_path / "docs.zip", ZIP_FILES)
    docs = read_documents(parse_sources(f"{archive}::en/faq/*.md"), cache_dir=tmp_path / "cache")
    assert [d.source for d in docs] == ["en/faq/product_faq.md"]
    assert docs[0].source.endswith("faq/product_faq.md")  # what the eval hit rule compares
    assert "Milvus is free." in docs[0].text


def test_zip_includes_are_found_in_a_folder_above_the_including_file(tmp_path):
    archive = _make_zip(tmp_path / "docs.zip", ZIP_FILES)
    (doc,) = read_documents(parse_sources(f"{archive}::en/reference/*.md"), cache_dir=tmp_path)
    assert "FLAT scans everything." in doc.text


def test_bad_zip_raises_source_error(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(SourceError, match=r"Source 'docs' .*broken.zip is not a readable zip file"):
        read_documents(parse_sources(str(bad)), cache_dir=tmp_path)


def test_corrupt_zip_member_raises_source_error_naming_the_file(tmp_path):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        out.writestr("en/faq/a.md", "# A\n\nOriginal answer text.\n")
    archive.write_bytes(archive.read_bytes().replace(b"Original", b"Tampered"))  # CRC now wrong
    with pytest.raises(SourceError, match=r"Source 'docs' .*cannot read en/faq/a.md"):
        read_documents(parse_sources(str(archive)), cache_dir=tmp_path)


def test_missing_zip_raises_source_error(tmp_path):
    with pytest.raises(SourceError, match="zip file not found"):
        read_documents(parse_sources(str(tmp_path / "gone.zip")), cache_dir=tmp_path)


# --------------------------------------------------------------------------- downloads


class _ZipServer:
    """A real HTTP server on 127.0.0.1 serving one zip with an ETag; records requests."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[tuple[str, int, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                etag = '"' + hashlib.sha256(server.payload).hexdigest()[:16] + '"'
                if self.path == "/dl/login.zip":  # a proxy or login page answering 200 with HTML
                    body = b"<html>please log in</html>"
                    server.requests.append((self.path, 200, dict(self.headers)))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path != "/dl/milvus_docs.zip":
                    status = 404
                elif self.headers.get("If-None-Match") == etag:
                    status = 304
                else:
                    status = 200
                server.requests.append((self.path, status, dict(self.headers)))
                self.send_response(status)
                if status == 200:
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", str(len(server.payload)))
                    self.end_headers()
                    self.wfile.write(server.payload)
                else:
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def zip_server(tmp_path: Path, monkeypatch) -> Iterator[_ZipServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    payload = _make_zip(tmp_path / "served.zip", ZIP_FILES).read_bytes()
    server = _ZipServer(payload)
    yield server
    server.close()


def test_url_zip_is_downloaded_once_then_revalidated_from_the_cache(zip_server, tmp_path):
    specs = parse_sources(f"{zip_server.base}/dl/milvus_docs.zip::en/faq/*.md")
    cache = tmp_path / "cache"
    first = read_documents(specs, cache_dir=cache)
    assert [d.source for d in first] == ["en/faq/product_faq.md"]
    assert [r[1] for r in zip_server.requests] == [200]
    assert not list((cache / "downloads").glob(".part-*"))  # temp file renamed into place

    second = read_documents(specs, cache_dir=cache)
    assert second == first
    assert [r[1] for r in zip_server.requests] == [200, 304]  # conditional, no body sent again
    assert zip_server.requests[1][2].get("If-None-Match")


def test_changed_remote_zip_is_downloaded_again(zip_server, tmp_path):
    specs = parse_sources(f"{zip_server.base}/dl/milvus_docs.zip::en/faq/*.md")
    read_documents(specs, cache_dir=tmp_path)
    zip_server.payload = _make_zip(
        tmp_path / "v2.zip", {"en/faq/product_faq.md": "# Product FAQ\n\nNow with a price.\n"}
    ).read_bytes()
    (doc,) = read_documents(specs, cache_dir=tmp_path)
    assert "Now with a price." in doc.text
    assert [r[1] for r in zip_server.requests] == [200, 200]


def test_cached_zip_is_used_when_the_server_is_gone(zip_server, tmp_path, caplog):
    specs = parse_sources(f"{zip_server.base}/dl/milvus_docs.zip::en/faq/*.md")
    first = read_documents(specs, cache_dir=tmp_path)
    zip_server.close()
    with caplog.at_level(logging.WARNING, logger="knowledge.sources"):
        assert read_documents(specs, cache_dir=tmp_path) == first
    assert "using the cached copy" in caplog.text


def test_failed_download_raises_one_line_source_error_with_url_and_reason(zip_server, tmp_path):
    url = f"{zip_server.base}/dl/other.zip"
    with pytest.raises(SourceError) as error:
        read_documents(parse_sources(f"{url}?token=secret"), cache_dir=tmp_path)
    message = str(error.value)
    assert url in message and "HTTP 404" in message
    assert "secret" not in message and "\n" not in message


def test_html_answer_is_not_cached_as_a_zip(zip_server, tmp_path):
    url = f"{zip_server.base}/dl/login.zip"
    with pytest.raises(SourceError, match="did not send a zip file"):
        read_documents(parse_sources(url), cache_dir=tmp_path)
    assert not list((tmp_path / "downloads").iterdir())  # no zip, no meta, no temp file


def test_unreachable_server_raises_source_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = _ZipServer(b"")
    url = f"{server.base}/dl/milvus_docs.zip"
    server.close()  # nothing listens on the port any more
    with pytest.raises(SourceError, match=r"download of .*milvus_docs.zip failed: "):
        read_documents(parse_sources(url), cache_dir=tmp_path)
