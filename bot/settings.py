"""The bot's settings: the knowledge settings plus Slack and operations.

Read from the environment and `.env` like `KnowledgeSettings`; every field is
listed in `.env.example` with its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from knowledge.settings import KnowledgeSettings

DEFAULT_SUGGESTED_PROMPTS = (
    "What is Milvus Lite and when should I use it?",
    "How do I choose an index type?",
    "Why is my search slower than expected?",
)


class BotSettings(KnowledgeSettings):
    """Everything `supportbot run` needs: knowledge, Slack connection, operations."""

    # Slack connection: an app token selects Socket Mode, else a signing secret
    # selects the HTTP Events API (see bot.server.serve).
    slack_bot_token: SecretStr = SecretStr("")  # xoxb-..., for the Web API
    slack_app_token: SecretStr = SecretStr("")  # xapp-..., for Socket Mode
    slack_signing_secret: SecretStr = SecretStr("")  # verifies HTTP requests from Slack
    slack_api_url: str = "https://slack.com/api/"  # Web API base URL (tests, proxies)
    host: str = "0.0.0.0"  # HTTP mode: the address the server listens on
    port: int = Field(default=3000, ge=0, le=65535)  # HTTP mode: the port
    http_threads: int = Field(default=8, ge=1)  # HTTP mode: waitress request threads

    # Work: answers run in a bounded pool so a burst cannot exhaust the machine.
    bot_workers: int = Field(default=4, ge=1)  # questions answered at the same time
    bot_queue_size: int = Field(default=16, ge=0)  # waiting questions before "busy"

    # Per-person limits (bot.limits); 0 turns a limit off.
    user_rate_per_minute: int = Field(default=6, ge=0)  # questions a person may ask a minute
    user_max_concurrent: int = Field(default=1, ge=0)  # questions of one person answered at once
    user_queue_size: int = Field(default=3, ge=0)  # a person's questions waiting (for their earlier answer or the per-minute limit)

    # Behaviour
    answer_thread_followups: bool = True  # answer replies in threads it answered, no @ needed
    ignore_bot_messages: bool = True  # never answer other bots (avoids bot loops)
    history_max_messages: int = Field(default=12, ge=0)  # earlier thread messages used
    history_max_chars: int = Field(default=6000, ge=0)  # and their total length
    stream_update_interval: float = Field(default=1.0, ge=0.2)  # seconds between chat.update
    placeholder_text: str = "Looking through the docs…"
    suggested_prompts: tuple[str, ...] = DEFAULT_SUGGESTED_PROMPTS  # assistant pane; JSON list
    dedupe_ttl_seconds: float = Field(default=600.0, gt=0)  # how long event ids are kept (bot.state.claims)

    # Team workflows per channel (formats in bot.channels)
    auto_answer_channels: str = ""  # channel ids where every question is answered without a mention
    channel_sources: str = ""  # "C1=docs|faq,*=docs": the sources a channel may draw on; default all
    escalation_contacts: str = ""  # "C1=U1|S2,*=U9": users / user groups tagged by "Ask a human"

    # Who may read which source (bot.access): restricted sources by channel / user group membership
    source_access: str = ""  # "hr=C0HR|S0PEOPLE,legal=C0LEGAL"; sources not listed are open to everyone
    access_cache_seconds: float = Field(default=300.0, ge=0)  # how long Slack memberships are cached

    # Index refresh inside the bot (bot.refresher) and who may ask for one (/reindex)
    reindex_schedule: str = "0 3 * * *"  # crontab, "every 6h", or "never" (see bot.refresher)
    admin_user_ids: str = ""  # comma-separated Slack user ids allowed to /reindex
    admins_from_slack: bool = True  # workspace admins and owners (users.info) may /reindex too

    # Shared state (bot.state): answers, feedback, claims, limits, refresh runs.
    # Empty: a SQLite file DATA_DIR/feedback.sqlite; postgresql://… for several replicas.
    database_url: SecretStr = SecretStr("")
    feedback_db: Path | None = None  # deprecated: a SQLite file; DATABASE_URL wins when both are set
    claim_lease_seconds: float = Field(default=30.0, ge=1)  # a question's claim lapses this long after its replica died
    claim_sweep_seconds: float = Field(default=10.0, gt=0)  # how often each replica looks for lapsed claims
    records_retention_days: float = Field(default=90, ge=0)  # answers and votes older than this are purged; 0 keeps them

    # Learning from threads (bot.learning): a marked reply becomes a saved answer the bot cites
    learn_from_threads: bool = True  # off: no reaction or shortcut saves anything
    resolved_reaction: str = "white_check_mark"  # the emoji name (no colons) that marks a reply as the answer
    learn_review: Literal["auto", "true", "false"] = "auto"  # true: admins approve first; auto: unless an expert marked it

    # Operations
    log_level: str = "INFO"
    log_format: Literal["plain", "json"] = "plain"  # json: one JSON object a line (log shippers)
    log_questions: bool = False  # put question text in logs (else its length and a hash)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # /metrics, /healthz, /readyz; 0: off
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)  # SIGTERM: wait this long for answers in flight

    def database_target(self) -> str:
        """The URL bot.state opens: DATABASE_URL, else FEEDBACK_DB, else DATA_DIR/feedback.sqlite."""
        from bot.state.database import database_url

        value = self.database_url.get_secret_value().strip()
        if not value and self.feedback_db is not None:
            value = str(self.feedback_db)
        url = database_url(value, default_path=self.data_dir / "feedback.sqlite")
        return url.render_as_string(hide_password=False)

    def state_warning(self) -> str:
        """Why replicas of this configuration would not share their state ("" when they would, or
        when the store is a Lite file, which only one process opens anyway)."""
        served = re.match(r"^[a-z][a-z0-9+.-]*://", self.milvus_target, re.IGNORECASE)  # not a Lite file
        if served and self.database_target().startswith("sqlite"):
            return ("MILVUS_URI is a server but DATABASE_URL is not set: this process keeps its claims, limits "
                    "and refresh lease in its own SQLite file, so a second replica would answer every question "
                    "again. Run one replica, or give every replica the same PostgreSQL in DATABASE_URL")
        return ""

    @field_validator("auto_answer_channels", "channel_sources", "escalation_contacts")
    @classmethod
    def _channel_rules(cls, value: str, info) -> str:
        # Fail at start-up, with the entry named, rather than at the first hand-off.
        from bot import channels

        parse = {"auto_answer_channels": channels.parse_channel_ids, "channel_sources": channels.parse_channel_sources,
                 "escalation_contacts": channels.parse_escalation_contacts}[info.field_name]
        parse(value)
        return value

    @field_validator("feedback_db", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("source_access")
    @classmethod
    def _source_access(cls, value: str) -> str:
        from bot.access import parse_source_access

        parse_source_access(value)
        return value

    @field_validator("learn_review", mode="before")
    @classmethod
    def _tri_state(cls, value):
        if isinstance(value, bool):
            return "true" if value else "false"
        value = str(value).strip().lower()
        return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(value, value)

    @field_validator("resolved_reaction")
    @classmethod
    def _emoji_name(cls, value: str) -> str:
        value = value.strip().strip(":")
        if not value:
            raise ValueError("RESOLVED_REACTION needs an emoji name, e.g. white_check_mark")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk joins base_url + method name, so the slash is required.
        value = value.strip() or "https://slack.com/api/"
        return value if value.endswith("/") else value + "/"
