"""The bot learns from its threads: a person's reply, once marked, becomes a saved answer it cites.

Capture: a RESOLVED_REACTION on a reply (by the asker or one of the channel's
ESCALATION_CONTACTS) or the "Save as answer" message shortcut (by those or an
admin) saves the reply with the thread's question, who answered, when and the
permalink. LEARN_REVIEW decides whether it is used at once or waits for an
admin in the App Home. Active saved answers are indexed as their own source
(`team-answers`, or `team-answers-<channel>` for a private or shared channel, readable
only in and by members of that channel: bot.access decides it from the name)
through `KnowledgeBase.sync_documents`, and re-supplied to every refresh so a
reindex keeps them. DMs are never saved.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import TTLCache
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.access import private_answers_source
from bot.admins import AdminCache, is_admin
from bot.channels import ChannelRules
from bot.conversations import kept_to_members
from bot.history import _replies, read_thread
from bot.learned_blocks import confirmation_message, removed_message
from bot.settings import BotSettings
from bot.slack_text import UserNames, plain_text
from bot.state.database import Database
from bot.state.saved_answers import ACTIVE, PENDING, REJECTED, REMOVED, SavedAnswer, SavedAnswers, new_id
from knowledge.errors import KnowledgeError
from knowledge.prompts import TEAM_ANSWERS_SOURCE
from knowledge.types import Answer, Document, Turn

log = logging.getLogger(__name__)

SOURCE_PREFIX = "slack/"  # a saved answer's Document.source is "slack/<id>.md"
NOT_ALLOWED = "Only the person who asked, the channel's experts or an admin can save an answer here."
NOT_A_REPLY = "Only a reply in a thread the bot took part in can be saved as an answer."
NO_DMS = "Answers in direct messages are never saved."
ALREADY_SAVED = "This reply is already saved as an answer."
NOT_FOUND = "I can't find that message any more."
FAILED = "Sorry, I couldn't save that answer. (error id: `{error_id}`)"


@dataclass(frozen=True)
class Outcome:
    """What a capture or review step did: the saved answer (when it changed) and a line for the person."""

    saved: SavedAnswer | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.saved is not None


def source_name_for(channel: str, *, private: bool) -> str:
    """`team-answers` for public channels; a private or shared channel's answers get a source of their own."""
    return private_answers_source(channel) if private else TEAM_ANSWERS_SOURCE


def answer_date(saved: SavedAnswer) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(saved.answered_at))


def citation_title(saved: SavedAnswer) -> str:
    """"Answered in #channel by @person, DATE": how a saved answer is cited (its date ends the title)."""
    where = f"#{saved.channel_name}" if saved.channel_name else "Slack"
    return f"Answered in {where} by @{saved.answered_by_name or saved.answered_by}, {answer_date(saved)}"


def document_for(saved: SavedAnswer) -> Document:
    """The Markdown document a saved answer is indexed as: its citation title, the question, the reply."""
    # A line starting with "# " in the reply would become a section of its own.
    answer = "\n".join("\\" + line if line.lstrip().startswith("#") else line for line in saved.answer.splitlines())
    text = f"# {citation_title(saved)}\n\n**Question:** {' '.join(saved.question.split())}\n\n{answer}\n"
    return Document(source=f"{SOURCE_PREFIX}{saved.id}.md", text=text, source_name=saved.source_name,
                    url=saved.permalink)


def documents_of(store: SavedAnswers) -> list[Document]:
    """Every active saved answer as a Document (what a refresh re-supplies)."""
    return [document_for(saved) for saved in store.list((ACTIVE,))]


def attach(kb, store: SavedAnswers) -> None:
    """Make every refresh and rebuild of `kb` index the saved answers too (so none deletes them)."""
    supply = getattr(kb, "supply_documents", None)
    if supply is not None:
        supply(lambda: documents_of(store))


def attach_from_settings(kb, settings: BotSettings) -> None:
    """For the command line: a refresh from there keeps the saved answers too.

    The state database is opened only when a refresh asks for them (`supportbot ask` never
    touches it); a database that cannot be opened then fails the refresh (StateError) rather
    than deleting the saved answers from the index.
    """
    if not settings.learn_from_threads or not hasattr(kb, "supply_documents"):
        return
    opened: list[SavedAnswers] = []

    def documents() -> list[Document]:
        if not opened:
            opened.append(SavedAnswers(database=Database.from_settings(settings)))
        return documents_of(opened[0])

    kb.supply_documents(documents)


def saved_answer_dict(saved: SavedAnswer) -> dict:
    """A saved answer as JSON-ready data (`supportbot answers export`)."""
    data = dict(saved.__dict__)
    data["answered_on"] = answer_date(saved)
    data["cited_as"] = citation_title(saved)
    return data


def format_saved_answers(answers: Sequence[SavedAnswer], usage: dict) -> str:
    """The `supportbot answers list` text: one block per answer."""
    if not answers:
        return "No saved answers yet."
    lines = []
    for saved in answers:
        used = usage.get(saved.id)
        figures = f"cited {used.answers}x, +{used.helpful}/-{used.not_helpful}" if used else "not cited yet"
        question = " ".join(saved.question.split())
        lines += [f"{saved.id}  [{saved.status}]  {citation_title(saved)}  ({figures})",
                  f"    Q: {question[:200]}", f"    {saved.permalink}" if saved.permalink else "    (no permalink)"]
    return "\n".join(lines)


def saved_ids_cited(answer: Answer) -> list[str]:
    """The saved answers an answer cites (their citations' source is "slack/<id>.md")."""
    ids = []
    for citation in answer.citations:
        if citation.source.startswith(SOURCE_PREFIX) and citation.source.endswith(".md"):
            ids.append(citation.source[len(SOURCE_PREFIX):-3])
    return ids


REREAD_MAX_PAGES = 50  # 10,000 replies: past that a missing reply may just be unread


class Learner:
    """Saves, reviews, removes and indexes the team's answers; Slack failures are logged, never raised."""

    def __init__(
        self,
        *,
        store: SavedAnswers,
        kb,
        client: WebClient,
        settings: BotSettings,
        rules: ChannelRules,
        bot_user_id: str = "",
        bot_id: str = "",
        admins: AdminCache | None = None,
    ) -> None:
        self.store = store
        self._kb = kb
        self._client = client
        self._settings = settings
        self._rules = rules
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self._admins = admins or AdminCache()
        self._names = UserNames(client)
        self._sync_lock = threading.Lock()
        self._sync_failed = False  # the last sync failed: recheck_channels retries it
        self._cache_lock = threading.Lock()
        self._groups: TTLCache[str, frozenset[str]] = TTLCache(maxsize=256, ttl=300)
        attach(kb, store)

    # -- who may do what ---------------------------------------------------
    def is_admin(self, user: str) -> bool:
        return is_admin(user, settings=self._settings, client=self._client, cache=self._admins)

    def is_contact(self, channel: str, user: str) -> bool:
        """Whether `user` is one of the channel's ESCALATION_CONTACTS (directly or through a user group)."""
        if not user:
            return False
        for contact in self._rules.contacts_for(channel):
            if contact == user or (contact.startswith("S") and user in self._group_members(contact)):
                return True
        return False

    def _group_members(self, group: str) -> frozenset[str]:
        with self._cache_lock:
            known = self._groups.get(group)
        if known is not None:
            return known
        try:
            users = frozenset(self._client.usergroups_users_list(usergroup=group).get("users") or ())
        except (SlackApiError, SlackClientError, OSError) as error:
            log.warning("usergroups.users.list for %s failed: %s", group, _code(error))
            return frozenset()
        with self._cache_lock:
            self._groups[group] = users
        return users

    # -- capture -----------------------------------------------------------
    def capture(self, *, channel: str, message_ts: str, marker: str, via: str) -> Outcome:
        """Save the reply at `message_ts` if `marker` may; `via` is "reaction" or "shortcut".

        Returns the new saved answer, or why not (one line for the person; "" when a
        reaction should pass silently). Raises nothing: Slack and database failures are logged.
        """
        if not channel or not message_ts or channel.startswith("D"):
            return Outcome(message=NO_DMS)
        try:
            return self._capture(channel=channel, message_ts=message_ts, marker=marker, via=via)
        except (SlackApiError, SlackClientError, OSError, KnowledgeError) as error:
            error_id = _error_id()
            log.warning("saving the answer %s/%s failed error_id=%s: %s", channel, message_ts, error_id, _code(error))
            return Outcome(message=FAILED.format(error_id=error_id))

    def _capture(self, *, channel: str, message_ts: str, marker: str, via: str) -> Outcome:
        existing = self.store.by_message(channel, message_ts)
        if existing is not None and existing.status in (ACTIVE, PENDING):
            return Outcome(message=ALREADY_SAVED)
        info = self._channel_info(channel)
        if info.get("is_im"):
            return Outcome(message=NO_DMS)
        reply = self._message(channel, message_ts)
        if reply is None:
            return Outcome(message=NOT_FOUND)
        thread_ts = reply.get("thread_ts") or ""
        if not thread_ts or thread_ts == message_ts or not self._from_person(reply):
            return Outcome(message=NOT_A_REPLY)
        thread = _replies(self._client, channel=channel, thread_ts=thread_ts)
        if not any(self._from_bot(m) for m in thread):
            return Outcome(message=NOT_A_REPLY)
        parent = next((m for m in thread if m.get("ts") == thread_ts), {})
        asker = parent.get("user", "") if self._from_person(parent) else ""
        trusted = self.is_contact(channel, marker) or (via == "shortcut" and self.is_admin(marker))
        if marker != asker and not trusted:
            return Outcome(message=NOT_ALLOWED)
        question = self._question(parent, thread, asker=asker, before_ts=message_ts)
        answer = self._plain(reply.get("text", ""))
        if not question or not answer:
            return Outcome(message=NOT_A_REPLY)
        # A shared channel (Slack Connect, or across an org's workspaces) keeps its answers to its own
        # members too: one customer's thread is never cited to another organisation.
        private = kept_to_members(info, channel)
        author = reply.get("user", "")
        saved = SavedAnswer(
            id=new_id(), status=PENDING if self._needs_review(trusted) else ACTIVE,
            channel=channel, channel_name=info.get("name", ""), private=private,
            thread_ts=thread_ts, message_ts=message_ts, question=question, answer=answer,
            answered_by=author, answered_by_name=self._names(author), answered_at=_ts_time(message_ts),
            saved_by=marker, saved_at=time.time(), via=via, permalink=self._permalink(channel, message_ts),
            source_name=source_name_for(channel, private=private),
        )
        stored = self.store.add(saved)
        if stored is None:
            return Outcome(message=ALREADY_SAVED)
        if stored.status == ACTIVE:
            self.sync()
        self._confirm(stored)
        log.info("saved answer %s from %s/%s by %s via %s (%s)", stored.id, channel, message_ts, marker, via,
                 stored.status)
        return Outcome(saved=self.store.get(stored.id) or stored)

    def _needs_review(self, trusted: bool) -> bool:
        review = self._settings.learn_review
        return (not trusted) if review == "auto" else review == "true"

    def _question(self, parent: dict, thread: list[dict], *, asker: str, before_ts: str) -> str:
        """The thread's first question; rewritten to stand alone (chat model) using the asker's later
        messages before the reply, when there are any."""
        question = self._plain(parent.get("text", ""))
        later = [self._plain(m.get("text", "")) for m in thread
                 if asker and m.get("user") == asker and m.get("ts") != parent.get("ts")
                 and float(m.get("ts", "0")) < float(before_ts)]
        later = [text for text in later if text]
        if not later or not hasattr(self._kb, "standalone_question"):
            return question
        # The rewriter resolves its last message from the earlier ones: the clarifications come first.
        turns = [Turn(role="user", text=text) for text in later]
        try:
            return self._kb.standalone_question(question, turns) or question
        except KnowledgeError as error:
            log.info("could not rewrite the saved question: %s", error)
            return question

    def _plain(self, text: str) -> str:
        """A message as plain text, the bot's own mention removed ("@docsbot how do I…" asks the bot)."""
        if self.bot_user_id:
            text = re.sub(rf"<@{re.escape(self.bot_user_id)}(\|[^>]*)?>", "", text)
        return plain_text(text, user_name=self._names)

    # -- review, undo, edits -----------------------------------------------
    def undo(self, saved_id: str, user: str) -> Outcome:
        """The confirmation's Undo: by whoever saved it, the person who answered, a contact or an admin."""
        saved = self.store.get(saved_id)
        if saved is None or saved.status in (REMOVED, REJECTED):
            return Outcome(message="That answer is no longer saved.")
        if user not in (saved.saved_by, saved.answered_by) and not self.is_contact(saved.channel, user) \
                and not self.is_admin(user):
            return Outcome(message=NOT_ALLOWED)
        return self._retire(saved, REMOVED, user, note=f"Undone by <@{user}>: I won't use this answer.")

    def remove(self, saved_id: str, user: str = "", *, note: str = "") -> Outcome:
        """Remove a saved answer (App Home, CLI, the message was deleted); no permission check here."""
        saved = self.store.get(saved_id)
        if saved is None or saved.status == REMOVED:
            return Outcome(message="That answer is no longer saved.")
        return self._retire(saved, REMOVED, user, note=note or "Removed: I won't use this answer any more.")

    def approve(self, saved_id: str, user: str, *, question: str | None = None, answer: str | None = None) -> Outcome:
        """An admin approves (optionally edited) a pending answer: it is indexed at once."""
        saved = self.store.get(saved_id)
        if saved is None or saved.status in (REMOVED, REJECTED):
            return Outcome(message="That answer is no longer pending.")
        if question is not None or answer is not None:
            self.store.update(saved_id, question=question, answer=answer)
        saved = self.store.set_status(saved_id, ACTIVE, by=user)
        self.sync()
        self._confirm(saved)
        return Outcome(saved=saved)

    def reject(self, saved_id: str, user: str) -> Outcome:
        saved = self.store.get(saved_id)
        if saved is None:
            return Outcome(message="That answer is no longer pending.")
        return self._retire(saved, REJECTED, user, note="Not saved: an admin decided this reply should not be used.")

    def _retire(self, saved: SavedAnswer, status: str, user: str, *, note: str) -> Outcome:
        was_active = saved.status == ACTIVE
        saved = self.store.set_status(saved.id, status, by=user)
        if was_active:
            self.sync()
        if saved.confirm_ts:
            self._update_message(saved.channel, saved.confirm_ts, removed_message(note))
        return Outcome(saved=saved)

    def message_changed(self, channel: str, message_ts: str, text: str) -> SavedAnswer | None:
        """The saved reply was edited in Slack: the saved answer follows (an emptied message removes it).

        Where LEARN_REVIEW applies to its author, an answer in use goes back to review: what an
        admin approved (or an expert marked) was the earlier text.
        """
        saved = self.store.by_message(channel, message_ts)
        if saved is None or saved.status not in (ACTIVE, PENDING):
            return None
        answer = self._plain(text)
        if not answer:
            return self.message_deleted(channel, message_ts)
        if answer == saved.answer:
            return saved
        review = saved.status == ACTIVE and self._needs_review(self.is_contact(channel, saved.answered_by))
        if review:  # first, so no sync (on any replica) indexes the new text meanwhile
            self.store.set_status(saved.id, PENDING)
        updated = self.store.update(saved.id, answer=answer)
        if saved.status == ACTIVE:
            self.sync()
        if review and updated is not None:
            self._confirm(updated)  # the thread's confirmation says it waits for review again
        log.info("saved answer %s follows an edit of %s/%s%s", saved.id, channel, message_ts,
                 " (back to review)" if review else "")
        return updated

    def message_deleted(self, channel: str, message_ts: str) -> SavedAnswer | None:
        """The saved reply was deleted in Slack: the saved answer goes too."""
        saved = self.store.by_message(channel, message_ts)
        if saved is None or saved.status in (REMOVED, REJECTED):
            return None
        log.info("saved answer %s removed: %s/%s was deleted", saved.id, channel, message_ts)
        return self.remove(saved.id, note="The reply was deleted, so I won't use it any more.").saved

    def reread_saved(self) -> int:
        """The safety net under message_changed / message_deleted (run hourly by one replica): each
        saved reply in use or waiting for review is read again from Slack, so an edit or a deletion
        that no replica heard (Socket Mode does not redeliver what came while nobody was connected)
        is followed. An edit counts when Slack dates it after the saved answer last changed (an
        admin's own wording at review is kept otherwise). A thread that cannot be read (the bot
        left the channel, Slack failing) is read again next time; being rate limited ends the round.
        Returns how many saved answers changed."""
        threads: defaultdict[tuple[str, str], list[SavedAnswer]] = defaultdict(list)
        for saved in self.store.list((ACTIVE, PENDING)):
            threads[(saved.channel, saved.thread_ts)].append(saved)
        changed = 0
        for (channel, thread_ts), answers in threads.items():
            try:
                messages, whole = read_thread(self._client, channel=channel, thread_ts=thread_ts,
                                              max_pages=REREAD_MAX_PAGES)
            except SlackApiError as error:
                if _code(error) != "thread_not_found":  # the parent and every reply are gone
                    log.info("could not read %s/%s again (%s): next time", channel, thread_ts, _code(error))
                    if _code(error) == "ratelimited":
                        break
                    continue
                messages, whole = [], True
            except (SlackClientError, OSError) as error:
                log.info("could not read %s/%s again (%s): next time", channel, thread_ts, _code(error))
                continue
            by_ts = {message.get("ts"): message for message in messages}
            for saved in answers:
                message = by_ts.get(saved.message_ts)
                if message is None or message.get("subtype") == "tombstone":
                    if whole and self.message_deleted(channel, saved.message_ts) is not None:
                        changed += 1
                    continue
                edited = (message.get("edited") or {}).get("ts", "")
                if edited and _ts_time(edited) > saved.updated_at:
                    after = self.message_changed(channel, saved.message_ts, message.get("text", ""))
                    changed += after is not None and after != saved
        if changed:
            log.info("%d saved answer(s) follow edits or deletions read again from Slack", changed)
        return changed

    def recheck_channels(self) -> int:
        """The safety net under channel_became_private (run hourly by the sweeper): a failed
        index sync is retried, and each channel that still has public saved answers is looked
        up, so one made private or shared while no replica heard of it is caught. A lookup that
        fails is tried again next time; "channel_not_found" (private now, without the bot)
        counts as private. Returns how many answers moved."""
        if self._sync_failed:
            self.sync()
        moved = 0
        for channel in self.store.public_channels():
            try:
                info = self._client.conversations_info(channel=channel).get("channel") or {}
            except SlackApiError as error:
                if _code(error) != "channel_not_found":
                    log.info("conversations.info for %s failed (%s): rechecked next time", channel, _code(error))
                    continue
                info = {"is_private": True}
            except (SlackClientError, OSError) as error:
                log.info("conversations.info for %s failed (%s): rechecked next time", channel, _code(error))
                continue
            if kept_to_members(info, channel):
                moved += self.channel_became_private(channel)
        return moved

    def channel_became_private(self, channel: str) -> int:
        """`channel` was made private or shared with another organisation: its saved answers,
        public until now, move to the channel's own source (only its members read them from
        here on). Returns how many moved; the index follows at once."""
        moved = self.store.make_private(channel, source_name=private_answers_source(channel))
        if moved:
            log.info("%d saved answer(s) of %s now kept to its members: the channel is private or shared",
                     moved, channel)
            self.sync()
        return moved

    # -- the index ---------------------------------------------------------
    def sync(self) -> bool:
        """Index the active saved answers now (only changed ones are embedded); False when it failed
        (logged: the next refresh re-supplies them)."""
        names = sorted({TEAM_ANSWERS_SOURCE, *self.store.source_names()})
        with self._sync_lock:
            try:
                self._kb.sync_documents(documents_of(self.store), source_names=names)
            except (KnowledgeError, ValueError) as error:
                log.warning("indexing the saved answers failed (retried within the hour): %s", error)
                self._sync_failed = True
                return False
            self._sync_failed = False
        return True

    def record_uses(self, answer: Answer, record_id: str, *, private: bool) -> None:
        """Remember which saved answers a posted answer cited (the App Home counts them, and
        quotes the latest questions: never one asked in a private conversation)."""
        ids = saved_ids_cited(answer)
        if ids and record_id:
            try:
                self.store.record_use(ids, record_id, question="" if private else answer.question)
            except KnowledgeError as error:
                log.warning("could not record the saved answers' use: %s", error)

    def record_feedback(self, answer_id: str, value: int) -> None:
        try:
            self.store.record_feedback(answer_id, value)
        except KnowledgeError as error:
            log.warning("could not record feedback on saved answers: %s", error)

    # -- Slack -------------------------------------------------------------
    def _confirm(self, saved: SavedAnswer) -> None:
        """Say in the thread that the reply was saved (once; later changes edit that message)."""
        message = confirmation_message(saved, title=citation_title(saved))
        if saved.confirm_ts:
            self._update_message(saved.channel, saved.confirm_ts, message)
            return
        try:
            posted = self._client.chat_postMessage(channel=saved.channel, thread_ts=saved.thread_ts, **message)
        except (SlackApiError, SlackClientError, OSError) as error:
            log.warning("could not confirm the saved answer %s: %s", saved.id, _code(error))
            return
        self.store.set_confirm_ts(saved.id, posted.get("ts", ""))

    def _update_message(self, channel: str, ts: str, message: dict) -> None:
        try:
            self._client.chat_update(channel=channel, ts=ts, **message)
        except (SlackApiError, SlackClientError, OSError) as error:
            log.info("could not update the saved-answer message %s/%s: %s", channel, ts, _code(error))

    def _channel_info(self, channel: str) -> dict:
        try:
            return self._client.conversations_info(channel=channel).get("channel") or {}
        except (SlackApiError, SlackClientError, OSError) as error:
            # Without the answer we cannot tell public from private: treat it as private (never leaks).
            log.warning("conversations.info for %s failed (%s): treating it as private", channel, _code(error))
            return {"is_private": True}

    def _message(self, channel: str, ts: str) -> dict | None:
        # A reply's ts gives its thread (Slack) or the reply alone: either way it is in the list.
        return next((m for m in _replies(self._client, channel=channel, thread_ts=ts) if m.get("ts") == ts), None)

    def _permalink(self, channel: str, ts: str) -> str:
        try:
            return self._client.chat_getPermalink(channel=channel, message_ts=ts).get("permalink", "")
        except (SlackApiError, SlackClientError, OSError) as error:
            log.info("chat.getPermalink failed: %s", _code(error))
            return ""

    def _from_bot(self, message: dict) -> bool:
        return bool(message.get("user") == self.bot_user_id or (self.bot_id and message.get("bot_id") == self.bot_id))

    @staticmethod
    def _from_person(message: dict) -> bool:
        return bool(message.get("user")) and not message.get("bot_id") and message.get("subtype") in (
            None, "thread_broadcast", "file_share")


def _ts_time(ts: str) -> float:
    try:
        return float(ts)
    except ValueError:
        return time.time()


def _error_id() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def _code(error: Exception) -> str:
    response = getattr(error, "response", None)
    return str(response.get("error")) if response is not None and hasattr(response, "get") else \
        (str(error).splitlines()[0] if str(error) else type(error).__name__)
