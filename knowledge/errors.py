"""Errors the knowledge layer raises on purpose.

Each carries a message meant for a person (CLI stderr, a Slack reply), so
callers can show `str(error)` without a traceback.
"""


class KnowledgeError(Exception):
    """Base class: a failure with a message a user can act on."""


class InvalidQuestionError(KnowledgeError):
    """The question is empty, too long or otherwise unusable."""


class ModelLoadError(KnowledgeError):
    """A model could not be found or loaded."""


class SourceError(KnowledgeError):
    """A knowledge source is missing, unreadable, empty or not a valid zip."""


class StoreError(KnowledgeError):
    """The vector store failed."""


class StoreUnavailableError(StoreError):
    """The Milvus server cannot be reached (or the Lite file cannot be opened)."""


class StoreLockedError(StoreUnavailableError):
    """A Milvus Lite file is held by another process (only one may open it)."""


class DimensionMismatchError(StoreError):
    """The collection's vector size differs from the embedding model's."""


class RefreshInProgressError(KnowledgeError):
    """A refresh is already running; carries when it started."""

    def __init__(self, message: str, *, started_at: float) -> None:
        super().__init__(message)
        self.started_at = started_at


class AnswerError(KnowledgeError):
    """The language model failed to produce an answer."""


class ModelUnavailableError(AnswerError):
    """The language model is not called for now: it failed repeatedly (circuit open)."""


class ModelServerError(KnowledgeError):
    """A model server (EMBEDDING_BASE_URL, RERANKER_BASE_URL) refused a request or answered nonsense."""


class ModelServerUnavailableError(ModelServerError):
    """A model server cannot be reached, is too slow, or answers 429/5xx after the retries."""
