"""Build the Bolt app: one Web API client, the services, the listeners."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from bot import listeners
from bot.access import SourceAccess, check_source_access, indexed_sources
from bot.channels import ChannelRules
from bot.learning import Learner
from bot.limits import UserLimiter
from bot.observability import Metrics
from bot.state import Database, Records, replica_id
from bot.state.claims import Claims
from bot.state.limits import SharedLimits
from bot.state.membership_changes import MembershipChanges
from bot.state.saved_answers import SavedAnswers
from bot.responder import Responder
from bot.services import Services
from bot.settings import BotSettings
from bot.waiting import WaitingLine
from bot.workers import WorkerPool
from knowledge.errors import KnowledgeError

log = logging.getLogger(__name__)

# Bolt's listener threads (its default is 5). Listeners only queue work, but some wait on Slack
# (a Home tab's views.publish waits out a 429): with few threads a handful of those leave every
# command and button click unacknowledged. Idle threads cost next to nothing.
LISTENER_THREADS = 32


class SlackSetupError(KnowledgeError):
    """Slack is not configured, or rejected the bot token."""


@dataclass
class SupportBot:
    """The Bolt app with everything it owns; `close` stops the workers and the database."""

    app: App
    services: Services
    listener_threads: ThreadPoolExecutor | None = None

    @property
    def client(self) -> WebClient:
        return self.app.client

    def close(self) -> None:
        self.services.close()
        if self.listener_threads is not None:
            # A listener still waiting on Slack finishes by itself; nothing new starts.
            self.listener_threads.shutdown(wait=False, cancel_futures=True)


def web_client(settings: BotSettings) -> WebClient:
    """The Web API client: SLACK_API_URL as base, retries on 429 (Retry-After) and dropped connections."""
    return WebClient(
        token=settings.slack_bot_token.get_secret_value() or None,
        base_url=settings.slack_api_url,
        retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=2), RateLimitErrorRetryHandler(max_retry_count=2)],
    )


def build_app(
    settings: BotSettings, kb, *, database: Database | None = None, metrics: Metrics | None = None
) -> SupportBot:
    """Wire the Bolt app; raises SlackSetupError when the token is missing or rejected,
    StateError when the state database cannot be opened, SourceAccessError when SOURCE_ACCESS
    restricts a source the knowledge base does not have.

    Without `database` one is opened from the settings (and closed with the bot).
    """
    check_source_access(settings.source_access, indexed_sources(kb, settings))
    token = settings.slack_bot_token.get_secret_value()
    if not token:
        raise SlackSetupError("SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-...) into .env")
    client = web_client(settings)
    try:
        identity = client.auth_test()
    except SlackApiError as error:
        raise SlackSetupError(f"Slack rejected SLACK_BOT_TOKEN: {error.response.get('error')}") from error
    except (SlackClientError, OSError) as error:  # OSError: unreachable host (URLError)
        reason = getattr(error, "reason", None) or error
        raise SlackSetupError(f"cannot reach Slack at {settings.slack_api_url}: {reason}") from error
    signing_secret = settings.slack_signing_secret.get_secret_value()
    listener_threads = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="slack-listener")
    with _hidden_from_bolt():
        app = _bolt_app(client, signing_secret, listener_threads)
    owns_database = database is None
    holder = replica_id()
    database = database or Database.from_settings(settings)
    records = Records(database=database)
    metrics = metrics or Metrics(process_metrics=False)
    rules = ChannelRules.from_settings(settings)
    saved_answers = SavedAnswers(database=database) if settings.learn_from_threads else None
    # The database, not this process, says which private channels' answers exist (every replica agrees).
    access = SourceAccess.from_settings(settings, client=client,
                                        saved_sources=saved_answers.source_names if saved_answers else None,
                                        changes=MembershipChanges(database=database))
    responder = Responder(
        metrics=metrics,
        kb=kb,
        client=client,
        records=records,
        settings=settings,
        rules=rules,
        access=access,
        bot_user_id=identity.get("user_id", ""),
        bot_id=identity.get("bot_id", ""),
    )
    limiter = UserLimiter(
        per_minute=settings.user_rate_per_minute, max_concurrent=settings.user_max_concurrent,
        shared=SharedLimits(database=database, holder=holder, lease_seconds=settings.claim_lease_seconds),
    )
    services = Services(
        settings=settings,
        kb=kb,
        records=records,
        database=database,
        owns_database=owns_database,
        pool=WorkerPool(workers=settings.bot_workers, queue_size=settings.bot_queue_size),
        claims=Claims(database=database, holder=holder, lease_seconds=settings.claim_lease_seconds),
        responder=responder,
        limiter=limiter,
        waiting=WaitingLine(limiter=limiter, size=settings.user_queue_size) if settings.user_queue_size else None,
        metrics=metrics,
        rules=rules,
        access=access,
        bot_name=identity.get("user", ""),
    )
    if services.waiting is not None:
        metrics.waiting_questions.set_function(services.waiting.waiting)
    access.on_forget(services.kinds.forget)  # a channel made private, heard by another replica
    if saved_answers is not None:
        services.learner = responder.learner = Learner(
            store=saved_answers, kb=kb, client=client, settings=settings, rules=rules,
            bot_user_id=identity.get("user_id", ""), bot_id=identity.get("bot_id", ""),
        )
    listeners.register(app, services)
    log.info("Slack app ready as %s (%s)", identity.get("user"), identity.get("team"))
    return SupportBot(app=app, services=services, listener_threads=listener_threads)


# What Bolt's App reads from the environment by itself. With both OAuth names set it switches to its
# multi-workspace installation store and drops the bot's token: events are acknowledged and never
# answered. SLACK_BOT_TOKEN there only earns a "token will be unused" warning beside our client.
_BOLT_READS = ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET", "SLACK_BOT_TOKEN")


@contextmanager
def _hidden_from_bolt():
    """The environment without _BOLT_READS while the Bolt app is made (given back after)."""
    hidden = {name: os.environ.pop(name) for name in _BOLT_READS if name in os.environ}
    if "SLACK_CLIENT_ID" in hidden and "SLACK_CLIENT_SECRET" in hidden:
        log.info("SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are not used: the bot serves one workspace "
                 "with SLACK_BOT_TOKEN")
    try:
        yield
    finally:
        os.environ.update(hidden)


def _bolt_app(client: WebClient, signing_secret: str, listener_threads: ThreadPoolExecutor) -> App:
    """The Bolt app on our client (one workspace, its bot token)."""
    return App(
        client=client,
        signing_secret=signing_secret or None,
        # Socket Mode needs no signature; HTTP mode always verifies (see bot.server).
        request_verification_enabled=bool(signing_secret),
        token_verification_enabled=False,  # build_app called auth.test already
        # Listeners only queue work, so acknowledging first costs nothing and beats Slack's 3 s.
        process_before_response=False,
        ignoring_self_events_enabled=True,
        logger=logging.getLogger("slack_bolt"),
        listener_executor=listener_threads,
    )
