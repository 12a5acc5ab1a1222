"""What the listeners share: settings, the answer path, the pool, the records."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.access import SourceAccess
from bot.channels import ChannelRules
from bot.conversations import ConversationKinds
from bot.limits import BUSY_MESSAGE, Decision, UserLimiter
from bot.observability import Metrics
from bot.outcomes import log_outcome
from bot.state import Database, Records, StateError
from bot.state.claims import Claims, ClaimedQuestion
from bot.responder import BUSY_TEXT, Progress, Question, Responder
from bot.settings import BotSettings
from bot.triage import SMALL_TALK_TEXT, THANKS_TEXT, is_small_talk, is_thanks
from bot.waiting import WaitingLine
from bot.workers import WorkerPool

if TYPE_CHECKING:
    from bot.learning import Learner
    from bot.refresher import Refresher

log = logging.getLogger(__name__)

PRIVATE_TEXT_SECONDS = 86400.0  # private questions' text is blanked after a day unless LOG_QUESTIONS
SHUTTING_DOWN_TEXT = "I'm restarting right now — please ask again in a minute."
WAITING_TEXT = "I'll look into this as soon as I've answered your previous question…"
RATE_WAITING_TEXT = "You've asked a lot in the last minute: I'll look into this one in about {seconds} {unit}…"
FILES_ONLY_TEXT = "I can only read words, not attachments: please type your question."
BUSY = Decision(allowed=False, reason="busy", message=BUSY_MESSAGE)


@dataclass
class Services:
    settings: BotSettings
    kb: object  # knowledge.pipeline.KnowledgeBase (anything with its `ask`)
    records: Records
    database: Database
    owns_database: bool
    pool: WorkerPool
    claims: Claims  # durable: one replica handles each event and each question
    responder: Responder
    limiter: UserLimiter
    metrics: Metrics
    rules: ChannelRules  # AUTO_ANSWER_CHANNELS, CHANNEL_SOURCES, ESCALATION_CONTACTS, parsed once
    access: SourceAccess = field(default_factory=SourceAccess)  # SOURCE_ACCESS + private saved answers' rule
    learner: Learner | None = None  # bot.learning: saved answers (None when LEARN_FROM_THREADS is off)
    refresher: Refresher | None = None  # set by bot.server.serve: /reindex works where the index is served
    stopping: bool = False  # set by stop_taking_questions(): new questions get SHUTTING_DOWN_TEXT
    bot_name: str = ""  # the bot's handle (auth.test "user"): "/ask @docsbot …" typed as plain text
    kinds: ConversationKinds = field(default_factory=ConversationKinds)  # public or private, for @mentions
    # Set by bot.listeners.middleware: dispatches an event kept in the inbox through the Bolt app again.
    redeliver: Callable[[dict], None] | None = None
    # A person's next questions wait here while their earlier one is answered (USER_QUEUE_SIZE).
    waiting: WaitingLine | None = None

    def ask(self, question: Question) -> bool:
        """Queue a question (once per Slack message, across replicas); False if it was a duplicate."""
        # app_mention and message events both arrive for a mention in a thread: answer once.
        try:
            key = self.claims.claim_question(
                channel=question.channel, message_ts=question.message_ts, thread_ts=question.thread_ts,
                user=question.user, team=question.team, text=question.text, assistant=question.assistant,
                conversation=question.conversation,
            )
        except StateError as error:
            # Answer unclaimed rather than drop it: a database blip must not lose a question.
            log.warning("cannot claim the question %s/%s (%s): answering it unclaimed",
                        question.channel, question.message_ts, error)
            key = ""
        if key is None:
            log.debug("duplicate message %s/%s ignored", question.channel, question.message_ts)
            return False
        if is_small_talk(question.text) or not (question.text.strip() or question.files):
            self._small_talk(question)  # a bare mention too: how to ask, not "the message is empty"
            return self._ended(question, key, "small_talk")
        if question.files and not question.text:
            self.responder.refuse(question, FILES_ONLY_TEXT)  # rather than "the message is empty"
            return self._ended(question, key, "invalid")
        self.metrics.questions.inc()
        if self.stopping:
            self.responder.refuse(question, SHUTTING_DOWN_TEXT)
            return self._ended(question, key, "shutting_down")
        user_key = f"{question.team}:{question.user}"
        if self.waiting is not None and self.waiting.has(user_key):
            decision = BUSY  # behind the person's questions that already wait, not ahead of them
        else:
            decision = self.limiter.try_acquire(user_key)
        if not decision.allowed:
            if self._wait_in_line(question, key, user_key, decision):
                return True
            self.metrics.record_error(f"user_{decision.reason}")
            self.responder.refuse(question, decision.message)
            return self._ended(question, key, f"refused_{decision.reason}")
        try:
            progress = self.responder.start(question)
            if progress.refused:
                # Slack will not take a post there: answering would cost a model call nobody sees.
                self.release_slot(user_key)
                self.metrics.record_error(f"slack_{progress.refused}")
                return self._ended(question, key, "undeliverable")
            submitted = self.pool.submit(self._answer, question, progress, user_key, key)
            if submitted is not None and key:
                # After queueing, so the question keeps its place; a replica taking over reuses it.
                self._remember_placeholder(key, progress)
        except Exception:
            # Never keep the person's slot (they would be "still working" forever).
            self.release_slot(user_key)
            self.metrics.record_error("intake")
            log.exception("could not queue the question %s/%s", question.channel, question.message_ts)
            return self._ended(question, key, "error")
        if submitted is None:
            self.release_slot(user_key)
            self.metrics.record_error("pool_full")
            self.responder.busy(question, progress)
            return self._ended(question, key, "busy")
        self.metrics.queue_depth.inc()
        return True

    def _wait_in_line(self, question: Question, key: str, user_key: str, decision: Decision) -> bool:
        """Let the question wait for the person's earlier answer (or for their minute's rate to
        allow it) rather than refuse it; False when their line is full."""
        if self.waiting is None or self.stopping:
            return False
        ticket = self.waiting.reserve(user_key)  # its place, before anything is posted
        if ticket is None:
            return False
        if decision.reason == "rate":
            seconds = max(1, math.ceil(decision.retry_after))
            text = RATE_WAITING_TEXT.format(seconds=seconds, unit="second" if seconds == 1 else "seconds")
        else:
            text = WAITING_TEXT
        try:
            progress = self.responder.start(question, text=text)
        except Exception:
            self.waiting.withdraw(ticket)  # never a place nobody takes
            raise
        if progress.refused:
            self.waiting.withdraw(ticket)
            self.metrics.record_error(f"slack_{progress.refused}")
            return self._ended(question, key, "undeliverable")
        if key:
            self._remember_placeholder(key, progress)  # before it can be handed over: reused there
        log.info("question %s/%s waits (%s)", question.channel, question.message_ts,
                 "per-minute limit" if decision.reason == "rate" else "the person's previous answer")
        self.waiting.ready(ticket, start=lambda: self._start_waiting(question, progress, user_key, key),
                           give_up=lambda reason: self._stop_waiting(question, progress, key, reason))
        return True

    def _start_waiting(self, question: Question, progress: Progress, user_key: str, key: str) -> bool:
        """The person's slot is free (held for this question): answer it; False if the pool is full."""
        if self.stopping:  # started just as the line was cancelled
            self.release_slot(user_key)
            self._stop_waiting(question, progress, key, "stopping")
            return True
        if self.pool.submit(self._answer, question, progress, user_key, key) is None:
            return False  # it keeps its place and tries again at the next poll
        self.metrics.queue_depth.inc()
        return True

    def _stop_waiting(self, question: Question, progress: Progress, key: str, reason: str) -> None:
        if reason == "stopping" and key:
            # Not lost: another replica (or this one, restarted) takes it over with its placeholder.
            try:
                self.claims.release(key)
                return
            except StateError as error:
                log.warning("could not hand over the waiting question %s: %s", key, error)
        outcome = {"stopping": "shutting_down", "timeout": "busy"}.get(reason, "error")
        if outcome != "shutting_down":
            self.metrics.record_error("waited_too_long" if outcome == "busy" else "intake")
        self.responder.busy(question, progress, text=SHUTTING_DOWN_TEXT if outcome == "shutting_down" else BUSY_TEXT)
        self._ended(question, key, outcome)

    def release_slot(self, user_key: str) -> None:
        """Give the person's slot back; their next waiting question may start."""
        self.limiter.release(user_key)
        if self.waiting is not None:
            self.waiting.freed()

    def in_thread(self, channel: str, thread_ts: str, *, besides: str = "") -> bool:
        """Whether the bot answered, is answering, or lately replied in this thread (for another
        message than `besides`): follow-ups need no mention (also after "busy" or "ask me a question")."""
        try:
            if self.claims.took_thread(channel, thread_ts, besides=besides):
                return True
        except StateError as error:
            log.warning("cannot read the question claims of %s/%s: %s", channel, thread_ts, error)
        return self.records.answered_thread(channel, thread_ts)

    def _small_talk(self, question: Question) -> None:
        """"hi" gets how to ask; "thanks!" under an answer needs no reply (as in channel threads),
        elsewhere a "you're welcome"."""
        if question.in_thread and self.in_thread(question.channel, question.thread_ts, besides=question.message_ts):
            return
        if is_thanks(question.text):  # "thanks!" in a DM after an answer: not how to ask
            self.responder.refuse(question, THANKS_TEXT)
            return
        prompts = self.settings.suggested_prompts
        example = f" For example: “{prompts[0]}”" if prompts else ""
        self.responder.refuse(question, SMALL_TALK_TEXT + example)

    def handled(self, event_id: str) -> None:
        """A listener dealt with a kept event: it is not dispatched again."""
        try:
            self.claims.handled(event_id)
        except StateError as error:  # a second dispatch finds the question claimed: no duplicate answer
            log.warning("could not mark the event %s handled: %s", event_id, error)

    def take_over(self) -> int:
        """Handle events and answer questions whose replica died after acknowledging them; how many."""
        if self.stopping:
            return 0
        taken = 0
        if self.redeliver is not None:
            for lapsed in self.claims.take_lapsed_events(limit=self.settings.bot_workers):
                taken += 1
                log.info("handling %s whose replica stopped before it could (attempt %d)", lapsed.key,
                         lapsed.attempts)
                try:
                    self.redeliver(lapsed.payload)  # its listener marks it handled
                except Exception:  # noqa: BLE001 - its lease lapses and a later sweep tries again
                    log.exception("could not dispatch %s again", lapsed.key)
        for claimed in self.claims.take_lapsed(limit=self.settings.bot_workers):
            taken += 1
            self._resume(claimed)
        return taken

    def _resume(self, claimed: ClaimedQuestion) -> None:
        if self.records.answered_question(claimed.channel, claimed.message_ts):
            self._finish(claimed.key)  # answered; its replica died before it could say so
            return
        question = Question(
            text=claimed.text, channel=claimed.channel, user=claimed.user, thread_ts=claimed.thread_ts,
            message_ts=claimed.message_ts, assistant=claimed.assistant, team=claimed.team,
            conversation=claimed.conversation,
        )
        log.info("answering question %s/%s whose replica stopped (attempt %d)", claimed.channel,
                 claimed.message_ts, claimed.attempts)
        try:
            # The placeholder the first replica posted becomes the answer (no second one in the thread).
            progress = Progress(placeholder_ts=claimed.placeholder_ts) if claimed.placeholder_ts \
                else self.responder.start(question)
            if progress.refused:
                self._ended(question, claimed.key, "undeliverable")
                return
            submitted = self.pool.submit(self._answer, question, progress, None, claimed.key)
            if submitted is not None:
                self._remember_placeholder(claimed.key, progress)
        except Exception:
            log.exception("could not resume the question %s/%s", claimed.channel, claimed.message_ts)
            self.claims.release(claimed.key)
            return
        if submitted is None:
            self.claims.release(claimed.key)  # full here: another replica (or a later sweep) takes it
            return
        self.metrics.queue_depth.inc()

    def _answer(self, question: Question, progress, user_key: str | None, key: str) -> None:
        self.metrics.queue_depth.dec()
        try:
            answer = self.responder.finish(question, progress)
        finally:
            if user_key is not None:
                self.release_slot(user_key)
            self._finish(key)
        if answer is not None:
            self.metrics.observe_answer(answer)

    def _remember_placeholder(self, key: str, progress: Progress) -> None:
        try:
            self.claims.set_placeholder(key, progress.placeholder_ts)
        except Exception as error:  # noqa: BLE001 - only a take-over would post a second placeholder
            log.warning("could not record the placeholder of %s: %s", key, error)

    def _ended(self, question: Question, key: str, outcome: str) -> bool:
        """The question ends here with `outcome` (no answer to come): logged, its claim finished."""
        log_outcome(question, outcome, log_questions=self.settings.log_questions)
        self._finish(key)
        return True

    def _finish(self, key: str) -> None:
        if not key:
            return
        try:
            self.claims.finish(key)
        except Exception:  # noqa: BLE001 - the answer is out; a stale claim only costs a duplicate check
            log.exception("could not mark the question %s finished", key)

    def renew_leases(self) -> None:
        """Keep this replica's question claims and per-person slots (the sweeper calls it)."""
        self.claims.renew()
        self.limiter.renew()

    def purge(self) -> None:
        """Forget old event ids and slots; delete records past RECORDS_RETENTION_DAYS."""
        now = time.time()
        self.claims.purge(older_than=now - self.settings.dedupe_ttl_seconds)
        self.limiter.purge()
        self.access.purge_changes(older_than=now - 86400)
        days = self.settings.records_retention_days
        private_before = None if self.settings.log_questions else now - PRIVATE_TEXT_SECONDS
        if days or private_before is not None:
            deleted = self.records.purge(older_than=now - days * 86400 if days else 0.0,
                                         private_text_before=private_before)
            if deleted:
                log.info("deleted %d answers older than %g days (RECORDS_RETENTION_DAYS)", deleted, days)

    def stop_taking_questions(self) -> None:
        """From now on questions are answered with SHUTTING_DOWN_TEXT (answers in flight go on;
        waiting ones are handed over to be answered by the next replica to sweep)."""
        self.stopping = True
        if self.waiting is not None:
            self.waiting.cancel_all("stopping")

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for queued and running answers; True when all finished."""
        self.stop_taking_questions()
        return self.pool.drain(timeout)

    def close(self) -> None:
        self.stop_taking_questions()  # waiting questions are handed over while the database is open
        self.pool.shutdown(wait=False)
        self.records.close()
        if self.owns_database:
            self.database.close()
