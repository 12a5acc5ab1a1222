"""Ingestion, retrieval, reranking and answering over a team's documentation.

Nothing in this package knows about Slack; `bot` builds on it.
"""
