"""MILVUS_URI=./milvus.db (pymilvus's own Milvus Lite convention) works from the environment
and from .env, and a store that cannot be opened is one line on stderr, never a traceback.

pymilvus parses MILVUS_URI when imported, after loading the nearest .env (found from the
working directory when the program has no __file__, as under `python -c`, a debugger or a
notebook; from the virtualenv's folder up otherwise, i.e. the project's .env for `make run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `python -c`: no __main__.__file__, so python-dotenv (inside pymilvus) looks for .env from the cwd.
CLI = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cli_env(small_corpus, tiny_embedder_path):
    """Settings for a CLI subprocess; MILVUS_URI is left to each test."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MILVUS")}
    env.update(
        PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        KNOWLEDGE_SOURCES=str(small_corpus), EMBEDDING_MODEL=str(tiny_embedder_path), RERANKER_MODEL="none",
        DEVICE="cpu", DTYPE="float32", DOCS_BASE_URL="https://docs.example/{stem}#{anchor}", OPENAI_API_KEY="",
    )
    return env


def _run(args: list[str], *, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _indexed(result: subprocess.CompletedProcess, cwd: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["chunks"] > 0
    assert (cwd / "milvus.db").exists()  # the Lite file is where MILVUS_URI says, not under DATA_DIR
    assert not (cwd / "data" / "milvus.db").exists()


def test_a_lite_path_in_the_environment(tmp_path, cli_env):
    result = _run(["index", "--json"], cwd=tmp_path, env={**cli_env, "MILVUS_URI": "./milvus.db"})
    _indexed(result, tmp_path)


def test_a_lite_path_in_dot_env(tmp_path, cli_env):
    (tmp_path / ".env").write_text("MILVUS_URI=./milvus.db\n", encoding="utf-8")
    result = _run(["index", "--json"], cwd=tmp_path, env=cli_env)
    _indexed(result, tmp_path)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./milvus", "must end in .db"),  # a folder-like path: pymilvus would refuse it obscurely
        ("./a-file/milvus.db", "Cannot create the folder"),  # its folder is a file
    ],
)
def test_a_store_that_cannot_open_says_why_in_one_line(tmp_path, monkeypatch, uri, expected):
    from knowledge.errors import StoreUnavailableError
    from knowledge.store import VectorStore

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    with pytest.raises(StoreUnavailableError, match=expected) as raised:
        VectorStore(uri=uri, collection="docs", dimension=8)
    assert "\n" not in str(raised.value) and raised.value.__cause__ is None
