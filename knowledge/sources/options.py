"""What every source reader is allowed to do: caps, deadlines, crawl manners, where to cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER_AGENT = "supportbot-docs-indexer/1.0 (+https://github.com/; reads docs to answer questions in Slack)"


@dataclass(frozen=True)
class FetchOptions:
    """Limits shared by the readers; `from_settings` reads them from KnowledgeSettings."""

    cache_dir: Path
    allow_http: bool = False  # plain http to hosts other than loopback
    max_download_bytes: int = 200 * 1024 * 1024  # one download (zip, PDF, page)
    max_file_bytes: int = 50 * 1024 * 1024  # one file in a folder or zip, unpacked
    max_zip_ratio: float = 100.0  # unpacked / compressed, per zip member
    download_deadline: float = 300.0  # seconds for one download, start to end
    request_timeout: float = 30.0  # connect / read timeout of one request
    crawl_max_pages: int = 500
    crawl_delay: float = 0.5  # seconds between requests to one site
    user_agent: str = DEFAULT_USER_AGENT

    @classmethod
    def from_settings(cls, settings) -> FetchOptions:
        return cls(
            cache_dir=Path(settings.cache_dir),
            allow_http=settings.source_allow_http,
            max_download_bytes=int(settings.source_max_download_mb * 1024 * 1024),
            max_file_bytes=int(settings.source_max_file_mb * 1024 * 1024),
            max_zip_ratio=settings.source_max_zip_ratio,
            download_deadline=settings.source_download_deadline_seconds,
            request_timeout=settings.source_request_timeout_seconds,
            crawl_max_pages=settings.crawl_max_pages,
            crawl_delay=settings.crawl_delay_seconds,
            user_agent=settings.source_user_agent,
        )
