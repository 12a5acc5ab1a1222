"""Server URLs as people see them (logs, /readyz, Slack): without the user:password part."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def without_credentials(url: str) -> str:
    """`url` without user and password (the URL unchanged when it has none or does not parse)."""
    try:
        parts = urlsplit(url)
        if not (parts.username or parts.password):
            return url
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a bad port: show nothing that might be a password
        return url.split("@", 1)[-1] if "@" in url else url
    return urlunsplit(parts._replace(netloc=(parts.hostname or "") + port))
