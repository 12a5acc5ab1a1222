"""What the listeners share: settings, the answer path, the pool, the records."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.dedupe import SeenKeys
from bot.records import Records
from bot.responder import Question, Responder
from bot.settings import BotSettings
from bot.workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: BotSettings
    kb: object  # knowledge.pipeline.KnowledgeBase (anything with its `ask`)
    records: Records
    pool: WorkerPool
    seen: SeenKeys
    responder: Responder

    def ask(self, question: Question) -> bool:
        """Queue a question (once per Slack message); False if it was a duplicate."""
        # app_mention and message events both arrive for a mention in a thread: answer once.
        if not self.seen.first_time(f"msg:{question.channel}:{question.message_ts}"):
            log.debug("duplicate message %s/%s ignored", question.channel, question.message_ts)
            return False
        progress = self.responder.start(question)
        if self.pool.submit(self.responder.finish, question, progress) is None:
            log.warning("worker pool full: busy reply to %s/%s", question.channel, question.message_ts)
            self.responder.busy(question, progress)
        return True

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.records.close()
