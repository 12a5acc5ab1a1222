"""Markdown (what the model writes) -> Slack mrkdwn, from markdown-it-py's token stream.

Every piece of text is escaped (&, <, >), so model output can never produce a
`<!channel>`, a `<@U123>` mention or a disguised link; `@here`, `@channel` and
`@everyone` written out get a zero-width space after the `@`. Only http(s) links
are turned into Slack links, and with `allowed_urls` only links to those URLs (the
cited sources): any other link shows its text alone, and a bare URL becomes
inline code, which Slack does not turn into a link. Text objects carrying such text
are `verbatim` (`text_object`), so Slack adds no links or mentions of its own
(`evil.example/login`, `#general`); where that cannot be said (a message's top-level
text), `auto_linked=True` puts bare domains in code as well.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import quote

from markdown_it import MarkdownIt
from markdown_it.token import Token

_INDENT = "    "
_SAFE_SCHEMES = ("http://", "https://")
# What Slack would auto-link in plain text: a scheme URL or a www. host.
_BARE_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)[^\s<>`]+", re.IGNORECASE)
# ... and, outside verbatim text objects, a bare domain: evil.example/login.
_BARE_DOMAIN = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.|\b(?:[a-z0-9-]+\.)+[a-z]{2,}(?=[/:]|\b))[^\s<>`]*", re.IGNORECASE
)
# @here, @channel, @everyone written as words: Slack may notify on them outside verbatim text.
_BROADCAST = re.compile(r"(?<![\w@])@(here|channel|everyone)\b", re.IGNORECASE)
ZERO_WIDTH_SPACE = "\u200b"


def escape(text: str) -> str:
    """Escape the three characters Slack treats as control characters, and break
    @here / @channel / @everyone with a zero-width space so they notify nobody."""
    return _BROADCAST.sub(f"@{ZERO_WIDTH_SPACE}\\1", escape_code(text))


def escape_code(text: str) -> str:
    """Escape &, < and > only: for code, which Slack never turns into mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# What a cut can leave at the end: half an entity ("&am") or an unclosed link or mention ("<https://ex").
_CUT_TAIL = re.compile(r"&[#a-z0-9]*$|<[^<>]*$", re.IGNORECASE)


def clip(text: str, limit: int) -> str:
    """mrkdwn cut to at most `limit` characters with "…", never inside an entity, a link or a
    mention (Slack would show the broken markup)."""
    if len(text) <= limit:
        return text
    return _CUT_TAIL.sub("", text[: limit - 1]) + "…"


def text_object(text: str) -> dict:
    """A mrkdwn text object Slack shows as written: no automatic links or mentions."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def safe_url(url: str) -> str | None:
    """The URL ready for `<url|text>`, or None if it is not http(s)."""
    url = url.strip()
    if not url.lower().startswith(_SAFE_SCHEMES):
        return None
    # "|" would end the URL part of a Slack link; < > & must not appear raw.
    return escape(quote(url, safe=":/?#[]@!$&'()*+,;=%~-._"))


def _parser() -> MarkdownIt:
    # html off: raw HTML from the model is shown as (escaped) text, never interpreted.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def to_mrkdwn(
    markdown: str, *, allowed_urls: Collection[str] | None = None, auto_linked: bool = False
) -> str:
    """Convert Markdown to Slack mrkdwn; empty input gives "".

    `allowed_urls`: None lets every http(s) link through; a collection keeps
    only links to those URLs (others become plain text, see the module doc).
    `auto_linked`: the text goes where Slack links bare domains itself (not a
    verbatim text object): with an allow-list, those go in inline code too.
    """
    if not markdown or not markdown.strip():
        return ""
    allowed = None if allowed_urls is None else frozenset(u.strip() for u in allowed_urls)
    if allowed is not None:
        markdown = _slack_links_as_markdown(markdown)
    tokens = _parser().parse(markdown)
    renderer = _BlockRenderer(allowed)
    renderer.bare = _BARE_DOMAIN if auto_linked else _BARE_URL
    return renderer.render(tokens).strip("\n")


# Slack's own link syntax, <https://x|label>, which models trained on Slack threads write; and code.
_SLACK_LINK = re.compile(r"<(https?://[^\s|<>]+)\|([^<>\n]+)>")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)


def _slack_links_as_markdown(markdown: str) -> str:
    """<url|label> outside code as [label](url), so it is held to the allow-list like any link
    (a URL that is not cited shows its label only) instead of showing "url|label" as text."""
    parts = _CODE.split(markdown)
    for index in range(0, len(parts), 2):  # the even parts are outside code
        parts[index] = _SLACK_LINK.sub(lambda m: f"[{m.group(2)}]({m.group(1)})", parts[index])
    return "".join(parts)


def _allowed(url: str, allowed: frozenset[str] | None) -> bool:
    return allowed is None or url.strip() in allowed


def _plain_text(text: str, allowed: frozenset[str] | None, bare: re.Pattern = _BARE_URL) -> str:
    """Escaped text; bare URLs that are not allowed go in inline code so Slack leaves them unlinked."""
    if allowed is None:
        return escape(text)
    out, last = [], 0
    for match in bare.finditer(text):
        url = match.group(0).rstrip(".,;:!?)]}'\"")
        out.append(escape(text[last : match.start()]))
        out.append(escape(url) if url in allowed else "`" + escape(url) + "`")
        last = match.start() + len(url)
    out.append(escape(text[last:]))
    return "".join(out)


class _BlockRenderer:
    """Walks block tokens, keeping the list / quote nesting as a prefix stack."""

    def __init__(self, allowed: frozenset[str] | None = None) -> None:
        self.allowed = allowed
        self.out: list[str] = []
        self.lists: list[list[int | None]] = []  # per open list: [next number or None]
        self.quote_depth = 0
        self.pending_item_prefix: str | None = None
        self.table_row: list[str] = []
        self.in_table = False
        self.in_heading = False
        self.bare = _BARE_URL  # what counts as a bare link to keep unlinked

    def render(self, tokens: list[Token]) -> str:
        for token in tokens:
            self._block(token)
        return "".join(self.out)

    # -- helpers -------------------------------------------------------------
    def _line_prefix(self) -> str:
        return "> " * self.quote_depth

    def _emit_lines(self, text: str) -> None:
        """Emit a block's text, honouring list indentation and quote markers."""
        indent = _INDENT * max(len(self.lists) - 1, 0) if self.lists else ""
        lines = text.split("\n")
        for index, line in enumerate(lines):
            if index == 0 and self.pending_item_prefix is not None:
                line = indent + self.pending_item_prefix + line
                self.pending_item_prefix = None
            elif self.lists:
                line = indent + "   " + line if line else line
            self.out.append(self._line_prefix() + line + "\n")

    def _blank_line(self) -> None:
        # Inside lists and quotes paragraphs stay together: a blank line would end them.
        if not self.lists and not self.quote_depth and self.out and self.out[-1] != "\n":
            self.out.append("\n")

    # -- blocks --------------------------------------------------------------
    def _block(self, token: Token) -> None:
        kind = token.type
        if kind == "inline":
            text = render_inline(token.children or [], allowed_urls=self.allowed, bare=self.bare)
            if self.in_table:
                self.table_row.append(text)
            elif self.in_heading:
                # mrkdwn has no headings: a bold line reads the same.
                self._emit_lines(f"*{text.strip('*')}*" if text else "")
            else:
                self._emit_lines(text)
        elif kind == "heading_open":
            self.in_heading = True
        elif kind == "heading_close" or kind == "paragraph_close":
            self.in_heading = False
            self._blank_line()
        elif kind == "bullet_list_open":
            self.lists.append([None])
        elif kind == "ordered_list_open":
            start = token.attrGet("start")
            self.lists.append([int(start) if start is not None else 1])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
            if not self.lists:
                self.out.append("\n")
        elif kind == "list_item_open":
            number = self.lists[-1][0]
            if number is None:
                self.pending_item_prefix = "• "
            else:
                self.pending_item_prefix = f"{number}. "
                self.lists[-1][0] = number + 1
        elif kind == "list_item_close":
            self.pending_item_prefix = None
        elif kind == "blockquote_open":
            self.quote_depth += 1
        elif kind == "blockquote_close":
            self.quote_depth -= 1
            self._blank_line()
        elif kind in ("fence", "code_block"):
            body = escape_code(token.content.rstrip("\n"))
            self._emit_lines(f"```\n{body}\n```")
            self._blank_line()
        elif kind == "hr":
            self._emit_lines("──────────")
            self._blank_line()
        elif kind == "table_open":
            self.in_table = True
        elif kind == "tr_open":
            self.table_row = []
        elif kind == "tr_close":
            self._emit_lines(" | ".join(self.table_row))
            self.table_row = []
        elif kind == "table_close":
            self.in_table = False
            self._blank_line()
        elif kind == "html_block":
            self._emit_lines(escape(token.content.rstrip("\n")))
            self._blank_line()


def render_inline(
    children: list[Token], *, allowed_urls: frozenset[str] | None = None, bare: re.Pattern = _BARE_URL
) -> str:
    """Render inline tokens (a paragraph's content) as mrkdwn; links limited as in to_mrkdwn."""
    allowed = allowed_urls
    out: list[str] = []
    link_stack: list[tuple[str | None, int, bool]] = []  # (safe url, output position, autolink)
    for token in children:
        kind = token.type
        if kind == "text":
            # Inside an allowed link the label is not linked again; anywhere else bare URLs are checked.
            inside_link = bool(link_stack) and link_stack[-1][0] is not None
            out.append(escape(token.content) if inside_link else _plain_text(token.content, allowed, bare))
        elif kind == "code_inline":
            # Backticks inside code cannot be escaped in mrkdwn; keep the span readable.
            out.append("`" + escape_code(token.content.replace("`", "'")) + "`")
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "strong_open" or kind == "strong_close":
            out.append("*")
        elif kind == "em_open" or kind == "em_close":
            out.append("_")
        elif kind == "s_open" or kind == "s_close":
            out.append("~")
        elif kind == "link_open":
            href = token.attrGet("href") or ""
            url = safe_url(href) if _allowed(href, allowed) else None
            link_stack.append((url, len(out), token.markup == "autolink"))
        elif kind == "link_close":
            url, start, autolink = link_stack.pop() if link_stack else (None, len(out), False)
            label = "".join(out[start:])
            del out[start:]
            # <https://x> stays a bare link: its text is its (encoded) URL, nothing to disguise.
            out.append(f"<{url}>" if autolink and url else _link(url, label))
        elif kind == "image":
            src = token.attrGet("src") or ""
            url = safe_url(src) if _allowed(src, allowed) else None
            out.append(_link(url, escape(token.content or "image")))
        elif kind == "html_inline":
            out.append(escape(token.content))
    return "".join(out)


def _link(url: str | None, label: str) -> str:
    if url is None:
        return label
    # A "|" in the label is fine; formatting markers inside Slack links are not.
    label = label.strip("*_~") or url
    return f"<{url}>" if label == url else f"<{url}|{label}>"
