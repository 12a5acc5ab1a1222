"""Answer one Slack question: show progress, stream, post the answer, record it.

`start` runs on the event thread (a placeholder message, or the assistant
pane's status) so the person sees at once that the bot is on it; `finish`
runs on a worker and replaces the placeholder with the answer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from bot.access import SourceAccess, private_answers_source
from bot.blocks import answer_messages, as_text, progress_message
from bot.channels import ChannelRules
from bot.history import thread_history
from bot.outcomes import log_outcome
from bot.mrkdwn import escape
from bot.observability import Metrics
from bot.state import Records
from bot.state.records import is_private
from bot.settings import BotSettings
from knowledge.errors import InvalidQuestionError, KnowledgeError, StoreError
from knowledge.types import Answer, SourceFilter

log = logging.getLogger(__name__)

ANSWER_RATE_LIMIT_RETRIES = 5  # a throttled answer post waits out this many Retry-Afters (the event thread: 2)
BUSY_TEXT = "I'm busy with other questions right now — please try again in a minute."
ASSISTANT_STATUS = "is looking through the docs…"
UNAVAILABLE_TEXT = (
    "The docs index is unavailable right now, so I can't look this up. "
    "Please try again in a few minutes. (error id: `{error_id}`)"
)
# Slack's answers when it refuses a message's blocks themselves (not the conversation).
BLOCKS_REFUSED = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long"})
HISTORY_MAX_WAIT = 3.0  # seconds a throttled thread read may wait before answering without it
# Slack's answers to a post that no retry or later post in the conversation can change.
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action",
                         "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
                         "restricted_action_non_threadable_channel", "ekm_access_denied",
                         "team_access_not_granted"})


def replacing(message: dict) -> dict:
    """A chat.update that replaces the whole message: without `blocks` Slack keeps the old ones
    (a text-only apology under an answer's blocks would never show)."""
    return {"blocks": [], **message}


@dataclass(frozen=True)
class Question:
    """A question as it arrived from Slack, and where its answer goes."""

    text: str
    channel: str
    user: str
    thread_ts: str  # the thread the answer is posted in
    message_ts: str  # the question's own message
    assistant: bool = False  # the assistant pane: status line instead of a placeholder
    team: str = ""
    conversation: str = ""  # channel, private, im, mpim, assistant (private ones are never quoted to admins)
    files: bool = False  # the message carried files (the bot reads only its words)
    received_at: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # ties its log lines together

    @property
    def in_thread(self) -> bool:
        return self.thread_ts != self.message_ts


@dataclass
class Progress:
    """What `start` put on screen, so `finish` can replace it."""

    placeholder_ts: str = ""  # the message that becomes the answer ("" until posted)
    status_set: bool = False
    refused: str = ""  # Slack's CANNOT_POST code for the placeholder: no answer could be posted either
    not_before: float = 0.0  # time.monotonic() until which Slack asked (429) for no posts here


class Responder:
    """The Slack side of answering: progress, streaming, final blocks, errors."""

    def __init__(
        self,
        *,
        kb,
        client: WebClient,
        records: Records,
        settings: BotSettings,
        rules: ChannelRules,
        access: SourceAccess | None = None,
        bot_user_id: str = "",
        bot_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self._kb = kb
        self._metrics = metrics or Metrics(process_metrics=False)
        self._client = client
        # Streaming updates never wait out a 429: a retry would stall the model's stream
        # (and can outlast its read timeout). The final answer uses the retrying client.
        self._stream_client = _same_slack(client)
        # What the event thread posts (placeholder, assistant status, refusals, "busy") never waits out
        # a 429 either: sleeping on Bolt's few listener threads leaves commands and button clicks
        # unacknowledged. The worker waits instead (Progress.not_before) before the answer's first post.
        self._event_client = _same_slack(client, ConnectionErrorRetryHandler(max_retry_count=2))
        # The answer is what the person waits for: on a worker it may wait out more throttling than
        # the event thread's calls, instead of ending in an apology that would be throttled too.
        self._answer_client = _same_slack(client, ConnectionErrorRetryHandler(max_retry_count=2),
                                          RateLimitErrorRetryHandler(max_retry_count=ANSWER_RATE_LIMIT_RETRIES))
        # The thread's earlier messages are worth a short wait, not a long one: past HISTORY_MAX_WAIT
        # the question is answered without them (thread_history gives [] and logs why).
        self._history_client = _same_slack(client, ConnectionErrorRetryHandler(max_retry_count=2),
                                           BriefRateLimitRetry(max_retry_count=1, max_wait=HISTORY_MAX_WAIT))
        self._records = records
        self._settings = settings
        self._rules = rules  # CHANNEL_SOURCES: what each channel may see
        self._access = access or SourceAccess()  # SOURCE_ACCESS: restricted sources
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.learner = None  # bot.learning.Learner, set by build_app: saved answers' sources and uses

    def source_names(self, channel: str, user: str, *, private: bool = False) -> SourceFilter | None:
        """What a question by `user` in `channel` may draw on: the channel's sources (CHANNEL_SOURCES,
        plus the answers saved in that very channel) minus what its readers may not read.

        The team's shared saved answers (`team-answers`) only where CHANNEL_SOURCES names them:
        a channel never sees a source it is not given. `private`: only the asker sees the answer
        (the assistant pane, /ask), so their access counts.
        """
        base = self._rules.sources_for(channel)
        if base is not None and self.learner is not None:
            base = (*base, private_answers_source(channel))  # its own members wrote them (bot.access)
        return self._access.for_question(channel=channel, user=user, private=private, base=base)

    # -- on the event thread ------------------------------------------------
    def start(self, question: Question, *, text: str = "") -> Progress:
        """Show that the question was seen (`text`, else PLACEHOLDER_TEXT); Slack failures are
        logged, never raised."""
        progress = Progress()
        if question.assistant:
            try:
                self._event_client.assistant_threads_setStatus(
                    channel_id=question.channel, thread_ts=question.thread_ts, status=ASSISTANT_STATUS
                )
                progress.status_set = True
                return progress
            except (SlackClientError, OSError) as error:
                # Not an assistant thread after all (a plain DM thread): use a placeholder.
                log.info("assistant.threads.setStatus failed (%s); posting a placeholder", slack_error_code(error))
        progress.placeholder_ts, error = self._post(
            question, {"text": escape(text or self._settings.placeholder_text)}, what="the placeholder")
        if error is not None:
            code = slack_error_code(error)
            if code in CANNOT_POST:
                progress.refused = code  # removed from the channel (or it is gone) after Slack sent the event
            elif (wait := retry_after(error)) is not None:
                progress.not_before = time.monotonic() + wait  # no placeholder: the answer comes after it
        return progress

    def refuse(self, question: Question, text: str) -> None:
        """A per-person limit said no: say so in the thread (nothing else was posted)."""
        self._post(question, {"text": escape(text)}, what="a reply")

    def busy(self, question: Question, progress: Progress, *, text: str = BUSY_TEXT) -> None:
        """Tell the person no answer comes (the pool is full, or `text`), in place of the
        placeholder; Slack failures (a 429 too: this runs on the event thread) are logged."""
        if not progress.placeholder_ts:
            self._post(question, {"text": escape(text)}, what="the busy reply")
            return
        try:
            self._event_client.chat_update(channel=question.channel, ts=progress.placeholder_ts,
                                           **replacing({"text": escape(text)}))
        except (SlackClientError, OSError) as error:
            log.warning("could not post the busy reply: %s", slack_error_code(error))

    # -- on a worker -------------------------------------------------------
    def finish(self, question: Question, progress: Progress) -> Answer | None:
        """Answer and post; errors become a short reply (KnowledgeError text, or an error id)."""
        try:
            history = self._history(question)
            stream = _Stream(self, question, progress)
            # In Milvus, before retrieval: the channel's sources minus what its readers may not read.
            sources = self.source_names(question.channel, question.user, private=question.assistant)
            answer = self._kb.ask(question.text, history=history, source_names=sources, on_delta=stream.on_delta)
        except StoreError as error:
            # Milvus down or the Lite file locked: the store reconnects on a later question.
            error_id = uuid.uuid4().hex[:8]
            self._metrics.record_error(type(error).__name__)
            log.warning("docs index unavailable error_id=%s: %s", error_id, error)
            try:
                self._deliver(question, progress, [{"text": UNAVAILABLE_TEXT.format(error_id=error_id)}])
            except Exception:
                log.warning("could not post the index-unavailable reply error_id=%s", error_id)
            self._outcome(question, "unavailable", error_id=error_id)
            return None
        except KnowledgeError as error:
            self._metrics.record_error(type(error).__name__)
            try:
                self._deliver(question, progress, [{"text": escape(str(error))}])
            except Exception:
                error_id = self._apologise(question, progress, "posting the error message failed")
                self._outcome(question, "error", error_id=error_id)
                return None
            self._outcome(question, "invalid" if isinstance(error, InvalidQuestionError) else "failed")
            return None
        except Exception:
            self._outcome(question, "error", error_id=self._apologise(question, progress, "answering failed"))
            return None
        try:
            record_id = self._records.record_answer(
                answer, user_id=question.user, channel=question.channel, thread_ts=question.thread_ts,
                question_ts=question.message_ts, conversation=question.conversation,
            )
            if self.learner is not None:
                self.learner.record_uses(answer, record_id, private=is_private(question.conversation))
            with self._metrics.time_stage("slack"):
                first_ts = self._deliver(question, progress, answer_messages(answer, record_id=record_id))
            if first_ts:
                self._records.set_message_ts(record_id, first_ts)
        except Exception:
            error_id = self._apologise(question, progress, "posting the answer failed")
            self._outcome(question, "error", timings_ms=answer.timings_ms, error_id=error_id)
            return None
        self._outcome(question, answer.status, timings_ms=answer.timings_ms)
        return answer

    def _outcome(self, question: Question, outcome: str, **fields) -> None:
        log_outcome(question, outcome, log_questions=self._settings.log_questions, **fields)

    def _history(self, question: Question):
        if not question.in_thread:
            return []
        return thread_history(
            self._history_client,
            channel=question.channel,
            thread_ts=question.thread_ts,
            before_ts=question.message_ts,
            bot_user_id=self.bot_user_id,
            bot_id=self.bot_id,
            skip_texts=frozenset({self._settings.placeholder_text, BUSY_TEXT}),
            include_other_bots=not self._settings.ignore_bot_messages,
            max_messages=self._settings.history_max_messages,
            max_chars=self._settings.history_max_chars,
        )

    def _apologise(self, question: Question, progress: Progress, what: str) -> str:
        """Log the traceback with a new error id, tell the person that id; returns it."""
        error_id = uuid.uuid4().hex[:8]
        self._metrics.record_error("unexpected")
        # The traceback and the id go to the log only; the person gets the id to quote.
        log.exception("%s error_id=%s channel=%s thread=%s", what, error_id, question.channel, question.thread_ts)
        text = f"Sorry, something went wrong while answering. (error id: `{error_id}`)"
        try:
            self._deliver(question, progress, [{"text": text}])
        except Exception:
            log.exception("could not post the apology error_id=%s", error_id)
        return error_id

    # -- Slack calls -------------------------------------------------------
    def _post(self, question: Question, message: dict, *, what: str) -> tuple[str, Exception | None]:
        """Post in the question's thread from the event thread (no 429 waits): (its ts, None), or
        ("", the error) when Slack fails, logged as the post of `what`."""
        try:
            response = self._event_client.chat_postMessage(
                channel=question.channel, thread_ts=question.thread_ts, **message
            )
            return response.get("ts", ""), None
        except (SlackClientError, OSError) as error:  # OSError: Slack unreachable (URLError)
            log.warning("chat.postMessage of %s failed: %s", what, slack_error_code(error))
            return "", error

    def _deliver(self, question: Question, progress: Progress, messages: list[dict]) -> str:
        """Replace the placeholder with the first message, post the rest; the first ts."""
        wait = progress.not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # Slack's Retry-After for the placeholder (on a worker)
        first_ts, stale = "", False
        client = self._answer_client
        for index, message in enumerate(messages):
            if index == 0 and progress.placeholder_ts:
                try:
                    _text_if_blocks_refused(lambda m: client.chat_update(
                        channel=question.channel, ts=progress.placeholder_ts, **replacing(m)), message)
                    first_ts = progress.placeholder_ts
                    continue
                except SlackApiError as error:
                    # The placeholder was deleted, cannot be edited, or Slack kept throttling: post anew.
                    code = slack_error_code(error)
                    log.info("chat.update of the placeholder failed (%s); posting instead", code)
                    stale = code != "message_not_found"
            response = _text_if_blocks_refused(lambda m: client.chat_postMessage(
                channel=question.channel, thread_ts=question.thread_ts, **m), message)
            first_ts = first_ts or response.get("ts", "")
            if stale:
                self._delete_placeholder(question, progress)
                stale = False
        return first_ts

    def _delete_placeholder(self, question: Question, progress: Progress) -> None:
        """Remove a placeholder the answer was posted beside (it would say "Looking…" for good)."""
        try:
            self._client.chat_delete(channel=question.channel, ts=progress.placeholder_ts)
            progress.placeholder_ts = ""
        except (SlackClientError, OSError) as error:
            log.info("could not delete the placeholder: %s", slack_error_code(error))


def _text_if_blocks_refused(send: Callable[[dict], SlackResponse], message: dict) -> SlackResponse:
    """send(message); when Slack refuses its blocks, send it again as text (bot.blocks.as_text)."""
    try:
        return send(message)
    except SlackApiError as error:
        code = slack_error_code(error)
        if not message.get("blocks") or code not in BLOCKS_REFUSED:
            raise
        log.warning("Slack refused the answer's blocks (%s): posting it as text", code)
        return send(as_text(message))


class _Stream:
    """Throttled chat.update as the model's text arrives (Slack allows ~1 update/s)."""

    def __init__(self, responder: Responder, question: Question, progress: Progress) -> None:
        self._responder = responder
        self._question = question
        self._progress = progress
        self._parts: list[str] = []  # joined only when an update goes out: += on an attribute copies every time
        self._last = progress.not_before  # no update before Slack's Retry-After for the placeholder
        self._interval = responder._settings.stream_update_interval
        self._lock = threading.Lock()

    def on_delta(self, delta: str) -> None:
        with self._lock:
            self._parts.append(delta)
            now = time.monotonic()
            if now - self._last < self._interval:
                return
            self._last = now
            self._push()

    def _push(self) -> None:
        responder, question, progress = self._responder, self._question, self._progress
        message = progress_message("".join(self._parts), placeholder=responder._settings.placeholder_text)
        try:
            if progress.placeholder_ts:
                responder._stream_client.chat_update(channel=question.channel, ts=progress.placeholder_ts,
                                                     **replacing(message))
            else:
                response = responder._stream_client.chat_postMessage(
                    channel=question.channel, thread_ts=question.thread_ts, **message
                )
                progress.placeholder_ts = response.get("ts", "")
        except (SlackClientError, OSError) as error:
            # Streaming is a courtesy: a rate-limited update is skipped, the final post still happens.
            log.info("streaming update skipped: %s", slack_error_code(error))
            wait = retry_after(error)
            if wait is not None:
                self._last = time.monotonic() + wait  # no more updates until Slack allows them


class BriefRateLimitRetry(RateLimitErrorRetryHandler):
    """Waits out a 429 only when its Retry-After is at most `max_wait` seconds."""

    def __init__(self, *, max_retry_count: int = 1, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = next((value for name, value in response.headers.items() if name.lower() == "retry-after"), ["1"])
        try:
            return float(wait[0] if isinstance(wait, list) else wait) <= self.max_wait
        except ValueError:
            return False


def _same_slack(client: WebClient, *retry_handlers) -> WebClient:
    """A client for the same workspace and API as `client`, retrying only as `retry_handlers` say."""
    return WebClient(token=client.token, base_url=client.base_url, timeout=client.timeout,
                     retry_handlers=list(retry_handlers))


def retry_after(error: Exception) -> float | None:
    """The seconds a 429 asks to wait (its Retry-After, else 1), or None for other errors."""
    response = getattr(error, "response", None)
    if response is None or response.status_code != 429:
        return None
    headers = {name.lower(): value for name, value in (response.headers or {}).items()}
    try:
        return float(headers.get("retry-after") or 1)
    except (TypeError, ValueError):
        return 1.0


def slack_error_code(error: Exception) -> str:
    """Slack's error code ("not_in_channel", ...) for logs, else the exception's class name."""
    response = getattr(error, "response", None)
    return str(response.get("error")) if response is not None else type(error).__name__
