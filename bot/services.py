"""What the listeners share: settings, the answer path, the pool, the records."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.access import SourceAccess
from bot.channels import ChannelRules
from bot.dedupe import SeenKeys
from bot.limits import UserLimiter
from bot.observability import Metrics
from bot.outcomes import log_outcome
from bot.state import Database, Records
from bot.responder import Question, Responder
from bot.settings import BotSettings
from bot.workers import WorkerPool

if TYPE_CHECKING:
    from bot.learning import Learner
    from bot.refresher import Refresher

log = logging.getLogger(__name__)

SHUTTING_DOWN_TEXT = "I'm restarting right now — please ask again in a minute."


@dataclass
class Services:
    settings: BotSettings
    kb: object  # knowledge.pipeline.KnowledgeBase (anything with its `ask`)
    records: Records
    database: Database
    owns_database: bool
    pool: WorkerPool
    seen: SeenKeys
    responder: Responder
    limiter: UserLimiter
    metrics: Metrics
    rules: ChannelRules  # AUTO_ANSWER_CHANNELS, CHANNEL_SOURCES, ESCALATION_CONTACTS, parsed once
    access: SourceAccess = field(default_factory=SourceAccess)  # SOURCE_ACCESS + run-time restrictions
    learner: Learner | None = None  # bot.learning: saved answers (None when LEARN_FROM_THREADS is off)
    refresher: Refresher | None = None  # set by bot.server.serve: /reindex works where the index is served
    stopping: bool = False  # set by stop_taking_questions(): new questions get SHUTTING_DOWN_TEXT

    def ask(self, question: Question) -> bool:
        """Queue a question (once per Slack message); False if it was a duplicate."""
        # app_mention and message events both arrive for a mention in a thread: answer once.
        if not self.seen.first_time(f"msg:{question.channel}:{question.message_ts}"):
            log.debug("duplicate message %s/%s ignored", question.channel, question.message_ts)
            return False
        self.metrics.questions.inc()
        log_questions = self.settings.log_questions
        if self.stopping:
            self.responder.refuse(question, SHUTTING_DOWN_TEXT)
            log_outcome(question, "shutting_down", log_questions=log_questions)
            return True
        user_key = f"{question.team}:{question.user}"
        decision = self.limiter.try_acquire(user_key)
        if not decision.allowed:
            self.metrics.record_error(f"user_{decision.reason}")
            self.responder.refuse(question, decision.message)
            log_outcome(question, f"refused_{decision.reason}", log_questions=log_questions)
            return True
        try:
            progress = self.responder.start(question)
            submitted = self.pool.submit(self._answer, question, progress, user_key)
        except Exception:
            # Never keep the person's slot (they would be "still working" forever).
            self.limiter.release(user_key)
            self.metrics.record_error("intake")
            log.exception("could not queue the question %s/%s", question.channel, question.message_ts)
            log_outcome(question, "error", log_questions=log_questions)
            return True
        if submitted is None:
            self.limiter.release(user_key)
            self.metrics.record_error("pool_full")
            self.responder.busy(question, progress)
            log_outcome(question, "busy", log_questions=log_questions)
            return True
        self.metrics.queue_depth.inc()
        return True

    def _answer(self, question: Question, progress, user_key: str) -> None:
        self.metrics.queue_depth.dec()
        try:
            answer = self.responder.finish(question, progress)
        finally:
            self.limiter.release(user_key)
        if answer is not None:
            self.metrics.observe_answer(answer)

    def stop_taking_questions(self) -> None:
        """From now on questions are answered with SHUTTING_DOWN_TEXT (answers in flight go on)."""
        self.stopping = True

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for queued and running answers; True when all finished."""
        self.stop_taking_questions()
        return self.pool.drain(timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.records.close()
        if self.owns_database:
            self.database.close()
