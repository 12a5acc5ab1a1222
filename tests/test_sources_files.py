"""File formats (PDF with and without an outline, HTML, text), download and file guards,
git repositories (a local bare repository over file://), failed sources keeping their chunks."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from fpdf import FPDF

from knowledge.chunking import chunk_document
from knowledge.errors import SourceError
from knowledge.sources import FetchOptions, SourceSpec, open_source, parse_sources, read_documents
from knowledge.sources.http import FetchError, check_url
from tests.fixtures.site import local_site  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

CHAPTERS = [
    ("Leave policy", "Parental leave lasts twenty six weeks at full pay for every parent."),
    ("Backups", "Backups are kept for thirty days in cold storage before deletion."),
    ("Security", "Passwords rotate every ninety days and keys every year."),
]


def _pdf(path: Path, *, outline: bool, numbered: bool = False) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for number, (title, body) in enumerate(CHAPTERS, start=1):
        pdf.add_page()
        heading = f"{number}. {title}" if numbered else title
        if outline:
            pdf.start_section(heading)
        if outline or numbered:
            pdf.set_font("helvetica", "B", 16)
            pdf.cell(text=heading)
            pdf.ln(12)
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(w=0, text=(body + " ") * 3)
    pdf.output(str(path))
    return path


def _chunks(doc):
    return chunk_document(doc, max_tokens=300, overlap_tokens=0, min_tokens=0, url_template="")


def _options(tmp_path, **overrides) -> FetchOptions:
    return FetchOptions(cache_dir=tmp_path / "cache", **overrides)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("outline, numbered", [(True, False), (False, True), (False, False)])
def test_pdf_sections_from_outline_or_headings_or_pages_cite_their_page(tmp_path, outline, numbered):
    folder = tmp_path / "handbook"
    folder.mkdir()
    _pdf(folder / "handbook.pdf", outline=outline, numbered=numbered)
    [doc] = read_documents(parse_sources(f"hb={folder}"), cache_dir=tmp_path / "cache")
    chunks = _chunks(doc)
    backups = next(c for c in chunks if "thirty days" in c.text)
    assert backups.url.endswith("/handbook/handbook.pdf#page=2") and backups.url.startswith("file://")
    assert "twenty six weeks" not in backups.text  # one section per chapter, not the whole file
    if outline or numbered:
        assert backups.heading_path[-1].endswith("Backups")
    else:
        assert backups.heading_path == ("Page 2",)


def test_a_pdf_that_will_not_parse_names_the_file(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    with pytest.raises(SourceError, match=r"Source 'docs' .*broken.pdf: not a readable PDF"):
        read_documents(parse_sources(str(folder)), cache_dir=tmp_path)


def test_html_and_text_files_in_a_zip_read_like_markdown(tmp_path):
    archive = tmp_path / "kb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("guide/setup.html", "<html><head><title>Setup</title></head><body><nav>Home | Blog</nav>"
                     "<main><h1>Setup</h1><h2 id='ports'>Ports</h2><p>The server listens on port 19530 for "
                     "clients and 9091 for metrics, which operators should open.</p></main></body></html>")
        out.writestr("notes.txt", "Plain notes.\n# not a heading\nThe cache lives in /var/cache/app.")
    docs = {d.source: d for d in read_documents(parse_sources(str(archive)), cache_dir=tmp_path)}
    [ports] = [c for c in _chunks(docs["guide/setup.html"]) if "19530" in c.text]
    assert ports.heading_path == ("Ports",) and ports.anchor == "ports" and "Home | Blog" not in ports.text
    [notes] = _chunks(docs["notes.txt"])
    assert notes.title == "notes" and "# not a heading" in notes.text and notes.heading_path == ()


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize("url, allowed", [
    ("https://docs.example.com/a.zip", True),
    ("http://docs.example.com/a.zip", False),
    ("http://127.0.0.1:8080/a.zip", True),
    ("http://localhost/a.zip", True),
    ("http://[::1]/a.zip", True),
    ("ftp://docs.example.com/a.zip", False),
])
def test_plain_http_is_refused_except_for_loopback_or_when_allowed(tmp_path, url, allowed):
    # URL parsing only: nothing is contacted.
    if allowed:
        check_url(url, options=_options(tmp_path))
    else:
        with pytest.raises(FetchError, match="https"):
            check_url(url, options=_options(tmp_path))
    if url.startswith("http://"):
        check_url(url, options=_options(tmp_path, allow_http=True))


def test_refused_url_is_a_source_error_naming_the_source(tmp_path):
    with pytest.raises(SourceError, match=r"Source 'hb' .*plain http; use https"):
        read_documents(parse_sources("hb=http://docs.example.com/handbook.zip"), cache_dir=tmp_path)


def test_download_size_cap_and_deadline(local_site, tmp_path):
    local_site.raw("/big.zip", b"PK" + b"x" * 5000, "application/zip")
    with pytest.raises(SourceError, match=r"Source 'big' .*larger than 1,024 bytes"):
        open_source(SourceSpec("big", local_site.url("/big.zip")), options=_options(tmp_path, max_download_bytes=1024)
                    ).read()
    local_site.raw("/slow.pdf", b"%PDF-1.4", "application/pdf")
    local_site.slow("/slow.pdf", 2.0)
    with pytest.raises(SourceError, match=r"Source 'slow' .*download of .*slow.pdf failed"):
        open_source(SourceSpec("slow", local_site.url("/slow.pdf")),
                    options=_options(tmp_path, request_timeout=0.5, download_deadline=0.5)).read()


def test_zip_bomb_member_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("ok.md", "# Fine\n\nA normal page.\n")
        out.writestr("bomb.md", "# Bomb\n\n" + "0" * 5_000_000)
    with pytest.raises(SourceError, match=r"Source 'docs' .*bomb.md is compressed [\d,]+:1, over the 100:1 cap"):
        read_documents(parse_sources(str(archive)), cache_dir=tmp_path)
    with pytest.raises(SourceError, match=r"bomb.md unpacks to 5,000,008 bytes, over the 1,048,576-byte file cap"):
        open_source(SourceSpec("docs", str(archive)), options=_options(tmp_path, max_file_bytes=1 << 20,
                                                                       max_zip_ratio=1e9)).read()


def test_folder_symlinks_out_of_the_folder_are_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwords.md").write_text("# Passwords\n\nroot: hunter2\n")
    folder = tmp_path / "kb"
    (folder / "inner").mkdir(parents=True)
    (folder / "page.md").write_text("# Page\n\nPublic text.\n")
    (folder / "inner" / "real.md").write_text("# Real\n\nInside text.\n")
    os.symlink(secret / "passwords.md", folder / "leak.md")
    os.symlink(secret, folder / "leakdir")
    os.symlink(folder / "inner" / "real.md", folder / "alias.md")  # inside the folder: fine
    docs = read_documents(parse_sources(str(folder)), cache_dir=tmp_path / "cache")
    assert sorted(d.source for d in docs) == ["alias.md", "inner/real.md", "page.md"]
    assert not any("hunter2" in d.text for d in docs)


# --------------------------------------------------------------------------- git


def _git(*args, cwd=None):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def bare_repo(tmp_path):
    """A bare repository with docs/ on branch main, and a work tree to push changes from."""
    bare, work = tmp_path / "origin.git", tmp_path / "work"
    _git("init", "--bare", "--initial-branch=main", str(bare))
    _git("init", "--initial-branch=main", str(work))
    (work / "docs").mkdir()
    (work / "docs" / "install.md").write_text("# Install\n\n## Linux\n\nRun the installer as root.\n")
    (work / "docs" / "upgrade.md").write_text("# Upgrade\n\n## Steps\n\nStop the server, then upgrade.\n")
    _pdf(work / "docs" / "manual.pdf", outline=True)
    (work / "README.md").write_text("# Readme\n\nNot under docs.\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-m", "docs", cwd=work)
    _git("push", str(bare), "main", cwd=work)
    return bare, work


def test_git_repository_clone_then_fetch_reads_only_changed_files(bare_repo, tmp_path):
    bare, work = bare_repo
    spec = parse_sources(f"repo=git+{bare.as_uri()}@main::docs/**/*")[0]
    source = open_source(spec, options=_options(tmp_path))
    docs = {d.source: d for d in source.read()}
    assert set(docs) == {"docs/install.md", "docs/upgrade.md", "docs/manual.pdf"}
    assert source.converted == 3
    [linux] = [c for c in _chunks(docs["docs/install.md"]) if "installer" in c.text]
    assert linux.url.startswith("file://") and linux.url.endswith("docs/install.md#linux")

    (work / "docs" / "upgrade.md").write_text("# Upgrade\n\n## Steps\n\nBack up first, then upgrade.\n")
    (work / "docs" / "install.md").unlink()
    _git("commit", "-am", "change", cwd=work)
    _git("push", str(bare), "main", cwd=work)
    again = open_source(spec, options=_options(tmp_path))
    docs = {d.source: d for d in again.read()}
    assert set(docs) == {"docs/upgrade.md", "docs/manual.pdf"} and "Back up first" in docs["docs/upgrade.md"].text
    assert again.converted == 1  # the PDF came from the cache by its blob id

    # DOCS_BASE_URL says how to link into the repository's web view.
    [steps] = [c for c in chunk_document(docs["docs/upgrade.md"], max_tokens=300, overlap_tokens=0, min_tokens=0,
                                         url_template="https://git.example.com/org/repo/src/main/{source}#{anchor}")
               if "Back up" in c.text]
    assert steps.url == "https://git.example.com/org/repo/src/main/docs/upgrade.md#steps"


def test_git_failures_are_source_errors_without_credentials(tmp_path):
    missing = tmp_path / "nope.git"
    with pytest.raises(SourceError, match=r"Source 'repo' .*git clone failed"):
        open_source(parse_sources(f"repo=git+{missing.as_uri()}@main")[0], options=_options(tmp_path)).read()
    with pytest.raises(SourceError, match="plain http") as error:
        open_source(parse_sources("repo=git+http://user:tok3n@git.example.com/r.git")[0],
                    options=_options(tmp_path)).read()
    assert "tok3n" not in str(error.value)
