"""Markdown -> Slack mrkdwn: formatting, and nothing the model writes can ping or disguise a link."""

import pytest

from bot.mrkdwn import escape, safe_url, to_mrkdwn


def test_empty_input_gives_empty_output():
    assert to_mrkdwn("") == ""
    assert to_mrkdwn("  \n ") == ""


@pytest.mark.parametrize(
    "markdown",
    ["<!channel> please", "hi <@U1>", "<!here|here>", "<!subteam^S1>"],
)
def test_mentions_and_raw_links_are_escaped(markdown):
    out = to_mrkdwn(markdown)
    assert "<" not in out and ">" not in out
    assert "&lt;" in out


def test_ampersand_and_angle_brackets_escaped_everywhere():
    out = to_mrkdwn("a & b < c > d `x<y>&z` **<!channel>** _<@U1>_")
    assert out == "a &amp; b &lt; c &gt; d `x&lt;y&gt;&amp;z` *&lt;!channel&gt;* _&lt;@U1&gt;_"


def test_emphasis_strike_inline_code():
    assert to_mrkdwn("**bold** and *it* and ~~gone~~ and `code`") == "*bold* and _it_ and ~gone~ and `code`"


def test_http_links_become_slack_links_others_plain_text():
    assert to_mrkdwn("[the docs](https://milvus.io/docs/a.md#b)") == "<https://milvus.io/docs/a.md#b|the docs>"
    assert to_mrkdwn("[x](ftp://host/file)") == "x"
    assert "<" not in to_mrkdwn("[x](javascript:alert(1))")


def test_autolink_cannot_smuggle_a_label():
    # Slack would show "docs.milvus.io" for <https://evil.example|docs.milvus.io>: the "|" is encoded.
    assert to_mrkdwn("<https://evil.example|docs.milvus.io>") == "<https://evil.example%7Cdocs.milvus.io>"


def test_a_slack_link_written_by_the_model_is_held_to_the_cited_urls_like_a_markdown_link():
    cited = ["https://docs.example/a"]
    assert to_mrkdwn("See <https://evil.example|click> now.", allowed_urls=cited) == "See click now."
    assert to_mrkdwn("Read <https://docs.example/a|the guide>.", allowed_urls=cited) == (
        "Read <https://docs.example/a|the guide>.")  # a cited one is a link
    assert to_mrkdwn("`<https://evil.example|x>`", allowed_urls=cited) == "`&lt;https://evil.example|x&gt;`"


def test_link_url_cannot_break_out_of_the_link():
    out = to_mrkdwn("[label](https://a.example/x?q=1|<!channel>)")
    assert out.startswith("<https://a.example/x?q=1%7C")
    assert "<!channel>" not in out and out.count("<") == 1


def test_link_label_with_mention_is_escaped():
    out = to_mrkdwn("[<!channel>](https://a.example)")
    assert out == "<https://a.example|&lt;!channel&gt;>"


def test_code_block_contents_untouched_but_escaped():
    markdown = "Run:\n\n```python\nx = **1** < 2  # <!here> _y_\n```\n"
    out = to_mrkdwn(markdown)
    assert "```\nx = **1** &lt; 2  # &lt;!here&gt; _y_\n```" in out


def test_lists_headings_quotes():
    markdown = "# Install\n\n- one\n- two\n  1. sub\n\n3. three\n4. four\n\n> quoted **b**\n"
    out = to_mrkdwn(markdown)
    assert out.splitlines()[0] == "*Install*"
    assert "• one\n• two\n    1. sub" in out
    assert "3. three\n4. four" in out
    assert "> quoted *b*" in out


def test_citation_markers_survive():
    assert to_mrkdwn("Milvus uses etcd [1] and MinIO [2].") == "Milvus uses etcd [1] and MinIO [2]."


def test_raw_html_is_text():
    assert to_mrkdwn("<b>hi</b>") == "&lt;b&gt;hi&lt;/b&gt;"


def test_helpers():
    assert escape("<&>") == "&lt;&amp;&gt;"
    assert safe_url("mailto:a@b") is None
    assert safe_url("HTTPS://x.example/a b") == "HTTPS://x.example/a%20b"


def test_clip_never_leaves_half_an_entity_a_link_or_a_mention():
    from bot.mrkdwn import clip

    assert clip("short", 10) == "short"
    assert clip("a" * 8 + "&amp;b", 10) == "a" * 8 + "…"  # not "aaaaaaaa&"
    link = "see <https://docs.example/very/long/path|the page> now"
    assert clip(link, 20) == "see …"  # not "see <https://docs.e…"
    assert clip("ask <@U123ABC> about it", 10) == "ask …"
    assert clip("<https://a.b|x> and more words here", 20) == "<https://a.b|x> and…"  # a whole link stays
    assert all(len(clip("x&lt;" * 50, n)) <= n for n in range(2, 60))
