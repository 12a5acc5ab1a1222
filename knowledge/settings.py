"""The knowledge layer's settings, read from the environment and `.env`.

`bot.settings.BotSettings` extends this class with the Slack settings, so the
whole product is configured in one typed place. Every field is listed in
`.env.example` with a comment and its default.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import platformdirs
from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SOURCES = (
    "https://github.com/milvus-io/milvus-docs/releases/download/v2.4.6-preview/"
    "milvus_docs_2.4.x_en.zip::en/faq/*.md"
)
DEFAULT_DOCS_BASE_URL = "https://milvus.io/docs/{stem}.md#{anchor}"
DEFAULT_RERANK_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)


def default_data_dir() -> Path:
    """The per-user data folder (~/.local/share/supportbot on Linux): the same index, state and
    downloads wherever the bot is started from."""
    return Path(platformdirs.user_data_dir("supportbot", appauthor=False))


class KnowledgeSettings(BaseSettings):
    """Where the documents come from, which models read them, where vectors live."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Sources and chunking
    knowledge_sources: str = DEFAULT_SOURCES
    # Empty: the Milvus docs' links for the default source, else each document's own location.
    docs_base_url: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)  # empty: default_data_dir()
    chunk_max_tokens: int = Field(default=350, ge=32)
    chunk_overlap_tokens: int = Field(default=40, ge=0)
    chunk_min_tokens: int = Field(default=40, ge=0)

    # Reading sources (knowledge.sources): download guards and website crawling
    source_allow_http: bool = False  # plain http to non-loopback hosts (https only otherwise)
    source_max_download_mb: float = Field(default=200.0, gt=0)  # one download: zip, PDF, page
    source_max_file_mb: float = Field(default=50.0, gt=0)  # one file of a folder or zip, unpacked
    source_max_zip_ratio: float = Field(default=100.0, ge=1)  # unpacked / compressed size of a zip member
    source_download_deadline_seconds: float = Field(default=300.0, gt=0)  # one download (or git command)
    source_request_timeout_seconds: float = Field(default=30.0, gt=0)  # connect / read of one request
    crawl_max_pages: int = Field(default=500, ge=1)  # pages read from one website
    crawl_delay_seconds: float = Field(default=0.5, ge=0)  # between requests to one site (robots.txt may ask more)
    source_user_agent: str = "supportbot-docs-indexer/1.0 (reads team docs to answer questions in Slack)"

    # Models
    embedding_model: str = "Qwen/Qwen3-Embedding-0.6B"
    embedding_batch_size: int = Field(default=32, ge=1)  # texts per forward pass, at most
    embedding_batch_tokens: int = Field(default=1024, ge=16)  # padded tokens per pass (measured best)
    reranker_model: str = "Qwen/Qwen3-Reranker-0.6B"  # "none" turns reranking off
    rerank_instruction: str = DEFAULT_RERANK_INSTRUCTION
    rerank_max_tokens: int = Field(default=512, ge=16)
    rerank_batch_size: int = Field(default=4, ge=1)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int = Field(default=0, ge=0)  # per model call; 0 with model_calls 0: shared by questions in flight

    # Speed on any CPU (docs/performance.md): threads sized together, a latency budget for reranking
    model_calls: int = Field(default=0, ge=0)  # forward passes at once; 0: cores / torch_threads (shared when both 0)
    answer_budget_ms: float = Field(default=1500.0, ge=0)  # embed + search + rerank; 0: always rerank all
    rerank_skip_when_sure: bool = True  # dense and keyword search agree clearly: rerank only the first
    reranker_int8: bool = False  # CPU: int8 linear layers (1.77x faster here; off until checked on the real model)

    # Model servers (knowledge/model_servers.py): empty URLs run the models in this process.
    embedding_base_url: str = ""  # OpenAI-style POST {base}/embeddings, e.g. http://vllm-embed:8000/v1
    embedding_api_key: SecretStr = SecretStr("")
    reranker_base_url: str = ""  # Cohere-style POST {base}/rerank, e.g. http://vllm-rerank:8000/v1
    reranker_api_key: SecretStr = SecretStr("")
    reranker_template: Literal["auto", "qwen3", "none"] = "auto"  # auto: qwen3 when the name says so
    model_server_timeout: float = Field(default=30.0, gt=0)
    model_server_max_retries: int = Field(default=2, ge=0)
    model_server_breaker_failures: int = Field(default=3, ge=0)  # 0: never pause a failing server
    model_server_breaker_cooldown: float = Field(default=30.0, ge=0)

    # Store
    milvus_uri: str = ""  # empty: a Milvus Lite file under DATA_DIR; a path: that Lite file
    milvus_token: SecretStr = SecretStr("")
    milvus_collection: str = "support_docs"

    # Retrieval
    retrieval_mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    fusion: Literal["rrf", "weighted"] = "weighted"
    rrf_k: int = Field(default=60, ge=1)
    dense_weight: float = Field(default=0.6, ge=0)
    bm25_weight: float = Field(default=0.4, ge=0)
    retrieve_top_k: int = Field(default=10, ge=1, le=200)
    rerank_top_n: int = Field(default=3, ge=1, le=50)
    abstain_threshold: float = Field(default=0.2, ge=0, le=1)  # on the best rerank score
    abstain_dense_threshold: float = Field(default=0.3, ge=-1, le=1)  # with reranking off
    max_question_chars: int = Field(default=2000, ge=10)

    # Section structure, expansion and abstention (docs/answer-quality.md)
    title_weight: float = Field(default=0.3, ge=0)  # the section-title vector in hybrid fusion; 0: off
    query_expansion: bool = True  # add the docs' heading words for the question's topic to BM25
    expansion_terms: int = Field(default=2, ge=0, le=20)
    # Sentence evidence (knowledge.evidence): every sentence embedded at index time; hybrid
    # search re-orders its candidates by their best sentence too, with this weight (0: off).
    sentence_vectors: bool = True
    sentence_weight: float = Field(default=1.0, ge=0)
    doc_rewrite: bool = False  # with a chat model: also search the question restated in doc words
    abstention_model: str = ""  # fitted by `supportbot eval --fit-abstention`; "": DATA_DIR/abstention.json

    # Answering
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    openai_model: str = "gpt-4o"
    openai_timeout: float = Field(default=60.0, gt=0)
    openai_max_retries: int = Field(default=2, ge=0)
    answer_max_tokens: int = Field(default=800, ge=16)
    history_max_tokens: int = Field(default=1500, ge=0)

    # Language model outages (knowledge/breaker.py): after this many failures in a row the
    # model is not called for the cool-down (answers are passages at once); 0 never pauses it.
    answer_breaker_failures: int = Field(default=3, ge=0)
    answer_breaker_cooldown: float = Field(default=30.0, ge=0)  # seconds until one question probes it

    # Languages (knowledge/language.py): the languages questions are recognised in, as
    # ISO 639-1 codes; an answer follows its question's language, whichever it is.
    answer_languages: str = "en,zh,ja,ko,fr,de,es,pt,it,ru"

    @field_validator("answer_languages")
    @classmethod
    def _known_languages(cls, value: str) -> str:
        from knowledge.language import LanguageDetector

        LanguageDetector(languages=value.split(","))  # raises ValueError naming an unknown code
        return value

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(code.strip().lower() for code in self.answer_languages.split(",") if code.strip())

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value):
        if value is None or not str(value).strip():
            return default_data_dir()
        return Path(str(value).strip()).expanduser()

    @field_validator("reranker_model")
    @classmethod
    def _normalise_none(cls, value: str) -> str:
        return "" if value.strip().lower() in {"", "none", "off", "false"} else value.strip()

    @property
    def reranking(self) -> bool:
        return bool(self.reranker_model)

    @property
    def embeds_sentences(self) -> bool:
        """Whether the index should hold every sentence's vectors: only hybrid search reads them
        (knowledge.retriever), so dense or BM25 alone would pay for nothing."""
        return self.sentence_vectors and self.retrieval_mode == "hybrid"

    @field_validator("milvus_uri")
    @classmethod
    def _expand_lite_path(cls, value: str) -> str:
        # "~/milvus.db" means the home folder, as in a shell; URLs are left as they are.
        value = value.strip()
        return str(Path(value).expanduser()) if value.startswith("~") else value

    @property
    def milvus_target(self) -> str:
        """The URI pymilvus opens: the configured server, the configured Lite file, or DATA_DIR's."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def citation_template(self) -> str:
        """The link template chunks use: DOCS_BASE_URL, the Milvus docs' for the default source, or ""
        (each document's own location: its file or page)."""
        if self.docs_base_url.strip():
            return self.docs_base_url.strip()
        return DEFAULT_DOCS_BASE_URL if self.knowledge_sources == DEFAULT_SOURCES else ""

    def citation_warning(self) -> str:
        """Why citations probably point at the wrong place ("" when they look right)."""
        if "milvus.io" in self.docs_base_url and self.knowledge_sources != DEFAULT_SOURCES:
            return ("DOCS_BASE_URL links citations to milvus.io while KNOWLEDGE_SOURCES is your own: "
                    "set DOCS_BASE_URL to where your docs live, or leave it empty to link each file or page")
        return ""

    @property
    def abstention_model_path(self) -> Path:
        return Path(self.abstention_model) if self.abstention_model else self.data_dir / "abstention.json"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def misspelled_settings(settings_class: type[BaseSettings], env_file: str | Path,
                        environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, the setting it probably means) for each name that is no setting of `settings_class`
    but close to one (MILVUS_URL for MILVUS_URI): such a line is otherwise ignored without a word.

    Read from `env_file` (every name) and from `environ` (names that start like a setting, as
    SLACK_… or MILVUS_…: docker compose passes .env as environment). Names close to no setting
    are left alone (another tool's, like HF_HUB_OFFLINE). A missing or unreadable file gives
    nothing (loading the settings reports that).
    """
    known = {name.upper() for name in settings_class.model_fields}
    try:
        text = Path(env_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    # The parser itself, not dotenv_values: that logs each malformed line a second time.
    names = [binding.key.strip() for binding in parse_stream(io.StringIO(text)) if binding.key]
    prefixes = {name.split("_", 1)[0] + "_" for name in known if "_" in name}
    names += [name for name in (environ or {}) if name.upper().startswith(tuple(prefixes))]
    found: dict[str, str] = {}
    for name in names:
        upper = name.upper()
        if not upper or upper in known or name in found:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.88)  # not MILVUS_USER → MILVUS_URI
        if close:
            found[name] = close[0]
    return list(found.items())
