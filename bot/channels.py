"""Per-channel behaviour from settings: auto-answer channels, their sources, their experts.

Formats (all plain strings, so they fit one `.env` line):

    AUTO_ANSWER_CHANNELS="C0123,C0456"                  channel ids
    CHANNEL_SOURCES="C0123=docs|faq,C0456=faq,*=docs"   channel -> source names ("*": the rest)
    ESCALATION_CONTACTS="C0123=U01|S02,*=U09"           channel -> users (U/W) or user groups (S)

A channel without a CHANNEL_SOURCES entry (and no "*") draws on every source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_KEY = "*"
_CHANNEL = re.compile(r"^[CDG][A-Z0-9]+$")
_CONTACT = re.compile(r"^[UWS][A-Z0-9]+$", re.IGNORECASE)  # "u01" typed by hand is fine
_SOURCE_NAME = re.compile(r"^[\w.-]+$")


def parse_channel_ids(value: str) -> frozenset[str]:
    """"C1, C2" -> {"C1", "C2"}; raises ValueError naming a value that is not a channel id."""
    ids = {part.strip().upper() for part in re.split(r"[\s,;]+", value or "")}
    ids.discard("")
    for channel in ids:
        if not _CHANNEL.match(channel):
            raise ValueError(f"{channel!r} is not a Slack channel id (C..., G... or D...)")
    return frozenset(ids)


def parse_channel_map(value: str, *, what: str, item: re.Pattern[str]) -> dict[str, tuple[str, ...]]:
    """"C1=a|b,*=c" -> {"C1": ("a", "b"), "*": ("c",)}; raises ValueError on a malformed entry."""
    mapping: dict[str, tuple[str, ...]] = {}
    for entry in (e.strip() for e in (value or "").split(",")):
        if not entry:
            continue
        key, sep, items = entry.partition("=")
        key = key.strip()
        key = key if key == DEFAULT_KEY else key.upper()
        values = tuple(v.strip() for v in items.split("|") if v.strip())
        if not sep or not values:
            raise ValueError(f"{what} entry {entry!r} should look like CHANNEL=A|B (or *=A for the default)")
        if key != DEFAULT_KEY and not _CHANNEL.match(key):
            raise ValueError(f"{what}: {key!r} is not a channel id (C..., G..., D...) or *")
        bad = [v for v in values if not item.match(v)]
        if bad:
            raise ValueError(f"{what}: {bad[0]!r} in entry {entry!r} is not valid")
        if key in mapping:
            raise ValueError(f"{what}: channel {key} is listed twice")
        mapping[key] = values
    return mapping


def parse_channel_sources(value: str) -> dict[str, tuple[str, ...]]:
    return parse_channel_map(value, what="CHANNEL_SOURCES", item=_SOURCE_NAME)


def parse_escalation_contacts(value: str) -> dict[str, tuple[str, ...]]:
    mapping = parse_channel_map(value, what="ESCALATION_CONTACTS", item=_CONTACT)
    return {key: tuple(v.upper() for v in values) for key, values in mapping.items()}


def mention(contact: str) -> str:
    """The Slack markup that notifies a user (U/W) or a user group (S)."""
    return f"<!subteam^{contact}>" if contact.startswith("S") else f"<@{contact}>"


@dataclass(frozen=True)
class ChannelRules:
    """The parsed settings; build with `from_settings` (the strings were validated there)."""

    auto_answer: frozenset[str] = frozenset()
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    contacts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings) -> ChannelRules:
        """Raises ValueError for a malformed value (BotSettings already rejects those)."""
        return cls(
            auto_answer=parse_channel_ids(settings.auto_answer_channels),
            sources=parse_channel_sources(settings.channel_sources),
            contacts=parse_escalation_contacts(settings.escalation_contacts),
        )

    def answers_everything(self, channel: str) -> bool:
        return channel in self.auto_answer

    def sources_for(self, channel: str) -> tuple[str, ...] | None:
        """The source names this channel may draw on; None means all of them."""
        return self.sources.get(channel) or self.sources.get(DEFAULT_KEY)

    def unknown_sources(self, known: set[str]) -> list[str]:
        """Source names CHANNEL_SOURCES gives that KNOWLEDGE_SOURCES does not define (those channels find nothing)."""
        return sorted({name for names in self.sources.values() for name in names} - known)

    def contacts_for(self, channel: str) -> tuple[str, ...]:
        """The users / user groups to tag on a hand-off in this channel (may be empty)."""
        return self.contacts.get(channel) or self.contacts.get(DEFAULT_KEY) or ()
