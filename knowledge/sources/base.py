"""The one interface every source kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from knowledge.sources.options import FetchOptions
from knowledge.sources.spec import SourceSpec, label
from knowledge.types import Document


class Source(ABC):
    """One KNOWLEDGE_SOURCES entry that can be read into Documents.

    `read` raises SourceError (one line, naming the source) when nothing usable
    could be read; smaller problems (one page failed, its previous text kept) go
    to `problems` and the read goes on.
    """

    def __init__(self, *, spec: SourceSpec, options: FetchOptions) -> None:
        self.spec = spec
        self.options = options
        self.label = label(spec)
        self.problems: list[str] = []

    @abstractmethod
    def read(self) -> list[Document]:
        """Every document of the source, in a stable order. Raises SourceError."""
