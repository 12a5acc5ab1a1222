"""Answers from an OpenAI-compatible chat completions API.

The only module that imports openai. The client's own retries (which honour
Retry-After) and timeout are used; every failure becomes one AnswerError line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import openai

from knowledge.errors import AnswerError
from knowledge.prompts import build_answer_messages, build_rewrite_messages
from knowledge.types import Chunk, Turn

REWRITE_MAX_TOKENS = 96


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
    ) -> None:
        """Raises AnswerError when no API key is given."""
        if not api_key:
            raise AnswerError("No OpenAI API key is configured (set OPENAI_API_KEY).")
        self.model = model
        self.max_tokens = max_tokens
        self.history_max_tokens = history_max_tokens
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

    def close(self) -> None:
        self._client.close()

    def _complete(
        self, messages: list[dict], *, max_tokens: int, on_delta: Callable[[str], None] | None
    ) -> str:
        try:
            if on_delta is None:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=0
                )
                text = response.choices[0].message.content if response.choices else None
            else:
                text = self._stream(messages, max_tokens=max_tokens, on_delta=on_delta)
        except openai.APIStatusError as error:
            raise AnswerError(
                f"The language model returned HTTP {error.status_code}."
            ) from None
        except openai.APITimeoutError:
            raise AnswerError("The language model did not answer in time.") from None
        except openai.APIConnectionError:
            raise AnswerError("The language model could not be reached.") from None
        except (openai.OpenAIError, ValueError, AttributeError, TypeError, IndexError) as error:
            # Malformed JSON or an unexpected shape from an OpenAI-compatible server.
            raise AnswerError(
                f"The language model sent an unreadable response ({type(error).__name__})."
            ) from None
        if not text or not text.strip():
            raise AnswerError("The language model returned an empty answer.")
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
