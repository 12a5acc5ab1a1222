"""SOURCE_ACCESS: restricted sources by Slack channel and user-group membership (bot.access).

Over the fake Slack (conversations.members, usergroups.users.list) and a real
KnowledgeBase: a restricted passage reaches the model only for people and channels
allowed to read it; sharing and hand-offs do not leak it.
"""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError
from slack_sdk import WebClient

from bot.access import Memberships, SourceAccess, SourceAccessError, parse_source_access
from bot.blocks import ASK_HUMAN, SHARE_ANSWER
from bot.handoff import handoff_message
from bot.settings import BotSettings
from bot.listeners.commands.ask import with_restricted_passages
from knowledge.types import Answer, Candidate, Chunk, Citation, SourceFilter
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)
from tests.test_cli import _restore_logging, assert_one_line_error, cli_env, run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

HR_FACT = "Parental leave is 26 weeks at full pay"
QUESTION = "How long is parental leave?"


@pytest.fixture
def hr_and_docs(tmp_path):
    """An open source and a restricted one that both speak about leave."""
    docs, hr = tmp_path / "docs", tmp_path / "hr"
    docs.mkdir()
    hr.mkdir()
    (docs / "leave.md").write_text(
        "# Time off\n\n## How long is parental leave?\n\nAsk your manager; the public handbook does not say.\n"
        "\n## Holidays\n\nThe office closes between Christmas and New Year.\n")
    (hr / "policy.md").write_text(
        f"# HR policy\n\n## How long is parental leave?\n\n{HR_FACT}, for every parent.\n"
        "\n## Salaries\n\nSalary bands are reviewed every April.\n")
    return f"docs={docs},hr={hr}"


def _client(fake_slack) -> WebClient:
    return WebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)


def _prompt(request: dict) -> str:
    return json.dumps(request.get("messages"), ensure_ascii=False)


def _blocks(params):
    blocks = params.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _button(params, action_id):
    return next(e["value"] for b in _blocks(params) if b["type"] == "actions" for e in b["elements"]
                if e["action_id"] == action_id)


def test_source_access_setting_parses_and_rejects_bad_entries():
    assert parse_source_access("hr=C0HR|s0people, legal=C0LEGAL") == {
        "hr": ("C0HR", "S0PEOPLE"), "legal": ("C0LEGAL",)}
    assert parse_source_access("") == {}
    for value, message in [("hr", "should look like"), ("hr=U01", "is not a channel"),
                           ("hr=C1,hr=C2", "listed twice"), ("h r=C1", "not a source name")]:
        with pytest.raises(ValidationError, match=message):
            BotSettings(_env_file=None, source_access=value)


def test_a_restriction_naming_no_source_refuses_to_start(cli_env, capsys, monkeypatch, tmp_path, make_kb, start_bot):
    """Unnamed sources are called "docs" while alone, then after their folder once another is added:
    SOURCE_ACCESS="docs=…" would silently stop matching and leave the HR folder open to everyone."""
    hr, public = tmp_path / "hr", tmp_path / "public"
    for folder in (hr, public):
        folder.mkdir()
        (folder / "page.md").write_text(f"# {folder.name}\n\nSome text.\n")
    monkeypatch.setenv("KNOWLEDGE_SOURCES", f"{hr},{public}")
    monkeypatch.setenv("SOURCE_ACCESS", "docs=C0HR")
    code, _, err = run(capsys, "serve")
    assert_one_line_error(code, err, "SOURCE_ACCESS restricts 'docs'", "known: hr, public, team-answers")
    assert not (tmp_path / "data").exists()  # refused before indexing anything

    kb = make_kb(sources=f"{hr},{public}")  # any way the app is built (tests, replicas) refuses too
    with pytest.raises(SourceAccessError, match="'docs'"):
        start_bot(kb, source_access="docs=C0HR")
    assert start_bot(kb, source_access="hr=C0HR").services.access.restrictions() == {"hr": ("C0HR",)}


def test_membership_is_cached_follows_events_and_a_slack_failure_denies(fake_slack):
    fake_slack.set_members("C0HR", ["U1"])
    fake_slack.set_members("S0PEOPLE", ["U2"])
    access = SourceAccess(restrictions=parse_source_access("hr=C0HR|S0PEOPLE"),
                          memberships=Memberships(client=_client(fake_slack), ttl=300))
    assert access.user_may_read("U1", "hr") and access.user_may_read("U2", "hr")
    assert not access.user_may_read("U3", "hr") and access.user_may_read("U3", "open-source")
    calls = len(fake_slack.calls("conversations.members")) + len(fake_slack.calls("usergroups.users.list"))
    access.user_may_read("U3", "hr")  # cached: Slack is not asked again
    assert len(fake_slack.calls("conversations.members")) + len(fake_slack.calls("usergroups.users.list")) == calls

    access.member_joined("C0HR", "U3")
    access.member_left("C0HR", "U1")
    access.group_changed("S0PEOPLE", removed=["U2"])
    assert access.user_may_read("U3", "hr") and not access.user_may_read("U1", "hr")
    assert not access.user_may_read("U2", "hr")

    # A fresh policy while Slack fails: denied, and not remembered as "no members".
    failing = SourceAccess(restrictions={"hr": ("C0HR",)},
                           memberships=Memberships(client=_client(fake_slack), ttl=300))
    fake_slack.fail_next("conversations.members", status=200, error="internal_error", retry_after=None)
    assert not failing.user_may_read("U1", "hr")
    assert failing.user_may_read("U1", "hr")

    # Channels: only a listed channel reads it; filters are deny lists beside CHANNEL_SOURCES.
    assert (access.for_channel("C0HR").only, access.for_channel("C0HR").exclude) == (None, ())
    assert (access.for_channel("CGEN").only, access.for_channel("CGEN").exclude) == (None, ("hr",))
    assert access.for_channel("CGEN", ("docs", "hr")).only == ("docs", "hr")
    assert SourceAccess().for_user("U1", None) == SourceFilter(exclude_prefix="team-answers-")


def test_private_channels_saved_answers_are_restricted_by_their_name_alone(fake_slack):
    """No process registers them: every replica, and a restarted one, decides the same."""
    fake_slack.set_members("GPRIV", ["U1"])
    access = SourceAccess(memberships=Memberships(client=_client(fake_slack), ttl=300),
                          saved_sources=lambda: ["team-answers", "team-answers-gpriv", "team-answers-cgone"])
    private = "team-answers-gpriv"
    assert access.channel_may_read("GPRIV", private) and not access.channel_may_read("CGEN", private)
    assert access.user_may_read("U1", private) and not access.user_may_read("U2", private)
    assert access.conversation_may_read("D1", "U1", private) and not access.conversation_may_read("D2", "U2", private)
    assert access.channel_may_read("CGEN", "team-answers") and access.user_may_read("U2", "team-answers")
    assert not access.channel_may_read("CGEN", "team-answers-not_an_id")  # not a channel: nobody
    assert not access.conversation_may_read("CGEN", "U1", "")  # an unnamed source, while private ones exist
    # The filter keeps out every team-answers-… source (listed or not) but the readable ones.
    assert access.for_channel("GPRIV") == SourceFilter(exclude_prefix="team-answers-", allow=(private,))
    assert access.for_question(channel="CGEN", user="U1", private=True) == SourceFilter(
        exclude_prefix="team-answers-", allow=(private,))  # the asker's access: not a member of CGONE
    assert access.for_user("U2", ("docs",)) == SourceFilter(only=("docs",), exclude_prefix="team-answers-")


def test_a_private_answer_records_uncited_restricted_passages():
    chunk = Chunk(id="1", source="policy.md", title="HR policy", heading_path=(), anchor="", url="u", text="t",
                  source_name="hr")
    open_chunk = Chunk(id="2", source="leave.md", title="Time off", heading_path=(), anchor="", url="v", text="t")
    answer = Answer(question="q", text="26 weeks", status="answered",
                    citations=[Citation(2, "Time off", (), "v", "leave.md", "docs")],
                    passages=[Candidate(chunk=chunk), Candidate(chunk=open_chunk)])
    recorded = with_restricted_passages(answer, lambda name: name != "hr")
    assert [(c.number, c.source_name) for c in recorded.citations] == [(2, "docs"), (1, "hr")]
    assert with_restricted_passages(answer, lambda name: True) is answer


def test_handoff_quotes_only_sources_the_channel_may_read():
    sources = [{"number": 1, "title": "HR policy", "url": "https://hr/1", "source": "policy.md", "source_name": "hr"},
               {"number": 2, "title": "Time off", "url": "https://docs/2", "source": "leave.md",
                "source_name": "docs"}]
    message = handoff_message(question="q", requested_by="U1", contacts=(), sources=sources,
                              may_read=lambda name: name != "hr")
    text = json.dumps(message)
    assert "Time off" in text and "HR policy" not in text


def test_only_members_get_restricted_passages(make_kb, fake_openai, fake_slack, start_bot, hr_and_docs):
    kb = make_kb(sources=hr_and_docs, abstain_threshold=0.0)
    fake_slack.set_members("C0HR", ["UHRCHAN"])
    fake_slack.set_members("S0PEOPLE", ["UMEMBER"])
    bot = start_bot(kb, source_access="hr=C0HR|S0PEOPLE", escalation_contacts="*=U7")

    # Two people DM the same question: only the user-group member's prompt holds the HR passage.
    prompts = {}
    for user, dm in (("UMEMBER", "D0MEMBER"), ("UOTHER", "D0OTHER")):
        before = len(fake_openai.requests)
        fake_slack.send_event(fake_slack.message_event(QUESTION, channel=dm, user=user, channel_type="im"))
        deadline = time.monotonic() + 60
        while len(fake_openai.requests) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        prompts[user] = _prompt(fake_openai.requests[-1])
    assert HR_FACT in prompts["UMEMBER"]
    assert HR_FACT not in prompts["UOTHER"] and "public handbook" in prompts["UOTHER"]

    # In channels the channel decides: C0HR is one of hr's channels, CGEN is not (whoever asks).
    for channel in ("C0HR", "CGEN"):
        before = len(fake_openai.requests)
        fake_slack.send_event(fake_slack.mention(QUESTION, channel=channel, user="UMEMBER"))
        deadline = time.monotonic() + 60
        while len(fake_openai.requests) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        prompts[channel] = _prompt(fake_openai.requests[-1])
    assert HR_FACT in prompts["C0HR"] and HR_FACT not in prompts["CGEN"]

    # /ask in CGEN by the member: the private answer cites hr; sharing it in CGEN is refused.
    fake_openai.reply("Parental leave is 26 weeks [1].")
    fake_slack.send_command(fake_slack.command_payload("/ask", QUESTION, channel="CGEN", user="UMEMBER"))
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    assert "HR policy" in json.dumps(_blocks(reply.params))
    click = fake_slack.action_payload(SHARE_ANSWER, _button(reply.params, SHARE_ANSWER), channel="CGEN",
                                      user="UMEMBER")
    click.pop("message")
    click["container"] = {"type": "message", "message_ts": "", "is_ephemeral": True, "channel_id": "CGEN"}
    click["response_url"] = fake_slack.api_url + "response_url"
    posted = len(fake_slack.calls("chat.postMessage"))
    fake_slack.send_action(click)
    [refusal] = fake_slack.wait_for("response_url", where=lambda c: "can't share" in c.params.get("text", ""))
    assert "`hr`" in refusal.params["text"]

    # "Ask a human" on that private answer posts in CGEN without naming the HR section.
    click = {**click, "actions": [{**click["actions"][0], "action_id": ASK_HUMAN,
                                   "value": _button(reply.params, ASK_HUMAN)}]}
    fake_slack.send_action(click)
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    assert handoff.params["channel"] == "CGEN" and "HR policy" not in json.dumps(_blocks(handoff.params))
    assert len(fake_slack.calls("chat.postMessage")) == posted + 1  # the hand-off only, no shared answer

    # Joining C0HR (event) lets a person read hr in DMs at once.
    fake_slack.wait_ack(fake_slack.send_event(fake_slack.member_event("member_joined_channel", channel="C0HR",
                                                                      user="UOTHER")))
    deadline = time.monotonic() + 10
    while not bot.services.access.user_may_read("UOTHER", "hr") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bot.services.access.user_may_read("UOTHER", "hr")


def test_a_member_who_leaves_is_denied_on_every_replica(make_kb, fake_openai, fake_slack, start_bot, hr_and_docs,
                                                        tmp_path):
    """member_left_channel reaches one replica; the others forget the channel's cached members at
    their sweeper's next beat (Services' access.forget_changed) instead of after ACCESS_CACHE_SECONDS."""
    kb = make_kb(sources=hr_and_docs, abstain_threshold=0.0)
    fake_slack.set_members("C0HR", ["U3"])
    settings = dict(feedback_db=tmp_path / "shared.sqlite", source_access="hr=C0HR")
    a, b = start_bot(kb, **settings), start_bot(kb, **settings)
    fake_slack.wait_connected(count=2)
    conn_a, conn_b = fake_slack.connections()[-2:]

    def ask_on_b() -> str:
        before = len(fake_openai.requests)
        fake_slack.send_event(fake_slack.message_event(QUESTION, channel="D0U3", user="U3", channel_type="im"),
                              connection=conn_b)
        deadline = time.monotonic() + 60
        while len(fake_openai.requests) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        return _prompt(fake_openai.requests[-1])

    assert HR_FACT in ask_on_b()  # B has cached U3 among C0HR's members
    assert a.services.access.forget_changed() == 0 and b.services.access.forget_changed() == 0
    fake_slack.wait_ack(fake_slack.send_event(
        fake_slack.member_event("member_left_channel", channel="C0HR", user="U3"), connection=conn_a))
    # B's sweeper beats until A's listener (run after the ack) has recorded the change.
    forgotten, deadline = 0, time.monotonic() + 20
    while not forgotten and time.monotonic() < deadline:
        time.sleep(0.05)
        forgotten = b.services.access.forget_changed()
    assert forgotten == 1 and b.services.access.forget_changed() == 0  # once
    time.sleep(0.2)  # A notes its own change just after writing it
    assert a.services.access.forget_changed() == 0  # A's own cache was updated by the event itself
    assert not a.services.access.user_may_read("U3", "hr") and not b.services.access.user_may_read("U3", "hr")
    assert HR_FACT not in ask_on_b()
