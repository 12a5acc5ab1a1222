"""File formats -> Markdown text the chunker reads: Markdown, HTML, plain text, PDF.

Every format ends as Markdown whose headings carry their citation anchor as
``{#anchor}`` (``{#}``: no anchor), so one chunker serves all of them:

- HTML: the main content only (trafilatura drops navigation, footers, cookie
  banners), headings keep the page's own ``id`` when it has one;
- PDF: text by page (pypdf); sections from the outline, else from headings the
  text shows (numbered or upper-case lines), else one per page; every section is
  anchored ``page=N`` so a citation opens ``file.pdf#page=N``;
- plain text: the file name as title, the text as written.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import PurePosixPath

log = logging.getLogger(__name__)

MARKDOWN = (".md", ".mdx", ".markdown")
HTML = (".html", ".htm")
TEXT = (".txt",)
PDF = (".pdf",)
SUPPORTED = MARKDOWN + HTML + TEXT + PDF

_HEADING_LINE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_SPACES = re.compile(r"\s+")
# Headings a PDF's text shows: "2.3 Backups", "Chapter 4 Storage", "SECURITY POLICY".
_NUMBERED = re.compile(r"^(?:(?:chapter|section|part)\s+)?\d{1,2}(?:\.\d{1,2}){0,3}\.?\s+\S.{0,78}$", re.IGNORECASE)
_UPPER = re.compile(r"^[A-Z][A-Z0-9 &/,:'()-]{3,60}$")


BINARY_PROBE_BYTES = 8192  # how much of a file is looked at for NUL bytes (as git and grep do)


class FormatError(Exception):
    """A file that cannot be turned into text (a broken PDF, ...)."""


def kind_of(path: str) -> str | None:
    """"markdown", "html", "text", "pdf", or None for files that are not read."""
    suffix = PurePosixPath(path.lower()).suffix
    for kind, suffixes in (("markdown", MARKDOWN), ("html", HTML), ("text", TEXT), ("pdf", PDF)):
        if suffix in suffixes:
            return kind
    return None


def decode(data: bytes, *, label: str, path: str) -> str:
    """The file's text (undecodable bytes replaced, with a warning). Raises FormatError for a
    binary file (a NUL byte): an image or archive named .md would be indexed as noise."""
    if b"\x00" in data[:BINARY_PROBE_BYTES]:
        raise FormatError("a binary file, not text (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s: %s is not valid UTF-8; undecodable bytes replaced", label, path)
        return data.decode("utf-8", errors="replace")


def to_markdown(data: bytes, *, path: str, label: str) -> str:
    """The Markdown the chunker reads for one file. Raises FormatError for an unreadable PDF or a binary file."""
    kind = kind_of(path) or "text"
    if kind == "pdf":
        return pdf_to_markdown(data, path=path)
    text = decode(data, label=label, path=path)
    if kind == "html":
        return html_to_markdown(text, fallback_title=PurePosixPath(path).stem)
    if kind == "text":
        return text_to_markdown(text, title=PurePosixPath(path).stem)
    return text


# --------------------------------------------------------------------------- plain text


def text_to_markdown(text: str, *, title: str) -> str:
    # Indented lines would become code blocks and "#" lines headings: keep the text as written.
    body = "\n".join(line.strip() for line in text.replace("\r\n", "\n").split("\n"))
    body = re.sub(r"^(#+)", r"\\\1", body, flags=re.MULTILINE)
    return f"---\ntitle: {_yaml_string(title)}\n---\n\n{body}\n" if body.strip() else ""


# --------------------------------------------------------------------------- HTML


def html_to_markdown(html: str, *, fallback_title: str = "") -> str:
    """Main content of a page as Markdown; headings carry the page's own ids; "" when nothing is left."""
    import trafilatura
    from lxml import html as lxml_html

    extracted = trafilatura.extract(
        html, output_format="markdown", include_formatting=True, include_tables=True,
        include_links=False, include_images=False, include_comments=False, favor_recall=True,
        config=_trafilatura_config(),
    )
    if not extracted or not extracted.strip():
        return ""
    ids: dict[str, list[str]] = {}
    title = fallback_title
    try:
        tree = lxml_html.fromstring(html)
        title = _clean(tree.findtext(".//title") or "") or fallback_title
        for heading in tree.iter("h1", "h2", "h3", "h4", "h5", "h6"):
            anchor = _heading_id(heading)
            if anchor:
                ids.setdefault(_clean(heading.text_content()).lower(), []).append(anchor)
    except (ValueError, TypeError) as error:  # lxml rejects some documents trafilatura could read
        log.debug("heading ids not read: %s", error)

    lines = []
    for line in extracted.split("\n"):
        match = _HEADING_LINE.match(line)
        if match:
            text = _clean(match.group(2).replace("*", "").replace("`", ""))
            found = ids.get(text.lower())
            anchor = found.pop(0) if found else ""
            line = f"\n{match.group(1)} {match.group(2)} {{#{anchor}}}\n"
        lines.append(line)
    body = "\n".join(lines).strip()
    return f"---\ntitle: {_yaml_string(title)}\n---\n\n{body}\n"


_CONFIG = None


def _trafilatura_config():
    """Short pages too: by default trafilatura falls back to flat text under 250 characters."""
    global _CONFIG
    if _CONFIG is None:
        from trafilatura.settings import use_config

        config = use_config()
        for key in ("MIN_EXTRACTED_SIZE", "MIN_OUTPUT_SIZE", "MIN_EXTRACTED_COMM_SIZE", "MIN_OUTPUT_COMM_SIZE"):
            config.set("DEFAULT", key, "1")
        _CONFIG = config
    return _CONFIG


def _heading_id(heading) -> str:
    """The heading's own id, else that of an anchor inside it or a <section> it opens."""
    if heading.get("id"):
        return heading.get("id")
    for child in heading.iter("a", "span"):
        if child.get("id"):
            return child.get("id")
        if child.get("name"):
            return child.get("name")
    parent = heading.getparent()
    if parent is not None and parent.tag == "section" and parent.get("id") and parent.index(heading) == 0:
        return parent.get("id")
    return ""


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- PDF


def pdf_to_markdown(data: bytes, *, path: str) -> str:
    """Text by page under headings anchored ``page=N``. Raises FormatError when pypdf cannot read it."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise FormatError("the PDF is encrypted")
        pages = [_page_text(page) for page in reader.pages]
        outline = _outline(reader)
        meta_title = _clean(str((reader.metadata or {}).get("/Title") or ""))
    except FormatError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as error:
        raise FormatError(f"not a readable PDF ({' '.join(str(error).split()) or type(error).__name__})") from None
    title = meta_title or PurePosixPath(path).stem
    if not any(p.strip() for p in pages):
        return ""
    if outline:
        sections = _sections_from_outline(pages, outline)
    else:
        sections = _sections_from_text(pages)
    parts = [f"---\ntitle: {_yaml_string(title)}\n---"]
    for level, heading, page, text in sections:
        heading = heading.replace("#", "").strip() or f"Page {page}"
        parts.append(f"{'#' * min(level + 1, 6)} {heading} {{#page={page}}}\n\n{_escape_text(text)}".rstrip())
    return "\n\n".join(parts) + "\n"


def _page_text(page) -> str:
    text = page.extract_text() or ""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))


def _escape_text(text: str) -> str:
    # PDF text is prose: lines must not turn into Markdown headings, code or lists by accident.
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"^(#+|[-*+] |\d+\. )", r"\\\1", "\n".join(lines), flags=re.MULTILINE).strip()


def _outline(reader) -> list[tuple[int, str, int]]:
    """(level, title, 1-based page) for every outline entry, in reading order."""
    entries: list[tuple[int, str, int]] = []

    def walk(items, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - a broken destination: that entry only
                continue
            if page is not None and page >= 0:
                entries.append((level, _clean(str(item.title or "")), page + 1))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - no usable outline: headings from the text instead
        return []
    return sorted(entries, key=lambda e: e[2]) if entries else []


def _sections_from_outline(pages: list[str], outline: list[tuple[int, str, int]]):
    """Each outline entry's text: from its title on its page to where the next entry starts."""
    sections = []
    first_page = outline[0][2]
    sections += [(1, f"Page {n}", n, pages[n - 1].strip()) for n in range(1, first_page) if pages[n - 1].strip()]
    for index, (level, title, page) in enumerate(outline):
        nxt = outline[index + 1] if index + 1 < len(outline) else None
        text = _after(pages[page - 1], title)
        if nxt is not None and nxt[2] == page:
            parts = [_before(text, nxt[1])]
        else:
            last = nxt[2] - 1 if nxt is not None else len(pages)
            parts = [text, *pages[page:last]]
            if nxt is not None and _find_title(pages[nxt[2] - 1], nxt[1]) > 0:
                parts.append(_before(pages[nxt[2] - 1], nxt[1]))  # the next page starts with our tail
        sections.append((level, title, page, "\n".join(parts).strip()))
    return sections


def _after(text: str, title: str) -> str:
    """The text after the line that shows `title` (all of it when the title is not found)."""
    at = _find_title(text, title)
    if at < 0:
        return text
    end = text.find("\n", at)
    return text[end + 1 :] if end >= 0 else ""


def _before(text: str, title: str) -> str:
    at = _find_title(text, title)
    return text[:at] if at >= 0 else text


def _find_title(text: str, title: str) -> int:
    if not title:
        return -1
    at = text.find(title)
    if at >= 0:
        return text.rfind("\n", 0, at) + 1
    return -1


def _sections_from_text(pages: list[str]):
    """Sections at lines that look like headings; one per page when the text shows none."""
    sections: list[list] = []
    found_any = False
    for number, text in enumerate(pages, start=1):
        current: list | None = None
        for line in text.split("\n"):
            stripped = line.strip()
            if _looks_like_heading(stripped):
                found_any = True
                current = [1, stripped, number, []]
                sections.append(current)
                continue
            if current is None:
                if sections and found_any:
                    # The section from an earlier page continues: cited at this page.
                    heading = re.sub(r" \(page \d+\)$", "", sections[-1][1])
                    current = [1, f"{heading} (page {number})", number, []]
                else:
                    current = [1, f"Page {number}", number, []]
                sections.append(current)
            current[3].append(line)
    if not found_any:
        return [(1, f"Page {n}", n, t.strip()) for n, t in enumerate(pages, start=1) if t.strip()]
    return [(level, heading, page, "\n".join(lines).strip()) for level, heading, page, lines in sections]


def _looks_like_heading(line: str) -> bool:
    if not line or len(line) > 80 or line.endswith((".", ",", ";", ":")):
        return False
    if _NUMBERED.match(line) and not re.match(r"^\d[\d.,]*\s*$", line) and len(line.split()) <= 10:
        return not re.search(r"\d\s*$", line)  # "2.1 Storage" yes, "Table 3 rows 12" no
    return bool(_UPPER.match(line)) and len(line.split()) <= 8 and any(c.isalpha() for c in line)
