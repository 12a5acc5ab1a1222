"""Answers from an OpenAI-compatible chat completions API.

The only module that imports openai. The client's own retries (which honour
Retry-After) and timeout are used; every failure becomes one AnswerError line.
A circuit breaker (knowledge.breaker) stops calling a server that keeps failing:
while it is open, calls raise ModelUnavailableError at once instead of waiting
out timeouts and retries; after its cool-down one call probes the server again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import openai

from knowledge.breaker import CircuitBreaker
from knowledge.errors import AnswerError, ModelUnavailableError
from knowledge.prompts import (
    build_answer_messages,
    build_doc_words_messages,
    build_rewrite_messages,
)
from knowledge.types import Chunk, Turn
from knowledge.urls import without_credentials

REWRITE_MAX_TOKENS = 96
# Statuses that say the request itself was wrong (too long, bad parameter): not the
# server's fault, so they do not count towards opening the circuit.
_REQUEST_STATUSES = {400, 413, 422}
CHECK_TIMEOUT = 10.0  # seconds for the start-up check: a cheap GET, not an answer


class _RequestRejected(AnswerError):
    """The server refused this request as malformed or too long (its fault is ours, not the server's)."""


class Answerer:
    """Chat completions against OpenAI (or any server speaking its API)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "",
        model: str = "gpt-4o",
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 800,
        history_max_tokens: int = 1500,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """Raises AnswerError when no API key is given."""
        if not api_key:
            raise AnswerError("No OpenAI API key is configured (set OPENAI_API_KEY).")
        self.model = model
        self.max_tokens = max_tokens
        self.history_max_tokens = history_max_tokens
        self.base_url = base_url
        self._timeout = timeout
        self.breaker = breaker or CircuitBreaker(name="The language model", failure_threshold=0)
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url or None,
            timeout=timeout,
            max_retries=max_retries,
        )

    def answer(
        self,
        question: str,
        passages: Sequence[Chunk],
        *,
        history: Sequence[Turn] = (),
        language: str = "en",
        on_delta: Callable[[str], None] | None = None,
    ) -> str:
        """The model's answer citing passages as [n]; streams to on_delta when given.

        Raises AnswerError when the request fails after the client's retries.
        """
        messages = build_answer_messages(
            question,
            passages,
            history=history,
            language=language,
            history_max_tokens=self.history_max_tokens,
        )
        return self._complete(messages, max_tokens=self.max_tokens, on_delta=on_delta)

    def rewrite_query(self, question: str, history: Sequence[Turn]) -> str:
        """A standalone search query for a follow-up; the question itself without history.

        Raises AnswerError when the request fails.
        """
        if not history:
            return question
        messages = build_rewrite_messages(question, history)
        text = self._complete(messages, max_tokens=REWRITE_MAX_TOKENS, on_delta=None)
        return text.strip().strip('"').strip() or question

    def check(self) -> str:
        """One line saying why answers cannot work (bad key, unknown model, wrong URL); "" when fine.

        A cheap GET of the configured model, no retries: meant for start-up and /readyz.
        Never raises.
        """
        client = self._client.with_options(timeout=min(CHECK_TIMEOUT, self._timeout), max_retries=0)
        where = without_credentials(self.base_url) or "api.openai.com"
        try:
            client.models.retrieve(self.model)
        except openai.NotFoundError:
            return self._check_listed(client, where)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            return f"The language model server at {where} rejected OPENAI_API_KEY (HTTP {error.status_code})."
        except openai.APIStatusError as error:
            return f"The language model server at {where} answered HTTP {error.status_code} to a model check."
        except openai.APITimeoutError:
            return f"The language model server at {where} did not answer a model check in time."
        except openai.APIConnectionError:
            return f"The language model server at {where} cannot be reached (check OPENAI_BASE_URL)."
        except (openai.OpenAIError, ValueError, TypeError) as error:
            return (f"The server at {where} does not speak the OpenAI API "
                    f"({type(error).__name__}; check OPENAI_BASE_URL).")
        return ""

    def _check_listed(self, client, where: str) -> str:
        # Some compatible servers only list models; a 404 there too means no API at that URL.
        try:
            names = [model.id for model in client.models.list()]
        except openai.NotFoundError:
            return f"No OpenAI-compatible API at {where} (HTTP 404; check OPENAI_BASE_URL)."
        except (openai.OpenAIError, ValueError, TypeError):
            names = []
        if self.model in names:
            return ""
        return f"The language model {self.model!r} does not exist at {where} (check OPENAI_MODEL)."

    def rewrite_in_doc_words(self, question: str) -> str:
        """The question restated in documentation vocabulary (a search query).

        Raises AnswerError when the request fails.
        """
        messages = build_doc_words_messages(question)
        text = self._complete(messages, max_tokens=REWRITE_MAX_TOKENS, on_delta=None)
        return text.strip().strip('"').strip()

    def close(self) -> None:
        self._client.close()

    def _complete(
        self, messages: list[dict], *, max_tokens: int, on_delta: Callable[[str], None] | None
    ) -> str:
        if not self.breaker.allow():
            raise ModelUnavailableError(
                f"The language model is paused after repeated failures; next try in {self.breaker.retry_in():.0f} s."
            )
        try:
            text = self._request(messages, max_tokens=max_tokens, on_delta=on_delta)
        except _RequestRejected:
            self.breaker.release()
            raise
        except AnswerError as error:
            self.breaker.record_failure(str(error))
            raise
        self.breaker.record_success()  # the server answered, even if with nothing
        if not text or not text.strip():
            raise AnswerError("The language model returned an empty answer.")
        return text

    def _request(
        self, messages: list[dict], *, max_tokens: int, on_delta: Callable[[str], None] | None
    ) -> str | None:
        """The completion's text; raises AnswerError (_RequestRejected for the request's own faults)."""
        try:
            if on_delta is None:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=0
                )
                text = response.choices[0].message.content if response.choices else None
            else:
                text = self._stream(messages, max_tokens=max_tokens, on_delta=on_delta)
        except openai.APIStatusError as error:
            kind = _RequestRejected if error.status_code in _REQUEST_STATUSES else AnswerError
            raise kind(f"The language model returned HTTP {error.status_code}.") from None
        except openai.APITimeoutError:
            raise AnswerError("The language model did not answer in time.") from None
        except openai.APIConnectionError:
            raise AnswerError("The language model could not be reached.") from None
        except (openai.OpenAIError, ValueError, AttributeError, TypeError, IndexError) as error:
            # Malformed JSON or an unexpected shape from an OpenAI-compatible server.
            raise AnswerError(
                f"The language model sent an unreadable response ({type(error).__name__})."
            ) from None
        return text

    def _stream(
        self, messages: list[dict], *, max_tokens: int, on_delta: Callable[[str], None]
    ) -> str:
        parts: list[str] = []
        stream = self._client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        )
        with stream:
            for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content
                if delta:
                    parts.append(delta)
                    on_delta(delta)
        return "".join(parts)
