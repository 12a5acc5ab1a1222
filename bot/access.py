"""Who may read which source: SOURCE_ACCESS, private channels' saved answers, Slack membership.

    SOURCE_ACCESS="hr=C0HR|S0PEOPLE,legal=C0LEGAL"

A restricted source may be read by the members of any of its channels (C…/G…) or user
groups (S…); a source not listed is open to everyone. A source named
`team-answers-<channel id>` (a private or shared channel's saved answers, bot.learning) is
restricted to that channel by rule, from its name alone: no process has to register it,
so every replica and every restart agrees, and a name that is not a channel id is read
by nobody. Membership comes from Slack
(`conversations.members`, `usergroups.users.list`), is cached for ACCESS_CACHE_SECONDS and
follows member_joined_channel / member_left_channel / subteam_members_changed events. A
Slack API failure while checking membership denies.

Where a question is asked decides whose access counts:

- in a channel (or a group DM), the channel's: a restricted source is used only when that
  channel is one of the source's channels (everyone who can see the answer may read it);
- in a DM, the assistant pane and /ask, the asker's.

Filtering happens in Milvus on the typed `source_name` field: these methods return a
`knowledge.types.SourceFilter` (CHANNEL_SOURCES' list as `only`, the SOURCE_ACCESS sources
that may not be read as `exclude`, and every `team-answers-…` source but the readable ones
kept out by prefix, so one the database does not list yet is out too) that goes to
`KnowledgeBase.ask(source_names=...)`.

API (one `SourceAccess` per app, on `services.access`):

    SourceAccess(restrictions=..., memberships=..., saved_sources=store.source_names)
    access.restrictions() -> dict[str, tuple[str, ...]]  # SOURCE_ACCESS
    access.for_channel(channel, base=None) -> SourceFilter   # an answer seen in a channel
    access.for_user(user, base=None) -> SourceFilter         # DMs, assistant pane, /ask
    access.for_question(channel=, user=, private=, base=None)       # picks one of the two
    access.channel_may_read(channel, source_name) -> bool
    access.user_may_read(user, source_name) -> bool
    access.conversation_may_read(channel, user, source_name) -> bool   # a DM: its person; else the channel
    access.member_joined(channel, user) / member_left(channel, user)
    access.group_changed(group, added=(), removed=())

`base` is CHANNEL_SOURCES' tuple for the channel (None: every source). `saved_sources`
lists the saved answers' source names from the state database (for_user: the private
ones the asker may read; without it none). Principals are upper-cased Slack ids.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from knowledge.errors import KnowledgeError, SourceError
from knowledge.prompts import TEAM_ANSWERS_SOURCE
from knowledge.sources import parse_sources
from knowledge.types import SourceFilter

log = logging.getLogger(__name__)

_SOURCE_NAME = re.compile(r"^[\w.-]+$")
_PRINCIPAL = re.compile(r"^[CGS][A-Z0-9]+$")
_CHANNEL = re.compile(r"^[CG][A-Z0-9]+$")
PRIVATE_ANSWERS_PREFIX = f"{TEAM_ANSWERS_SOURCE}-"  # + the channel id, lower-cased (bot.learning)
_PAGE = 1000


def parse_source_access(value: str) -> dict[str, tuple[str, ...]]:
    """"hr=C0HR|S0PEOPLE,legal=C0LEGAL" -> {"hr": ("C0HR", "S0PEOPLE"), ...}.

    Raises ValueError naming a malformed entry, a bad id or a source listed twice.
    """
    mapping: dict[str, tuple[str, ...]] = {}
    for entry in (e.strip() for e in (value or "").split(",")):
        if not entry:
            continue
        name, sep, items = entry.partition("=")
        name = name.strip()
        principals = tuple(p.strip().upper() for p in items.split("|") if p.strip())
        if not sep or not name or not principals:
            raise ValueError(f"SOURCE_ACCESS entry {entry!r} should look like SOURCE=C0CHANNEL|S0GROUP")
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"SOURCE_ACCESS: {name!r} is not a source name")
        bad = [p for p in principals if not _PRINCIPAL.match(p)]
        if bad:
            raise ValueError(f"SOURCE_ACCESS: {bad[0]!r} in {entry!r} is not a channel (C…, G…) or user group (S…) id")
        if name in mapping:
            raise ValueError(f"SOURCE_ACCESS: source {name!r} is listed twice")
        mapping[name] = principals
    return mapping


class SourceAccessError(KnowledgeError):
    """SOURCE_ACCESS restricts a source the bot does not have."""


def indexed_sources(kb, settings) -> str:
    """The KNOWLEDGE_SOURCES the index was built from: the knowledge base's own settings (a test's
    or an embedding app's may differ from the bot's environment), else the bot's."""
    return getattr(getattr(kb, "settings", None), "knowledge_sources", settings.knowledge_sources)


def known_sources(knowledge_sources: str) -> set[str] | None:
    """The source names answers may draw on: KNOWLEDGE_SOURCES' and `team-answers`; None when
    KNOWLEDGE_SOURCES cannot be parsed (reported where the index is built)."""
    try:
        return {spec.name for spec in parse_sources(knowledge_sources)} | {TEAM_ANSWERS_SOURCE}
    except SourceError:
        return None


def check_source_access(source_access: str, knowledge_sources: str) -> None:
    """Refuse SOURCE_ACCESS entries naming no source of KNOWLEDGE_SOURCES (or `team-answers`): a typo,
    a rename or a derived name that changed would leave the content they mean open to everyone.

    Raises SourceAccessError naming the unknown sources and the known ones, ValueError for a
    malformed SOURCE_ACCESS; nothing when KNOWLEDGE_SOURCES cannot be parsed (reported where
    the index is built).
    """
    named = parse_source_access(source_access)
    known = known_sources(knowledge_sources) if named else None
    if known is None:
        return
    unknown = sorted(set(named) - known)
    if unknown:
        raise SourceAccessError(
            f"SOURCE_ACCESS restricts {', '.join(map(repr, unknown))}, which KNOWLEDGE_SOURCES does not define "
            f"(known: {', '.join(sorted(known))}); name each source (name=location) and restrict those names")


def private_answers_source(channel: str) -> str:
    """The source of a private channel's saved answers, readable only in and by members of `channel`."""
    return f"{PRIVATE_ANSWERS_PREFIX}{channel.lower()}"


def is_private_conversation(channel: str) -> bool:
    """A DM (D…): only the asker sees the answer, so the asker's own access counts."""
    return channel.upper().startswith("D")


class Memberships:
    """Members of channels and user groups from Slack, cached; a failed lookup is an empty set (deny)."""

    def __init__(self, *, client: WebClient | None, ttl: float = 300.0) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    def members(self, principal: str) -> frozenset[str]:
        with self._lock:
            cached = self._cache.get(principal)
            if cached and time.monotonic() - cached[0] < self._ttl:
                return frozenset(cached[1])
        found = self._fetch(principal)
        if found is None:
            return frozenset()  # not cached: the next question asks Slack again
        with self._lock:
            self._cache[principal] = (time.monotonic(), set(found))
        return frozenset(found)

    def _fetch(self, principal: str) -> set[str] | None:
        if self._client is None:
            return None
        try:
            if principal.startswith("S"):
                response = self._client.usergroups_users_list(usergroup=principal)
                return set(response.get("users") or [])
            users: set[str] = set()
            cursor = None
            while True:
                response = self._client.conversations_members(channel=principal, limit=_PAGE, cursor=cursor)
                users.update(response.get("members") or [])
                cursor = (response.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return users
        except SlackApiError as error:
            log.warning("membership of %s unknown (Slack said %s): access denied", principal,
                        error.response.get("error"))
        except (SlackClientError, OSError) as error:
            log.warning("membership of %s unknown (%s): access denied", principal, type(error).__name__)
        return None

    def update(self, principal: str, *, added: Iterable[str] = (), removed: Iterable[str] = ()) -> None:
        """Apply a membership event to a cached entry (an uncached one is fetched when needed)."""
        with self._lock:
            cached = self._cache.get(principal)
            if cached is None:
                return
            cached[1].update(added)
            cached[1].difference_update(removed)

    def forget(self, principal: str) -> None:
        with self._lock:
            self._cache.pop(principal, None)


class SourceAccess:
    """The access policy: SOURCE_ACCESS, the private-answers rule and Slack membership; thread-safe."""

    def __init__(self, *, restrictions: dict[str, Sequence[str]] | None = None,
                 memberships: Memberships | None = None,
                 saved_sources: Callable[[], Iterable[str]] | None = None, changes=None) -> None:
        self._restrictions: dict[str, tuple[str, ...]] = {
            name: tuple(p.upper() for p in principals) for name, principals in (restrictions or {}).items()
        }
        self._memberships = memberships or Memberships(client=None)
        self._saved_sources = saved_sources
        # bot.state.membership_changes.MembershipChanges: membership events seen by other replicas.
        self._changes = changes
        self._seen_changes: dict[str, float] = {}
        self._seen_lock = threading.Lock()
        self._on_forget: list[Callable[[str], None]] = []  # other caches keyed by channel (kinds)

    @classmethod
    def from_settings(cls, settings, *, client: WebClient | None,
                      saved_sources: Callable[[], Iterable[str]] | None = None, changes=None) -> SourceAccess:
        """Raises ValueError for a malformed SOURCE_ACCESS (BotSettings already rejects those)."""
        return cls(restrictions=parse_source_access(settings.source_access),
                   memberships=Memberships(client=client, ttl=settings.access_cache_seconds),
                   saved_sources=saved_sources, changes=changes)

    # -- restrictions ------------------------------------------------------------------
    def restrictions(self) -> dict[str, tuple[str, ...]]:
        """SOURCE_ACCESS (private channels' saved answers are restricted by their name instead)."""
        return dict(self._restrictions)

    def _principals(self, source_name: str) -> tuple[str, ...] | None:
        """Who may read a source (None: everyone); `team-answers-<channel>`: that channel, by rule."""
        if source_name.startswith(PRIVATE_ANSWERS_PREFIX):
            channel = source_name[len(PRIVATE_ANSWERS_PREFIX):].upper()
            return (channel,) if _CHANNEL.match(channel) else ()  # not a channel id: nobody
        return self._restrictions.get(source_name)

    def _private_answers(self) -> list[str]:
        """The per-channel saved-answer sources the state database knows (read each time)."""
        if self._saved_sources is None:
            return []
        return [name for name in self._saved_sources() if name.startswith(PRIVATE_ANSWERS_PREFIX)]

    # -- decisions ---------------------------------------------------------------------
    def channel_may_read(self, channel: str, source_name: str) -> bool:
        """May everyone who sees `channel` read this source? (open sources: always)."""
        principals = self._principals(source_name)
        return principals is None or channel.upper() in principals

    def user_may_read(self, user: str, source_name: str) -> bool:
        """Is `user` a member of one of the source's channels or user groups? (open sources: always)."""
        principals = self._principals(source_name)
        if principals is None:
            return True
        return bool(user) and any(user in self._memberships.members(p) for p in principals)

    def conversation_may_read(self, channel: str, user: str, source_name: str) -> bool:
        """May everyone who sees a message in `channel` read the source? (a DM: its person).

        A source name that is not known ("" from an answer recorded before names were kept)
        is readable only while nothing is restricted.
        """
        if not source_name:
            return not self._restrictions and not self._private_answers()
        if is_private_conversation(channel):
            return self.user_may_read(user, source_name)
        return self.channel_may_read(channel, source_name)

    def for_channel(self, channel: str, base: Sequence[str] | None = None) -> SourceFilter:
        denied = [name for name in self._restrictions if not self.channel_may_read(channel, name)]
        own = private_answers_source(channel)
        return _filter(base, denied, allowed=[own] if self.channel_may_read(channel, own) else [])

    def for_user(self, user: str, base: Sequence[str] | None = None) -> SourceFilter:
        denied = [name for name in self._restrictions if not self.user_may_read(user, name)]
        return _filter(base, denied, allowed=[n for n in self._private_answers() if self.user_may_read(user, n)])

    def for_question(self, *, channel: str, user: str, private: bool,
                     base: Sequence[str] | None = None) -> SourceFilter:
        """The asker's access when only they see the answer, else the channel's."""
        if private or is_private_conversation(channel):
            return self.for_user(user, base)
        return self.for_channel(channel, base)

    # -- membership events -------------------------------------------------------------
    def member_joined(self, channel: str, user: str) -> None:
        self._memberships.update(channel.upper(), added=[user])
        self._share_change(channel.upper())

    def member_left(self, channel: str, user: str) -> None:
        self._memberships.update(channel.upper(), removed=[user])
        self._share_change(channel.upper())

    def group_changed(self, group: str, *, added: Iterable[str] = (), removed: Iterable[str] = ()) -> None:
        self._memberships.update(group.upper(), added=added, removed=removed)
        self._share_change(group.upper())

    def channel_changed(self, channel: str) -> None:
        """Slack said the channel itself changed (made private, shared): every replica forgets
        what it cached about it, here and (through the state database) there."""
        self._memberships.forget(channel.upper())
        self._share_change(channel.upper())

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Call `callback(channel)` whenever another replica's change makes this one forget it."""
        self._on_forget.append(callback)

    def _share_change(self, principal: str) -> None:
        """Tell the other replicas (the event came to this one only); never raises."""
        if self._changes is None:
            return
        try:
            changed_at = self._changes.changed(principal)
        except Exception as error:  # noqa: BLE001 - they catch up when their cache expires
            log.warning("could not share the membership change of %s: %s", principal, error)
            return
        with self._seen_lock:
            self._seen_changes[principal] = changed_at  # this replica's cache is up to date already

    def purge_changes(self, *, older_than: float) -> None:
        """Drop shared membership changes older than `older_than` (epoch s). Raises StateError."""
        if self._changes is not None:
            self._changes.purge(older_than=older_than)

    def forget_changed(self) -> int:
        """Forget the cached members of channels and groups whose membership another replica saw
        change (the sweeper calls this every few seconds); how many were forgotten.
        Raises StateError when the database fails."""
        if self._changes is None:
            return 0
        forgotten = 0
        for principal, changed_at in self._changes.recent().items():
            with self._seen_lock:
                if self._seen_changes.get(principal) == changed_at:
                    continue
                self._seen_changes[principal] = changed_at
            self._memberships.forget(principal)
            for callback in self._on_forget:
                callback(principal)
            forgotten += 1
        return forgotten


def _filter(base: Sequence[str] | None, denied: list[str], *, allowed: list[str]) -> SourceFilter:
    # Always a filter: private channels' saved answers stay out unless allowed, whatever is indexed.
    return SourceFilter(only=tuple(base) if base is not None else None, exclude=tuple(sorted(denied)),
                        exclude_prefix=PRIVATE_ANSWERS_PREFIX, allow=tuple(sorted(set(allowed))))
