"""Refresh or rebuild the index: sources -> chunks -> vectors -> store, one at a time.

A refresh reads and chunks every source before it writes anything, embeds
only chunks whose content hash differs from the index's, upserts each batch
as soon as it is embedded and deletes removed chunks last. A failure or a
kill part-way leaves every served chunk valid (old or new), and the next
refresh, comparing hashes again, finishes the work. A rebuild (asked for, or
forced by another embedding model) fills a staging collection beside the
serving one and switches the alias in one step.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from knowledge import evidence
from knowledge.chunking import chunk_document
from knowledge.errors import RefreshInProgressError, SourceError
from knowledge.settings import KnowledgeSettings
from knowledge.sources import FetchOptions, ReadResult, parse_sources, read_sources
from knowledge.store import VectorStore
from knowledge.types import Chunk, Document, RefreshReport

logger = logging.getLogger(__name__)

LOCK_FILE = "refresh.lock"
EMBED_BATCHES_PER_MODEL_BATCH = 4  # upsert after each few model batches: progress survives a crash


class Indexer:
    """Keeps the vector store in step with KNOWLEDGE_SOURCES.

    `store` is used as given (and not closed); otherwise `store_factory()` opens a
    store per refresh, or one is built from the settings.
    """

    def __init__(
        self,
        *,
        settings: KnowledgeSettings,
        embedder,
        store: VectorStore | None = None,
        store_factory: Callable[[], VectorStore] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self._store = store
        self._store_factory = store_factory or self._default_store
        self.batch_size = batch_size or settings.embedding_batch_size * EMBED_BATCHES_PER_MODEL_BATCH
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self.last_report: RefreshReport | None = None
        self.last_run_at: float | None = None
        # Documents that live outside KNOWLEDGE_SOURCES (the bot's team answers): every
        # refresh and rebuild indexes them too, so neither deletes their chunks.
        self.extra_documents: Callable[[], Sequence[Document]] | None = None

    def _default_store(self) -> VectorStore:
        return VectorStore(
            uri=self.settings.milvus_target,
            token=self.settings.milvus_token.get_secret_value(),
            collection=self.settings.milvus_collection,
            dimension=self.embedder.dimension,
            model_id=self.embedder.model_id,
            sentence_vectors=self.settings.embeds_sentences,
        )

    @property
    def running_since(self) -> float | None:
        """When the refresh in this process started, None when none runs."""
        return self._started_at

    # ---- single flight ---------------------------------------------------------------

    def refresh(self, *, rebuild: bool = False, progress: bool = False) -> RefreshReport:
        """Bring the index up to date with the sources (rebuild it when asked or needed).

        Raises RefreshInProgressError when a refresh runs in this or another process,
        SourceError for unreadable sources, StoreError subclasses from Milvus.
        """
        if not self._lock.acquire(blocking=False):
            raise _in_progress(self._started_at or time.time())
        try:
            with self._process_lock():
                self._started_at = time.time()
                try:
                    report = self._refresh(rebuild=rebuild, progress=progress)
                finally:
                    self._started_at = None
            self.last_report = report
            self.last_run_at = time.time()
            return report
        finally:
            self._lock.release()

    def _process_lock(self):
        """An exclusive flock on DATA_DIR/refresh.lock, so the CLI and the bot never overlap."""
        return _FileLock(Path(self.settings.data_dir) / LOCK_FILE)

    # ---- the work --------------------------------------------------------------------

    def _refresh(self, *, rebuild: bool, progress: bool) -> RefreshReport:
        started = time.perf_counter()
        # Read and chunk everything before any write: a bad source changes nothing.
        read = read_sources(parse_sources(self.settings.knowledge_sources),
                            options=FetchOptions.from_settings(self.settings))
        if not read.read:  # every source failed: nothing to compare with, nothing changes
            reasons = list(read.failed.values())
            raise SourceError(reasons[0] if len(reasons) == 1 else
                              "No source could be read; the index was left as it was: " + "; ".join(reasons))
        for reason in read.failed.values():
            logger.warning("%s; its previous chunks keep serving", reason)
        documents = read.documents
        extra = list(self.extra_documents()) if self.extra_documents is not None else []
        chunks = self._chunks(documents)
        if chunks:  # the emptiness check below is about the sources alone
            chunks += self._chunks(extra, known={c.id for c in chunks})
        if not chunks:
            # Files that hold no text (emptied, or a glob that picks only stubs) would
            # otherwise delete the whole serving index.
            raise SourceError(
                f"The sources hold {len(documents)} file(s) but no text to index; "
                "the index was left as it was. Check KNOWLEDGE_SOURCES."
            )
        if rebuild and read.failed:
            # A rebuild starts from nothing: it would drop what the failed sources still serve.
            raise SourceError("Not rebuilding while a source fails (the index was left as it was): "
                              + "; ".join(read.failed.values()))
        store = self._store or self._store_factory()
        try:
            # Another replica may have rebuilt it since this process read it: not twice.
            store.follow_serving()
            if rebuild or store.needs_rebuild:
                if store.needs_rebuild and not rebuild:
                    logger.warning("%s Rebuilding.", store.rebuild_reason)
                report = self._rebuild(store, chunks, progress=progress)
            else:
                report = self._update(store, chunks, progress=progress, keep=self._kept_ids(store, read))
        finally:
            if self._store is None:
                store.close()
        report.failed = dict(read.failed)
        report.problems = {name: list(items) for name, items in read.problems.items()}
        report.documents = len(documents) + len(extra)
        report.chunks = len(chunks)
        report.seconds = time.perf_counter() - started
        logger.info("refresh done: %s", report.to_dict())
        return report

    def _chunks(self, documents, *, known: set[str] = frozenset()) -> list[Chunk]:
        settings = self.settings
        unique: dict[str, Chunk] = {}
        for document in documents:
            for chunk in chunk_document(
                document,
                max_tokens=settings.chunk_max_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
                min_tokens=settings.chunk_min_tokens,
                url_template=settings.citation_template,
                count_tokens=self.embedder.count_tokens,
            ):
                if chunk.id in unique or chunk.id in known:
                    logger.warning("duplicate chunk id %s; keeping the first", chunk.id)
                    continue
                unique[chunk.id] = chunk
        return list(unique.values())

    @staticmethod
    def _kept_ids(store: VectorStore, read: ReadResult) -> set[str]:
        """The indexed chunks of sources that failed to read: they keep serving as they were."""
        if not read.failed:
            return set()
        return {chunk_id for chunk_id, name in store.source_names().items() if name in read.failed}

    # ---- one source's documents, without a refresh ------------------------------------

    def sync_documents(self, documents: Sequence[Document], *, source_names: Sequence[str]) -> RefreshReport:
        """Make the index's chunks of `source_names` match `documents` (embed new or changed, delete the rest).

        For sources kept outside KNOWLEDGE_SOURCES (the bot's team answers); waits for a
        refresh running in this process. Raises ValueError for a document of another
        source, StoreError subclasses from Milvus.
        """
        names = sorted(set(source_names))
        if not names:
            return RefreshReport()  # an empty filter would select every chunk
        strays = {d.source_name for d in documents} - set(names)
        if strays:
            raise ValueError(f"documents of sources {sorted(strays)} not among {names}")
        started = time.perf_counter()
        chunks = self._chunks(documents)
        # The same lock as refresh: a refresh computing its deletions must not miss these chunks.
        with self._lock:
            store = self._store or self._store_factory()
            try:
                report = self._update(store, chunks, progress=False, indexed=store.content_hashes(source_names=names))
            finally:
                if self._store is None:
                    store.close()
        report.documents = len(documents)
        report.chunks = len(chunks)
        report.seconds = time.perf_counter() - started
        logger.info("synced %s: %s", ", ".join(names), report.to_dict())
        return report

    def _update(self, store: VectorStore, chunks: list[Chunk], *, progress: bool,
                keep: set[str] = frozenset(), indexed: dict[str, str] | None = None) -> RefreshReport:
        """Embed new and changed chunks, delete the indexed ones not in `chunks` (nor in `keep`).

        `indexed` (chunk id -> content hash) is what to compare with: the whole collection by default.
        """
        indexed = store.content_hashes() if indexed is None else indexed
        wanted = {chunk.id for chunk in chunks}
        changed = [c for c in chunks if indexed.get(c.id) != c.content_hash]
        stale = [chunk_id for chunk_id in indexed if chunk_id not in wanted and chunk_id not in keep]
        added = sum(1 for c in changed if c.id not in indexed)
        self._embed_and_upsert(store, changed, collection=None, progress=progress)
        # Deletes last: until the new chunks are in, the old ones keep answering.
        store.delete(stale)
        if changed or stale:
            store.flush()
        return RefreshReport(
            added=added,
            updated=len(changed) - added,
            deleted=len(stale),
            unchanged=len(chunks) - len(changed),
            collection=store.physical_name() or store.name,
        )

    def _rebuild(self, store: VectorStore, chunks: list[Chunk], *, progress: bool) -> RefreshReport:
        # An index built for another model cannot be read; one only analysed another way can.
        previous = {} if store.mismatch else store.content_hashes()
        staging = store.create_staging()
        self._embed_and_upsert(store, chunks, collection=staging, progress=progress)
        store.switch_to(staging)  # one step: searches see the old or the new, never a mix
        added = sum(1 for c in chunks if c.id not in previous)
        return RefreshReport(
            added=added,
            updated=len(chunks) - added,
            deleted=sum(1 for chunk_id in previous if chunk_id not in {c.id for c in chunks}),
            rebuilt=True,
            collection=staging,
        )

    def _embed_and_upsert(
        self, store: VectorStore, chunks: Sequence[Chunk], *, collection: str | None, progress: bool
    ) -> None:
        if not chunks:
            return
        # Similar lengths side by side: each model batch pads to its longest text, and
        # sorting the whole list (not just each encode call's share) removes most padding.
        chunks = sorted(chunks, key=lambda c: len(c.search_text))
        # Each distinct sentence is embedded once per run, whatever batch meets it again:
        # chunk overlap repeats sentences and markup repeats across pages (over the Milvus
        # docs, 35k sentences but 24k distinct texts). The dict lives for this call only and
        # keeps the int8 rows `evidence.pack` stores (1 byte a dimension): about 33 MB with
        # its keys for 25,000 distinct sentences of a 1024-d model (float32 rows: ~110 MB).
        # It grows with the corpus, as the chunk list this call already holds does.
        sentence_rows: dict[str, np.ndarray] = {}
        bar = _progress_bar(len(chunks)) if progress else None
        try:
            for start in range(0, len(chunks), self.batch_size):
                batch = chunks[start : start + self.batch_size]
                vectors = self.embedder.embed_documents([c.search_text for c in batch])
                titles = None
                if store.holds_title_vectors(collection=collection):
                    titles = self._title_vectors(batch)
                sentences = None
                if store.holds_sentence_vectors(collection=collection):
                    sentences = self._sentence_vectors(batch, dimension=store.dimension, known=sentence_rows)
                store.upsert(batch, vectors, title_vectors=titles, sentence_vectors=sentences,
                             collection=collection)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()


    def _title_vectors(self, chunks: Sequence[Chunk]):
        """One vector per chunk for its section title (parts of a split section share one)."""
        texts = [section_title(c) for c in chunks]
        unique = list(dict.fromkeys(texts))
        vectors = np.asarray(self.embedder.embed_documents(unique))
        row = {text: i for i, text in enumerate(unique)}
        return vectors[[row[text] for text in texts]]

    def _sentence_vectors(self, chunks: Sequence[Chunk], *, dimension: int,
                          known: dict[str, np.ndarray] | None = None) -> list[str]:
        """Each chunk's sentences' vectors, packed for its row (knowledge.evidence).

        Each distinct sentence not in `known` (text -> its quantised row, filled here) is
        embedded once, as the titles are. Its vector is the one it got among its chunk's
        neighbours, up to float noise (the embedder batches by tokens; docs/performance.md).
        """
        known = {} if known is None else known
        limit = evidence.max_sentences(dimension)
        per_chunk = [evidence.sentences(c.text, limit=limit) for c in chunks]
        new = list(dict.fromkeys(text for texts in per_chunk for text in texts if text not in known))
        if new:
            rows = evidence.quantise(np.asarray(self.embedder.embed_documents(new)))
            known.update(zip(new, rows, strict=True))
        empty = np.zeros((0, dimension), dtype=np.int8)
        return [evidence.pack_quantised(np.stack([known[text] for text in texts]) if texts else empty)
                for texts in per_chunk]


def section_title(chunk: Chunk) -> str:
    """What the title vector embeds: the document title and the heading path.

    FAQ headings are the questions themselves, so a question matches its entry's
    heading even when a long guide page mentions more of its words.
    """
    return chunk.breadcrumb


class _FileLock:
    """Non-blocking exclusive flock; the holder writes its start time into the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            started = _read_started(fd)
            os.close(fd)
            raise _in_progress(started) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{time.time():.3f} {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_started(fd: int) -> float:
    try:
        return float(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()


def _in_progress(started_at: float) -> RefreshInProgressError:
    since = datetime.fromtimestamp(started_at).strftime("%H:%M:%S")
    return RefreshInProgressError(f"A refresh is already running since {since}", started_at=started_at)


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="Embedding", unit="chunk")
