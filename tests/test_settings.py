"""Settings: one typed place, every field documented in .env.example."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import BotSettings
from knowledge.settings import KnowledgeSettings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def _documented() -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment lines right above it) from .env.example."""
    found: dict[str, tuple[str, str]] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comment.append(line)
            continue
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), "\n".join(comment))
            # Consecutive settings may share one comment block.
            continue
        comment = []
    return found


def test_every_setting_is_in_env_example_with_a_comment():
    documented = _documented()
    fields = {name.upper() for name in BotSettings.model_fields}
    missing = sorted(fields - documented.keys())
    assert not missing, f"add to .env.example: {missing}"
    uncommented = sorted(name for name in fields if not documented[name][1].strip())
    assert not uncommented, f"give these a comment in .env.example: {uncommented}"
    unknown = sorted(documented.keys() - fields)
    assert not unknown, f".env.example lists settings that do not exist: {unknown}"


def test_env_example_defaults_match_the_code(tmp_path, monkeypatch):
    """Loading .env.example as it is gives exactly the built-in defaults."""
    for name in BotSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    from_file = BotSettings(_env_file=ENV_EXAMPLE)
    defaults = BotSettings(_env_file=None)
    assert from_file.model_dump() == defaults.model_dump()


def test_reranker_none_turns_reranking_off(monkeypatch):
    monkeypatch.setenv("RERANKER_MODEL", "none")
    settings = KnowledgeSettings(_env_file=None)
    assert not settings.reranking and settings.reranker_model == ""


def test_lite_file_lives_under_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MILVUS_URI", raising=False)
    assert KnowledgeSettings(_env_file=None).milvus_target == str(tmp_path / "milvus.db")


def test_bad_value_is_a_validation_error(monkeypatch):
    monkeypatch.setenv("RETRIEVE_TOP_K", "0")
    with pytest.raises(ValidationError):
        KnowledgeSettings(_env_file=None)


def test_data_dir_defaults_to_the_per_user_folder_wherever_the_bot_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    places = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        places.append(KnowledgeSettings().data_dir)
    assert places[0] == places[1] == tmp_path / "xdg" / "supportbot"
    monkeypatch.setenv("DATA_DIR", "  ")
    assert KnowledgeSettings().data_dir == tmp_path / "xdg" / "supportbot"  # empty, as in .env.example
    monkeypatch.setenv("DATA_DIR", "~/bot-data")
    assert KnowledgeSettings().data_dir == Path("~/bot-data").expanduser()


def test_a_milvus_server_without_a_shared_database_is_warned_about(tmp_path):
    """Replicas on one Milvus server, each with its own SQLite state, would all answer every question."""
    def warning(**values) -> str:
        return BotSettings(_env_file=None, data_dir=tmp_path, **values).state_warning()

    assert "DATABASE_URL is not set" in warning(milvus_uri="http://127.0.0.1:19530")
    assert "DATABASE_URL is not set" in warning(milvus_uri="https://in01-x.zillizcloud.com", feedback_db=tmp_path / "f.db")
    assert warning(milvus_uri="http://127.0.0.1:19530", database_url="postgresql://bot:pw@127.0.0.1/bot") == ""
    assert warning() == "" and warning(milvus_uri=str(tmp_path / "milvus.db")) == ""  # Lite: one process anyway
