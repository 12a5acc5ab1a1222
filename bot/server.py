"""Run the bot: Socket Mode when SLACK_APP_TOKEN is set, else the HTTP Events API.

HTTP mode serves Bolt's WSGI adapter with waitress (a production WSGI server).
Before Bolt sees a request, its size is capped (413) and its signature and
timestamp are checked (401), so junk from anyone who can reach the URL is never
parsed, stored or logged whole; a signed request Bolt cannot read gets a 400.
"""

from __future__ import annotations

import io
import logging
import signal
import threading
import time
from urllib.parse import parse_qs

from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier
from waitress.server import create_server

from bot.app import SlackSetupError, SupportBot, build_app
from bot.logging_setup import adopt_library_loggers
from bot.observability import Metrics, ObservabilityServer
from bot.refresher import Refresher
from bot.settings import BotSettings
from bot.state.refresh_runs import RefreshRuns
from bot.sweeper import Sweeper

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
# Slack's requests are a few KB (a message holds at most 40,000 characters, a modal's state
# some more): 1 MiB leaves room and refuses floods before they are read.
MAX_BODY_BYTES = 1 << 20
RUNS_KEPT_SECONDS = 90 * 86400.0  # refresh run history shown by /reindex status

_SETUP_HELP = (
    "Slack is not configured. Set SLACK_BOT_TOKEN (xoxb-...) and either SLACK_APP_TOKEN "
    "(xapp-..., Socket Mode: no public URL needed) or SLACK_SIGNING_SECRET (HTTP mode: Slack "
    "posts to http(s)://YOUR_HOST:PORT/slack/events) in .env. Create the app from manifest.yaml "
    "at https://api.slack.com/apps. Without Slack, `supportbot chat` answers in the terminal."
)


def check_slack_settings(settings: BotSettings) -> str:
    """"socket" or "http"; raises SlackSetupError saying what to set."""
    if not settings.slack_bot_token.get_secret_value():
        raise SlackSetupError(_SETUP_HELP)
    if settings.slack_app_token.get_secret_value():
        return "socket"
    if settings.slack_signing_secret.get_secret_value():
        return "http"
    raise SlackSetupError(_SETUP_HELP)


def socket_mode_handler(bot: SupportBot, settings: BotSettings) -> SocketModeHandler:
    """The Socket Mode connection (call .connect() / .start(); .close() to stop)."""
    # The bot's own WebClient, so apps.connections.open also goes to SLACK_API_URL.
    return SocketModeHandler(bot.app, app_token=settings.slack_app_token.get_secret_value(), web_client=bot.client)


def wsgi_app(bot: SupportBot, *, signing_secret: str):
    """A WSGI application serving POST /slack/events (and 404 elsewhere)."""
    handler = SlackRequestHandler(bot.app)
    verifier = SignatureVerifier(signing_secret)

    def application(environ, start_response):
        def reply(status: str, text: str):
            start_response(status, [("Content-Type", "text/plain")])
            return [text.encode()]

        if environ.get("PATH_INFO") != EVENTS_PATH:
            return reply("404 Not Found", "not found")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            log.warning("refused a Slack request of %s bytes (at most %d)", environ.get("CONTENT_LENGTH"),
                        MAX_BODY_BYTES)
            return reply("413 Payload Too Large", "request too large")
        body = environ["wsgi.input"].read(length) if length else b""
        if not _signed(verifier, body, environ):
            if parse_qs(body.decode("utf-8", "replace")).get("ssl_check") == ["1"]:
                return reply("200 OK", "")  # Slack's certificate check: answered before any signature, as Bolt does
            # One short line: the body is whatever anyone sent, never logged.
            log.info("refused a Slack request without a valid signature (%d bytes)", len(body))
            return reply("401 Unauthorized", "invalid request")
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            return handler(environ, start_response)
        except Exception as error:  # noqa: BLE001 - a signed body Bolt cannot read: Slack gets a 400, the log one line
            log.warning("could not read a signed Slack request (%d bytes): %s: %s", len(body),
                        type(error).__name__, str(error)[:200])
            return reply("400 Bad Request", "malformed request")

    return application


def _signed(verifier: SignatureVerifier, body: bytes, environ: dict) -> bool:
    """Slack's signature of this body, made within the last 5 minutes (a bad timestamp is no signature)."""
    try:
        return verifier.is_valid(body=body, timestamp=environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP"),
                                 signature=environ.get("HTTP_X_SLACK_SIGNATURE"))
    except (TypeError, ValueError):
        return False


def http_server(bot: SupportBot, settings: BotSettings, *, host: str | None = None, port: int | None = None):
    """A waitress server (not yet running: .run() blocks, .close() stops; .effective_port)."""
    return create_server(
        wsgi_app(bot, signing_secret=settings.slack_signing_secret.get_secret_value()),
        host=host or settings.host,
        port=settings.port if port is None else port,
        threads=settings.http_threads,
        max_request_body_size=MAX_BODY_BYTES,  # waitress answers 413 itself for a chunked one
        ident="supportbot",
    )


def serve(settings: BotSettings, kb, *, stop: threading.Event | None = None) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM) or `stop` is set.

    On stop, Slack events are no longer taken, answers in flight get up to
    SHUTDOWN_GRACE_SECONDS to be delivered, then the workers and the records
    close (the caller closes the KnowledgeBase, and with it Milvus).

    Raises SlackSetupError when Slack settings are missing or the token is
    rejected, ScheduleError for a bad REINDEX_SCHEDULE.
    """
    mode = check_slack_settings(settings)
    adopt_library_loggers()  # the KnowledgeBase is built: pymilvus has set up its own handler
    if settings.citation_warning():  # once per start: every cited link would mislead
        log.warning(settings.citation_warning())
    if settings.state_warning():  # two such replicas would both answer every question
        log.warning(settings.state_warning())
    stop = stop or threading.Event()
    _stop_on_sigterm(stop)
    metrics = Metrics()
    bot = build_app(settings, kb, metrics=metrics)
    services = bot.services
    # Milvus Lite opens in one process only, so scheduled and /reindex refreshes run here;
    # the state database makes it one refresh (and one per scheduled tick) across replicas.
    runs = RefreshRuns(database=services.database, holder=services.claims.holder,
                       lease_seconds=settings.claim_lease_seconds)
    try:
        refresher = Refresher(kb=kb, schedule=settings.reindex_schedule, metrics=metrics, runs=runs)
    except Exception:
        bot.close()
        raise
    services.refresher = refresher
    sweeper = Sweeper(
        # Membership changes another replica saw: forgotten here within a beat (bot.access).
        renew=[services.renew_leases, runs.renew, services.access.forget_changed],
        # A /reindex queued by a replica that stopped runs on one that is up.
        take_over=lambda: (refresher.adopt_queued(), services.take_over()),
        hourly=[services.purge, lambda: runs.purge(older_than=time.time() - RUNS_KEPT_SECONDS),
                lambda: services.learner and services.learner.recheck_channels(),
                # Read on every replica, the saved replies would cost N times the Slack calls: one a turn.
                lambda: services.learner and services.claims.take_turn("reread-saved", every=3600)
                and services.learner.reread_saved()],
        lease_seconds=settings.claim_lease_seconds, sweep_seconds=settings.claim_sweep_seconds,
    )
    observability = server = None
    try:
        refresher.start()
        sweeper.start()
        if kb.status().get("serves_until_rebuilt"):
            # Keywords analysed by an older version: answer (dense only) while it rebuilds. Not
            # queued behind a running refresh: that is most likely the same rebuild by a replica
            # starting beside this one (followed here), and a queued one would rebuild twice.
            log.info(refresher.request(rebuild=True, by="start-up", queue=False))
        if mode != "socket":
            # Bound and listening before /readyz can say ready, so a ready bot never refuses an event.
            server = http_server(bot, settings)
        if settings.metrics_port:
            observability = ObservabilityServer(
                metrics=metrics, port=settings.metrics_port, host=settings.host,
                readiness=lambda: (False, "shutting down") if stop.is_set() else _index_ready(kb),
            ).start()
        if mode == "socket":
            log.info("connecting to Slack in Socket Mode")
            handler = socket_mode_handler(bot, settings)
            handler.connect()
            try:
                stop.wait()
            finally:
                bot.services.stop_taking_questions()  # events still arriving get "restarting"
                handler.close()
        else:
            log.info("listening for Slack events on http://%s:%s%s", settings.host, server.effective_port, EVENTS_PATH)
            serve_in_thread(server)
            try:
                stop.wait()
            finally:
                bot.services.stop_taking_questions()
    except KeyboardInterrupt:
        log.info("interrupted: shutting down")
    finally:
        if server is not None:
            server.close()  # after stop_taking_questions: events still arriving got "restarting"
        # No new work is taken any more; answers already queued or running are finished.
        grace = settings.shutdown_grace_seconds
        log.info("shutting down: finishing answers in flight (up to %.0f s)", grace)
        if bot.services.drain(grace):
            log.info("all answers in flight were delivered")
        refresher.shutdown(timeout=5)
        sweeper.stop()
        if observability is not None:
            observability.stop()
        bot.close()


def _stop_on_sigterm(stop: threading.Event) -> None:
    """`docker stop` sends SIGTERM: finish cleanly as for Ctrl-C (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())


def _index_ready(kb) -> tuple[bool, str]:
    chunks = kb.status().get("chunks", 0)
    if not chunks:
        return False, "the docs index is empty"
    # A wrong OpenAI key, model or URL found at start (re-checked now and then).
    answer_readiness = getattr(kb, "answer_readiness", None)
    return answer_readiness() if answer_readiness is not None else (True, "")


def serve_in_thread(server) -> threading.Thread:
    """Run a waitress server on a daemon thread (tests, embedding)."""
    thread = threading.Thread(target=server.run, name="http-server", daemon=True)
    thread.start()
    return thread
