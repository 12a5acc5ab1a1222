"""Shared test set-up: never reach the network, register the fixture plugins."""

import os

# Loading a model by hub name would retry for a minute; tests use local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(autouse=True)
def _own_user_data_dir(tmp_path_factory, monkeypatch):
    """DATA_DIR's default is the per-user data folder: each test (and its subprocesses) gets its own."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


pytest_plugins = [
    "tests.fixtures.paths",
    "tests.fixtures.models",
    "tests.fixtures.milvus",
    "tests.fixtures.openai_fake",
    "tests.fixtures.knowledge",
    "tests.fixtures.slack_fake",
    "tests.fixtures.postgres",
    "tests.fixtures.model_server_fake",
]
