"""Milvus vector store: the only module that imports pymilvus.

The serving name (e.g. ``support_docs``) is an alias pointing at a physical
collection ``support_docs_<millis>``; a rebuild fills a staging collection
beside it and switches the alias in one step, so searches never see a half
built index. Each row holds one Chunk in typed fields (no JSON: filters on
JSON are slow), its dense vector, and a BM25 sparse vector that Milvus
derives from ``search_text`` (stemmed by ``knowledge.keywords.analyze``, which
every keyword query goes through too) when the backend supports BM25 functions,
and a second dense vector of the section's title and heading path
(``title_vector``) where the server holds several vector fields.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from knowledge.errors import (
    DimensionMismatchError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)

# pymilvus parses MILVUS_URI (and the legacy MILVUS_DEFAULT_CONNECTION) when it is imported,
# after loading the nearest .env into the environment, and raises on a file path: the Milvus
# Lite form this project (and pymilvus's own tutorial) uses. We pass the URI explicitly, so
# they are blank during the import (load_dotenv keeps variables already set) and restored after.
_PYMILVUS_ENV = ("MILVUS_URI", "MILVUS_DEFAULT_CONNECTION")
_saved_env = {name: os.environ.get(name) for name in _PYMILVUS_ENV}
os.environ.update(dict.fromkeys(_PYMILVUS_ENV, ""))
try:
    from pymilvus import (
        AnnSearchRequest,
        DataType,
        Function,
        FunctionType,
        MilvusClient,
        RRFRanker,
        WeightedRanker,
    )
    from pymilvus.exceptions import MilvusException
except Exception as _error:  # a broken or incompatible install: one line, not a traceback
    raise StoreUnavailableError(
        f"Cannot load the Milvus client library (pymilvus): {' '.join(str(_error).split())[:300]}"
    ) from None
finally:
    for _name, _value in _saved_env.items():
        if _value is None:
            os.environ.pop(_name, None)
        else:
            os.environ[_name] = _value

from knowledge.keywords import ANALYZER_VERSION, analyze
from knowledge.types import Candidate, Chunk, as_source_filter

logger = logging.getLogger(__name__)


class _AliasExistsFilter(logging.Filter):
    """Drops pymilvus's ERROR line, with its traceback, for a create_alias refused because the
    alias exists: processes opening or switching the same index at one moment meet that, and
    VectorStore._create_alias handles it (it logs one INFO line instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("[create_alias]" in message and re.search(r"already (exist|aliased)", message, re.IGNORECASE))


logging.getLogger("pymilvus.decorators").addFilter(_AliasExistsFilter())

HEADING_SEPARATOR = "\n"  # headings never contain a newline
MODEL_PROPERTY = "supportbot.model_id"
DIMENSION_PROPERTY = "supportbot.dimension"
ANALYZER_PROPERTY = "supportbot.analyzer"
# Whether the collection was built with every sentence's vectors ("filled") or without
# ("none"): the field exists either way, so its presence cannot say.
SENTENCES_PROPERTY = "supportbot.sentences"
TITLE_FIELD = "title_vector"  # the section's title and heading path, embedded apart
# Every sentence's vector, packed (knowledge.evidence): Milvus 2.4 has no field for a
# varying number of vectors, and these are only read back for a few candidates, never
# searched, so they live in the chunk's own row and come and go with it.
SENTENCES_FIELD = "sentence_vectors"
REBUILD_HINT = "rebuild the index with `supportbot index --rebuild`"
STALE_STAGING_SECONDS = 86400  # a staging collection this old was left by a failed rebuild
# VARCHAR limits are in bytes; values are clipped to fit rather than failing the insert.
TEXT_BYTES = 65535
OUTPUT_FIELDS = [
    "id", "text", "source", "source_name", "title", "heading_path",
    "anchor", "url", "ordinal", "content_hash",
]  # fmt: skip
HNSW_PARAMS = {"M": 16, "efConstruction": 200}
SEARCH_EF = 128
QUERY_WINDOW = 16384  # Milvus caps offset + limit of one query
# How often searches and writes check whether another process switched the serving name to
# a new collection (a replica's rebuild): one cheap call, and the new fields are used soon.
FOLLOW_SECONDS = 30.0


class VectorStore:
    """Chunks and their vectors in one Milvus collection, served through an alias.

    Opening raises StoreUnavailableError (StoreLockedError when another process
    holds the Milvus Lite file). A collection built for another vector size or
    model is refused by ``check()`` and the search/write methods with
    DimensionMismatchError; the indexer rebuilds it instead (``needs_rebuild``).
    """

    def __init__(
        self,
        *,
        uri: str,
        token: str = "",
        collection: str,
        dimension: int,
        model_id: str = "",
        analyzer: str | dict = "standard",
        batch_size: int = 256,
        timeout: float = 30.0,
        sentence_vectors: bool = True,
    ) -> None:
        self.uri = uri
        # Whether this index should hold every sentence's vectors: collections it creates
        # record it, and one built without them is rebuilt at the next refresh only then.
        self.wants_sentence_vectors = sentence_vectors
        self.name = collection
        self.dimension = int(dimension)
        self.model_id = model_id
        self.batch_size = batch_size
        self._analyzer = {"tokenizer": analyzer} if isinstance(analyzer, str) else analyzer
        self._is_lite = _is_lite_uri(uri)
        self._warned_fallback = False
        # Kept to re-create the client after Milvus went away (see _call).
        self._token, self._timeout = token, timeout
        self._broken = False
        self._reconnect_lock = threading.Lock()
        self._client = self._connect(uri, token, timeout)
        version = self._server_version()
        self._server_hybrid = version is None or version >= (2, 5)
        self.mismatch = ""  # why the serving collection cannot be used, "" when it can
        self.stale = ""  # why it serves dense-only until rebuilt, "" when it is current
        self.supports_hybrid = self._server_hybrid
        # Several vector fields per collection came with Milvus 2.4; 2.3 refuses them (known from
        # its version, so no failing create on the way: pymilvus logs those as errors with a traceback).
        self._server_title = version is None or version >= (2, 4)
        self.has_title_vector = False
        self.has_sentence_vectors = False
        self._sentences_field = False
        self._serving = ""  # the collection behind the serving name when last read
        self._followed_at = 0.0
        self._follow_lock = threading.Lock()
        self._open_serving()

    # ---- opening -----------------------------------------------------------------

    @classmethod
    def check_reachable(cls, *, uri: str, token: str = "", timeout: float = 30.0) -> None:
        """Connect to Milvus and let go, before the models load (seconds to a minute), so a
        store that cannot be opened is reported at once. Opening the store next costs little
        more: pymilvus 3 keeps one connection per address and token, a Lite server stays up.
        Raises StoreUnavailableError (StoreLockedError for a Lite file another process holds)."""
        cls._connect(uri, token, timeout).close()

    @staticmethod
    def _connect(uri: str, token: str, timeout: float) -> MilvusClient:
        shown = _safe_uri(uri)
        is_lite = _is_lite_uri(uri)
        if is_lite:
            path = Path(uri)
            if path.suffix != ".db":
                raise StoreUnavailableError(
                    f"MILVUS_URI {uri!r} is a local path, so a Milvus Lite file, whose name must end in .db "
                    "(e.g. ./milvus.db); a Milvus server is http://host:19530."
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreUnavailableError(
                    f"Cannot create the folder of the Milvus Lite file {uri}: {error.strerror or error}"
                ) from None
            if _lite_locked_elsewhere(path):
                raise _locked_error(path)
        try:
            return MilvusClient(uri=uri, token=token, timeout=timeout)
        except Exception as error:  # pymilvus raises several unrelated types here
            if is_lite and _lite_locked_elsewhere(Path(uri)):
                raise _locked_error(Path(uri)) from None
            reason = _one_line(error)
            raise StoreUnavailableError(f"Cannot open Milvus at {shown}: {reason}") from None

    def _server_version(self) -> tuple[int, int] | None:
        """The server's (major, minor); None for Milvus Lite (3.x: everything) or when unknown (try
        each feature, and fall back on the first refusal). BM25 functions and hybrid search came
        with Milvus 2.5."""
        try:
            version = str(self._client.get_server_version())
        except Exception:
            return None
        match = None if version.startswith("milvus_lite") else re.search(r"(\d+)\.(\d+)", version)
        return (int(match[1]), int(match[2])) if match else None

    def _open_serving(self) -> None:
        target = self.physical_name()
        if target is None:
            created = self._create_physical()
            target = self._create_alias(created)
            if target != created:
                # Another process created the serving collection at the same moment: use theirs.
                self._call(self._client.drop_collection, created)
        self._adopt(target)

    def _create_alias(self, target: str) -> str:
        """Point the serving name at `target` by creating it; the collection it points at then:
        `target`, or the one another process (a replica starting at the same moment) gave it
        just before. Raises StoreError when the alias can be neither created nor found."""
        try:
            self._call(self._client.create_alias, target, self.name)
            return target
        except StoreUnavailableError:
            raise
        except StoreError as error:
            current = self.physical_name()
            if current is None or current == self.name:
                raise StoreError(f"Cannot create the Milvus alias {self.name}: {error}") from None
            logger.info("The Milvus alias %s was created by another process at the same moment (on %s)",
                        self.name, current)
            return current

    def _adopt(self, target: str) -> None:
        """Serve `target`: load it and read what it can do, whether it fits this model, and
        whether the next refresh should rebuild it."""
        self._load(target)
        info = self._describe(target)
        self._read_fields(info)
        self.mismatch = self._mismatch(target, info)
        self.stale = ""
        if self.supports_hybrid and _collection_analyzer(info) != ANALYZER_VERSION:
            # Its keywords were analysed another way: BM25 would match badly, so search
            # dense only until the next refresh rebuilds it.
            self.stale = f"The keyword index of {target} was built by an older version."
            self.supports_hybrid = False
            logger.warning("%s Searching dense only until it is rebuilt.", self.stale)
        elif self._server_hybrid and not self.has_title_vector and not self.mismatch:
            # Built before section-title vectors: it serves as before (body vector and
            # BM25) until the next refresh rebuilds it with them.
            self.stale = f"The index {target} was built by an older version (no section-title vectors)."
            logger.warning("%s Searching without them until it is rebuilt.", self.stale)
        elif self.wants_sentence_vectors and not self.has_sentence_vectors and not self.mismatch:
            self.stale = f"The index {target} was built without sentence vectors (SENTENCE_VECTORS)."
            logger.warning("%s Searching without them until it is rebuilt.", self.stale)
        self._serving = target
        self._followed_at = time.monotonic()

    def follow_serving(self) -> bool:
        """Serve the collection the serving name points at now, when another process (a
        replica's rebuild) has switched it since: what it can do, its fit and whether it is
        stale are read again, so this process neither serves it without its new fields nor
        rebuilds it once more. Returns whether it had moved. Raises StoreUnavailableError."""
        with self._follow_lock:
            self._followed_at = time.monotonic()
            target = self._serving_target()
            if target is None or target == self._serving:
                return False
            logger.info("The index %s now serves from %s (switched by another process).", self.name, target)
            self._warned_fallback = False
            self._adopt(target)
            return True

    def _follow_now_and_then(self) -> None:
        """follow_serving at most every FOLLOW_SECONDS, from searches and writes."""
        if time.monotonic() - self._followed_at < FOLLOW_SECONDS or self._follow_lock.locked():
            return
        try:
            self.follow_serving()
        except StoreError as error:  # the call that follows reports Milvus's state itself
            logger.debug("checking the serving collection failed: %s", error)

    def _serving_target(self) -> str | None:
        if self._serving == self.name:
            return self.physical_name()  # a plain collection from before aliases has no alias
        try:
            return self._call(self._client.describe_alias, self.name)["collection_name"]
        except StoreUnavailableError:
            raise
        except StoreError:  # the alias is gone, or an older server lacks the call: list them
            return self.physical_name()

    def _read_fields(self, info: dict) -> None:
        """What the serving collection can do, from its description."""
        self.supports_hybrid = self._server_hybrid and _has_bm25(info)
        self.has_title_vector = _has_field(info, TITLE_FIELD)
        self._sentences_field = _has_field(info, SENTENCES_FIELD)
        # An index from before the property was filled when it had the field (the default then).
        self.has_sentence_vectors = (self._sentences_field
                                     and _collection_setting(info, SENTENCES_PROPERTY, "sentences") != "none")

    def physical_name(self) -> str | None:
        """The collection the serving name points at (itself when it is a plain collection)."""
        collections = self._call(self._client.list_collections)
        if self.name in collections:
            return self.name  # a plain collection from before aliases: served as is
        for name in collections:
            if name.startswith(f"{self.name}_"):
                aliases = self._call(self._client.list_aliases, collection_name=name)
                if self.name in aliases.get("aliases", []):
                    return name
        return None

    def _load(self, name: str) -> None:
        # Milvus Lite comes back with collections released after a restart.
        state = self._call(self._client.get_load_state, name)
        if "Loaded" not in str(state.get("state")):
            self._call(self._client.load_collection, name)

    def _describe(self, name: str) -> dict:
        return self._call(self._client.describe_collection, name)

    def _mismatch(self, name: str, info: dict) -> str:
        dims = [
            int(f.get("params", {}).get("dim", 0))
            for f in info.get("fields", [])
            if f["name"] == "vector"
        ]
        names = {f["name"] for f in info.get("fields", [])}
        if not dims or not set(OUTPUT_FIELDS) <= names:
            return f"The collection {name} was not made by this bot; {REBUILD_HINT}."
        if dims[0] != self.dimension:
            return (
                f"The index holds {dims[0]}-dimensional vectors but the embedding model makes "
                f"{self.dimension}; {REBUILD_HINT}."
            )
        stored_model = _collection_model(info)
        if self.model_id and stored_model and stored_model != self.model_id:
            return (
                f"The index was built with {stored_model} but the embedding model is "
                f"{self.model_id}; {REBUILD_HINT}."
            )
        return ""

    @property
    def rebuild_reason(self) -> str:
        """Why the next refresh must rebuild rather than update ("" when it need not)."""
        return self.mismatch or self.stale

    @property
    def needs_rebuild(self) -> bool:
        return bool(self.rebuild_reason)

    def check(self) -> None:
        """Raise DimensionMismatchError when the serving collection fits another model
        (after following a switch by another process, see follow_serving)."""
        self._follow_now_and_then()
        if self.mismatch:
            raise DimensionMismatchError(self.mismatch)

    # ---- collections and the alias --------------------------------------------------

    def _schema(self, with_bm25: bool, with_title: bool = True):
        schema = self._client.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=json.dumps(
                {"model_id": self.model_id, "dimension": self.dimension, "analyzer": ANALYZER_VERSION,
                 "sentences": self._sentences_state}
            ),
        )
        add = schema.add_field
        add("id", DataType.VARCHAR, is_primary=True, max_length=1024)
        add("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        if with_title:
            add(TITLE_FIELD, DataType.FLOAT_VECTOR, dim=self.dimension)
        add("text", DataType.VARCHAR, max_length=TEXT_BYTES)
        if with_bm25:
            add(
                "search_text", DataType.VARCHAR, max_length=TEXT_BYTES,
                enable_analyzer=True, analyzer_params=self._analyzer,
            )  # fmt: skip
            add("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="search_text_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["search_text"],
                    output_field_names=["sparse"],
                )
            )
        else:
            add("search_text", DataType.VARCHAR, max_length=TEXT_BYTES)
        add("source", DataType.VARCHAR, max_length=2048)
        add("source_name", DataType.VARCHAR, max_length=256)
        add("title", DataType.VARCHAR, max_length=2048)
        add("heading_path", DataType.VARCHAR, max_length=8192)
        add("anchor", DataType.VARCHAR, max_length=2048)
        add("url", DataType.VARCHAR, max_length=4096)
        add("ordinal", DataType.INT64)
        add("content_hash", DataType.VARCHAR, max_length=256)
        add(SENTENCES_FIELD, DataType.VARCHAR, max_length=TEXT_BYTES)
        return schema

    def _index_params(self, with_bm25: bool, with_title: bool = True):
        params = self._client.prepare_index_params()
        # HNSW, not FLAT: Milvus Lite failed to reload FLAT collections after restarts.
        params.add_index("vector", index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
        if with_title:
            params.add_index(TITLE_FIELD, index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
        if with_bm25:
            params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        return params

    def _create_physical(self) -> str:
        name = f"{self.name}_{time.time_ns() // 1_000_000}"
        try:
            self._create(name, with_bm25=self._server_hybrid, with_title=self._server_title)
        except MilvusException as error:
            if not (self._server_hybrid or self._server_title):
                raise StoreError(f"Cannot create collection {name}: {_one_line(error)}") from None
            # An older server: Milvus 2.4 knows no BM25 functions, 2.3 not even a second
            # vector field. Fall back one feature at a time.
            logger.warning("Milvus refused BM25 (%s); searches fall back to dense", _one_line(error))
            self._server_hybrid = False
            for with_title in (True, False) if self._server_title else (False,):
                if name in self._call(self._client.list_collections):
                    self._call(self._client.drop_collection, name)
                try:
                    self._create(name, with_bm25=False, with_title=with_title)
                except MilvusException as error:
                    if not with_title:
                        raise StoreError(f"Cannot create collection {name}: {_one_line(error)}") from None
                    continue
                self._server_title = with_title
                break
        return name

    def _create(self, name: str, *, with_bm25: bool, with_title: bool) -> None:
        properties = {
            MODEL_PROPERTY: self.model_id,
            DIMENSION_PROPERTY: str(self.dimension),
            ANALYZER_PROPERTY: ANALYZER_VERSION,
            SENTENCES_PROPERTY: self._sentences_state,
        }
        schema = self._schema(with_bm25, with_title)
        self._client.create_collection(name, schema=schema, properties=properties)
        # sync=False: waiting for index builds calls an RPC Milvus Lite lacks (AllocTimestamp).
        self._client.create_index(name, self._index_params(with_bm25, with_title), sync=False)
        self._client.load_collection(name)

    def create_staging(self) -> str:
        """Create an empty collection for a rebuild (dropping stale ones) and return its name."""
        serving = self.physical_name()
        # Only leftovers older than a day: a younger one may be another replica's rebuild in progress.
        stale_before_ms = (time.time() - STALE_STAGING_SECONDS) * 1000
        for name in self._call(self._client.list_collections):
            match = re.fullmatch(rf"{re.escape(self.name)}_(\d+)", name)
            if name != serving and match and int(match[1]) < stale_before_ms:
                self._call(self._client.drop_collection, name)  # left by a failed rebuild
        return self._create_physical()

    def switch_to(self, staging: str) -> None:
        """Point the serving name at `staging` in one step, then drop the old collection."""
        self._call(self._client.flush, staging)
        self._load(staging)
        old = self.physical_name()
        if old == self.name:
            # A plain collection holds the name: it must go before the alias can exist.
            self._call(self._client.drop_collection, old)
            old = None
        if old is None:
            # Another process may create the alias at the same moment (opening an empty index):
            # then it is altered to point here like any other, and that collection dropped.
            old = self._create_alias(staging)
        if old != staging:
            self._call(self._client.alter_alias, staging, self.name)
            # Switch first, then drop: Milvus Lite drops an alias along with its collection.
            self._call(self._client.drop_collection, old)
        self._adopt(staging)

    # ---- writing ------------------------------------------------------------------

    def upsert(
        self,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        *,
        title_vectors: np.ndarray | None = None,
        sentence_vectors: Sequence[str] | None = None,
        collection: str | None = None,
    ) -> None:
        """Insert or replace chunks with their vectors (and their titles' vectors, and
        their sentences' vectors packed by knowledge.evidence.pack).

        Without `title_vectors` a collection that has the field gets the body vectors
        there too. Raises StoreError, DimensionMismatchError.
        """
        if not len(chunks):
            return
        if collection is None:
            self.check()
        vectors = np.asarray(vectors, dtype=np.float32)
        titles = vectors if title_vectors is None else np.asarray(title_vectors, dtype=np.float32)
        for array in (vectors, titles):
            if array.shape != (len(chunks), self.dimension):
                raise DimensionMismatchError(
                    f"Got vectors of shape {array.shape} for {len(chunks)} chunks of size "
                    f"{self.dimension}; {REBUILD_HINT}."
                )
        target = collection or self.name
        with_title = self.holds_title_vectors(collection=collection)
        # A staging collection was made by this version; the serving one may predate the field.
        with_sentences = bool(collection) or self._sentences_field
        packed = list(sentence_vectors) if sentence_vectors is not None else [""] * len(chunks)
        for start in range(0, len(chunks), self.batch_size):
            end = start + self.batch_size
            rows = [
                _row(chunk, vector, title if with_title else None, sentences if with_sentences else None)
                for chunk, vector, title, sentences in zip(
                    chunks[start:end], vectors[start:end], titles[start:end], packed[start:end])
            ]
            self._call(self._client.upsert, target, rows)

    @property
    def _sentences_state(self) -> str:
        return "filled" if self.wants_sentence_vectors else "none"

    def holds_sentence_vectors(self, *, collection: str | None = None) -> bool:
        """Whether rows written to `collection` (default: the serving one) get each sentence's
        vectors: a new collection as this store was asked, the serving one as it was built (an
        index built with them keeps them whole, whatever SENTENCE_VECTORS says now)."""
        return self.wants_sentence_vectors if collection else self.has_sentence_vectors

    def holds_title_vectors(self, *, collection: str | None = None) -> bool:
        """Whether `collection` (default: the serving one) has the section-title vector."""
        # A staging collection has what this server can hold; the serving one what it was built with.
        return self._server_title if collection else self.has_title_vector

    def delete(self, ids: Sequence[str], *, collection: str | None = None) -> None:
        if not ids:
            return
        target = collection or self.name
        ids = list(ids)
        for start in range(0, len(ids), self.batch_size):
            self._call(self._client.delete, target, ids=ids[start : start + self.batch_size])

    def flush(self, *, collection: str | None = None) -> None:
        """Seal written rows: search over unflushed rows is slow in Milvus Lite."""
        self._call(self._client.flush, collection or self.name)

    # ---- reading ------------------------------------------------------------------

    def count(self, *, collection: str | None = None) -> int:
        rows = self._call(
            self._client.query, collection or self.name, filter="", output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def content_hashes(self, *, collection: str | None = None, source_names=None) -> dict[str, str]:
        """Chunk id -> content hash for the whole collection (or only these sources' chunks)."""
        return {
            row["id"]: row["content_hash"]
            for row in self._iterate(collection or self.name, ["id", "content_hash"], _filter(source_names))
        }

    def source_names(self, *, collection: str | None = None) -> dict[str, str]:
        """Chunk id -> source name for the whole collection (which chunks a failed source owns)."""
        return {
            row["id"]: row["source_name"]
            for row in self._iterate(collection or self.name, ["id", "source_name"])
        }

    def scan(self, fields: Sequence[str]) -> Iterator[dict]:
        """Every row of the serving collection with these fields (e.g. to learn its vocabulary)."""
        yield from self._iterate(self.name, list(fields))

    def _iterate(self, name: str, fields: list[str], expr: str = "") -> Iterator[dict]:
        total = self.count(collection=name)
        if total <= QUERY_WINDOW:
            # One query: the iterator warns on every use with Milvus Lite (no mvccTs).
            yield from self._call(self._client.query, name, filter=expr, output_fields=fields, limit=max(total, 1))
            return
        try:
            iterator = self._client.query_iterator(name, batch_size=1000, filter=expr, output_fields=fields)
            while batch := iterator.next():
                yield from batch
            iterator.close()
        except MilvusException as error:
            raise StoreError(f"Milvus query failed: {_one_line(error)}") from None

    def get(self, ids: Sequence[str]) -> list[Chunk]:
        """The chunks with these ids, in the order asked (missing ids are skipped)."""
        if not ids:
            return []
        rows = self._call(self._client.get, self.name, ids=list(ids), output_fields=OUTPUT_FIELDS)
        by_id = {row["id"]: _chunk(row) for row in rows}
        return [by_id[i] for i in ids if i in by_id]

    def sentence_vectors(self, ids: Sequence[str]) -> dict[str, str]:
        """Chunk id -> its sentences' packed vectors (knowledge.evidence); {} when the index has none."""
        if not ids or not self.has_sentence_vectors:
            return {}
        rows = self._call(self._client.get, self.name, ids=list(ids), output_fields=["id", SENTENCES_FIELD])
        return {row["id"]: row.get(SENTENCES_FIELD) or "" for row in rows}

    def title_scores(self, ids: Sequence[str], vector) -> dict[str, float]:
        """Chunk id -> cosine of `vector` and its section-title vector, as hybrid search gives
        its hits; {} when the index has no title vectors."""
        if not ids or not self.has_title_vector:
            return {}
        query = np.asarray(vector, dtype=np.float32).ravel()
        rows = self._call(self._client.get, self.name, ids=list(ids), output_fields=["id", TITLE_FIELD])
        return {row["id"]: _cosine(query, row.get(TITLE_FIELD)) for row in rows if row.get(TITLE_FIELD) is not None}

    # ---- searching ------------------------------------------------------------------

    def search_dense(self, vector, *, limit: int, source_names=None, evidence: bool = False) -> list[Candidate]:
        """Nearest chunks by body vector; `evidence`: each hit also carries its sentence vectors
        and its title's cosine (where the index has them), read in the same round trip."""
        self.check()
        title = evidence and self.has_title_vector
        fields = [*OUTPUT_FIELDS, *self._evidence_fields(evidence), *([TITLE_FIELD] if title else [])]
        results = self._call(
            self._client.search,
            self.name,
            data=[_as_list(vector)],
            anns_field="vector",
            limit=limit,
            filter=_filter(source_names),
            output_fields=fields,
            search_params={"metric_type": "COSINE", "params": {"ef": max(SEARCH_EF, limit)}},
        )
        query = np.asarray(vector, dtype=np.float32).ravel() if title else None
        return _ranked(
            Candidate(chunk=_chunk(hit["entity"]), dense_score=hit["distance"], fused_score=hit["distance"],
                      title_score=_cosine(query, hit["entity"].get(TITLE_FIELD)) if title else None,
                      sentences=_sentences(hit["entity"], evidence and self.has_sentence_vectors))
            for hit in results[0]
        )

    def _evidence_fields(self, evidence: bool) -> list[str]:
        return [SENTENCES_FIELD] if evidence and self.has_sentence_vectors else []

    def search_bm25(self, text: str, *, limit: int, source_names=None, vector=None) -> list[Candidate]:
        """Keyword search; without BM25 support, dense search on `vector` (or nothing)."""
        self.check()
        if not text.strip():
            return []
        if not self.supports_hybrid:
            return self._fallback(vector, limit, source_names)
        results = self._call(
            self._client.search,
            self.name,
            data=[analyze(text)],
            anns_field="sparse",
            limit=limit,
            filter=_filter(source_names),
            output_fields=OUTPUT_FIELDS,
            search_params={"metric_type": "BM25"},
        )
        # Milvus Lite reports BM25 as a negative distance; the score itself is positive.
        return _ranked(
            Candidate(chunk=_chunk(hit["entity"]), bm25_score=abs(hit["distance"]), fused_score=abs(hit["distance"]))
            for hit in results[0]
        )

    def search_hybrid(
        self,
        vector,
        text: str,
        *,
        limit: int,
        fusion: str = "rrf",
        rrf_k: int = 60,
        weights: tuple[float, float] = (0.6, 0.4),
        title_weight: float = 0.0,
        title_depth: int = 3,
        source_names=None,
        depth: int | None = None,
        evidence: bool = False,
    ) -> list[Candidate]:
        """Body vector, title vector and BM25 results fused in one Milvus hybrid search.

        `weights` are the body-vector and BM25 weights of weighted fusion; `title_weight`
        > 0 adds the section-title vector (where the collection has one) with that
        weight, for its best `title_depth` hits only: a heading that matches the
        question lifts its section, and weaker title matches do not push out body hits. Without BM25 support (or without `text`) the dense sides are fused
        alone, and with one side left it is a plain dense search. `depth` is how many
        hits each side contributes before fusion (default: `limit`). `evidence`: each hit
        also carries its sentence vectors (where the index has them).
        """
        self.check()
        use_bm25 = self.supports_hybrid and bool(text.strip())
        use_title = title_weight > 0 and self.has_title_vector
        if not use_bm25 and not use_title:
            if self.supports_hybrid or not text.strip():
                return self.search_dense(vector, limit=limit, source_names=source_names, evidence=evidence)
            return self._fallback(vector, limit, source_names)
        query = np.asarray(vector, dtype=np.float32).ravel()
        expr = _filter(source_names)
        depth = max(limit, depth or limit)
        dense_params = {"metric_type": "COSINE", "params": {"ef": max(SEARCH_EF, depth)}}
        requests = [AnnSearchRequest([query.tolist()], "vector", dense_params, depth, expr=expr)]
        side_weights = [weights[0]]
        if use_title:
            requests.append(
                AnnSearchRequest([query.tolist()], TITLE_FIELD, dense_params, title_depth, expr=expr)
            )
            side_weights.append(title_weight)
        if use_bm25:
            requests.append(
                AnnSearchRequest([analyze(text)], "sparse", {"metric_type": "BM25"}, depth, expr=expr)
            )
            side_weights.append(weights[1])
        ranker = RRFRanker(rrf_k) if fusion == "rrf" else WeightedRanker(*side_weights)
        fields = [*OUTPUT_FIELDS, "vector", *([TITLE_FIELD] if use_title else []), *self._evidence_fields(evidence)]
        try:
            results = self._reconnect_if_broken().hybrid_search(
                self.name, requests, ranker, limit=limit, output_fields=fields
            )
        except StoreUnavailableError:
            raise
        except Exception as error:
            if isinstance(error, MilvusException) and _is_unavailable(error):
                raise self._unavailable(error) from None
            if "HybridSearch" not in str(error) and "UNIMPLEMENTED" not in str(error):
                raise StoreError(f"Milvus hybrid search failed: {_one_line(error)}") from None
            self.supports_hybrid = self.has_title_vector = False
            return self._fallback(vector, limit, source_names)
        return _ranked(
            Candidate(
                chunk=_chunk(hit["entity"]),
                dense_score=_cosine(query, hit["entity"].get("vector")),
                title_score=_cosine(query, hit["entity"].get(TITLE_FIELD)) if use_title else None,
                fused_score=hit["distance"],
                sentences=_sentences(hit["entity"], evidence and self.has_sentence_vectors),
            )
            for hit in results[0]
        )

    def _fallback(self, vector, limit: int, source_names) -> list[Candidate]:
        if not self._warned_fallback:
            self._warned_fallback = True
            if self.stale:
                logger.warning("%s Using dense search only until it is rebuilt.", self.stale)
            else:
                logger.warning(
                    "Milvus at %s has no BM25/hybrid search; using dense search only", _safe_uri(self.uri)
                )
        if vector is None:
            return []
        return self.search_dense(vector, limit=limit, source_names=source_names)

    # ---- plumbing -----------------------------------------------------------------

    def _call(self, method, *args, **kwargs):
        """Run a client method; raises StoreUnavailableError when Milvus cannot be reached, else StoreError.

        After a connection failure the next call re-creates the client, so the
        store recovers by itself once Milvus (or the Lite file) is back.
        """
        client = self._reconnect_if_broken()
        if getattr(method, "__self__", client) is not client:
            method = getattr(client, method.__name__)  # bound to the client just replaced
        try:
            return method(*args, **kwargs)
        except MilvusException as error:
            if _is_unavailable(error):
                raise self._unavailable(error) from None
            raise StoreError(f"Milvus {method.__name__} failed: {_one_line(error)}") from None

    def _unavailable(self, error: Exception) -> StoreUnavailableError:
        self._broken = True  # the next call re-creates the client
        return StoreUnavailableError(f"Milvus at {_safe_uri(self.uri)} cannot be reached: {_one_line(error)}")

    def _reconnect_if_broken(self) -> MilvusClient:
        if not self._broken:
            return self._client
        with self._reconnect_lock:
            if self._broken:
                old = self._client
                # Raises StoreUnavailableError (StoreLockedError) while Milvus is still away.
                self._client = self._connect(self.uri, self._token, self._timeout)
                self._broken = False
                try:
                    old.close()
                except Exception:
                    logger.debug("closing the broken Milvus client failed", exc_info=True)
                logger.info("reconnected to Milvus at %s", _safe_uri(self.uri))
                target = self.physical_name()
                if target is not None:
                    self._load(target)  # a restarted server may come back with it released
            return self._client

    def close(self) -> None:
        """Release this client (the Milvus Lite server stays up for other stores in the process)."""
        try:
            self._client.close()
        except Exception:  # closing must not fail shutdown
            logger.debug("closing the Milvus client failed", exc_info=True)


# ---- helpers ------------------------------------------------------------------------


def _is_lite_uri(uri: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", uri, re.I) and not uri.startswith("unix:")


def _safe_uri(uri: str) -> str:
    """The URI without user info or query (which may carry credentials)."""
    if _is_lite_uri(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _lite_locked_elsewhere(path: Path) -> bool:
    """True when another process holds the Milvus Lite data directory's lock.

    Only probed when this process has no Lite server on the path: a flock from a
    second descriptor would conflict with our own server's lock too.
    """
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return False
    if os.path.abspath(path) in getattr(server_manager_instance, "_servers", {}):
        return False
    lock = path / "LOCK"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _locked_error(path: Path) -> StoreLockedError:
    return StoreLockedError(
        f"The Milvus Lite file {path} is open in another process (only one may use it): "
        "the bot is serving this index; run /reindex in Slack or stop the bot."
    )


def _is_unavailable(error: MilvusException) -> bool:
    """A lost or refused connection (server down, Lite server released), not a bad request."""
    text = str(error).lower()
    return any(marker in text for marker in ("fail connecting", "unavailable", "connection refused", "closed channel"))


def _one_line(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(str(message).split())[:300]


def _has_bm25(info: dict) -> bool:
    """Whether a described collection has the BM25 function filling `sparse`."""
    fields = {f["name"] for f in info.get("fields", [])}
    functions = info.get("functions") or []
    return "sparse" in fields and any(f.get("output_field_names") == ["sparse"] for f in functions)


def _has_field(info: dict, name: str) -> bool:
    return any(f["name"] == name for f in info.get("fields", []))


def _collection_model(info: dict) -> str:
    return _collection_setting(info, MODEL_PROPERTY, "model_id")


def _collection_analyzer(info: dict) -> str:
    return _collection_setting(info, ANALYZER_PROPERTY, "analyzer")


def _collection_setting(info: dict, prop: str, key: str) -> str:
    # Properties where the server keeps them; the schema description otherwise.
    properties = info.get("properties") or {}
    if properties.get(prop):
        return properties[prop]
    try:
        return json.loads(info.get("description") or "{}").get(key, "")
    except (ValueError, AttributeError):
        return ""


def _clip(text: str, limit: int = TEXT_BYTES) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _row(chunk: Chunk, vector: np.ndarray, title_vector: np.ndarray | None = None,
         sentences: str | None = None) -> dict:
    row = {
        "id": chunk.id,
        "vector": vector.tolist(),
        "text": _clip(chunk.text),
        "search_text": _clip(analyze(chunk.search_text)),
        "source": _clip(chunk.source, 2048),
        "source_name": _clip(chunk.source_name, 256),
        "title": _clip(chunk.title, 2048),
        "heading_path": _clip(HEADING_SEPARATOR.join(chunk.heading_path), 8192),
        "anchor": _clip(chunk.anchor, 2048),
        "url": _clip(chunk.url, 4096),
        "ordinal": int(chunk.ordinal),
        "content_hash": chunk.content_hash,
    }
    if title_vector is not None:
        row[TITLE_FIELD] = title_vector.tolist()
    if sentences is not None:
        # Never clipped: a cut base64 string would not decode (evidence.sentences fits it).
        row[SENTENCES_FIELD] = sentences if len(sentences) <= TEXT_BYTES else ""
    return row


def _sentences(row: dict, wanted: bool) -> str | None:
    """The row's packed sentence vectors ("" for a chunk without any), None when not read."""
    return (row.get(SENTENCES_FIELD) or "") if wanted else None


def _chunk(row: dict) -> Chunk:
    path = row.get("heading_path") or ""
    return Chunk(
        id=row["id"],
        source=row["source"],
        title=row["title"],
        heading_path=tuple(path.split(HEADING_SEPARATOR)) if path else (),
        anchor=row["anchor"],
        url=row["url"],
        text=row["text"],
        ordinal=int(row["ordinal"]),
        content_hash=row["content_hash"],
        source_name=row["source_name"],
    )


def _filter(source_names) -> str:
    """A list of names or a SourceFilter -> a Milvus boolean expression on the typed field."""
    wanted = as_source_filter(source_names)
    if wanted is None:
        return ""
    parts = []
    if wanted.only is not None:
        parts.append(f"source_name in {json.dumps(list(wanted.only), ensure_ascii=False)}")
    if wanted.exclude:
        parts.append(f"source_name not in {json.dumps(list(wanted.exclude), ensure_ascii=False)}")
    if wanted.exclude_prefix:
        # A LIKE wildcard in the prefix ("_") only widens what is kept out: safe as it is.
        outside = f"not (source_name like {json.dumps(wanted.exclude_prefix + '%', ensure_ascii=False)})"
        allowed = f" or source_name in {json.dumps(list(wanted.allow), ensure_ascii=False)}" if wanted.allow else ""
        parts.append(f"({outside}{allowed})")
    return " and ".join(parts)


def _as_list(vector) -> list[float]:
    return np.asarray(vector, dtype=np.float32).ravel().tolist()


def _cosine(query: np.ndarray, vector) -> float | None:
    if vector is None:
        return None
    other = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(query) * np.linalg.norm(other))
    return float(query @ other / norm) if norm else 0.0


def _ranked(candidates) -> list[Candidate]:
    ranked = list(candidates)
    for rank, candidate in enumerate(ranked, start=1):
        candidate.rank = rank
    return ranked
