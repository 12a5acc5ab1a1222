"""The `supportbot` command line through its real entry point: index, ask, eval, bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import build_parser, main
from knowledge.abstention import AbstentionModel

COMMANDS = ("index", "ask", "eval", "chat", "serve", "run", "feedback", "bench")


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() installs its log handler on the root logger; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli_env(monkeypatch, tmp_path, small_corpus, tiny_embedder_path, tiny_reranker_path, fake_openai):
    """Settings for the CLI in the environment (no .env is read: the cwd is empty)."""
    monkeypatch.chdir(tmp_path)
    env = {
        "KNOWLEDGE_SOURCES": str(small_corpus),
        "EMBEDDING_MODEL": str(tiny_embedder_path),
        "RERANKER_MODEL": str(tiny_reranker_path),
        "DATA_DIR": str(tmp_path / "data"),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_API_KEY": "test-key",
        "OPENAI_MAX_RETRIES": "0",
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "ABSTAIN_THRESHOLD": "0",
        "ABSTAIN_DENSE_THRESHOLD": "-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("supportbot:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "usage: supportbot " + command in capsys.readouterr().out


def test_index_ask_eval(cli_env, capsys, fake_openai, dev_set, tmp_path):
    code, out, _ = run(capsys, "index", "--json")
    assert code == 0
    first = json.loads(out)
    assert set(first) == {"documents", "chunks", "added", "updated", "deleted", "unchanged", "seconds",
                          "failed", "problems"}
    assert (first["failed"], first["problems"]) == ({}, {})
    assert first["documents"] == 1 and first["chunks"] == first["added"] > 10

    code, out, _ = run(capsys, "index", "--json")  # nothing changed: nothing embedded
    again = json.loads(out)
    assert (again["added"], again["updated"], again["deleted"], again["unchanged"]) == (0, 0, 0, first["chunks"])

    code, out, _ = run(capsys, "index")
    assert code == 0 and "chunks" in out and "unchanged" in out
    assert "chunks/s" not in out  # nothing was embedded: no rate

    fake_openai.reply("Milvus keeps inserted data in object storage [1].")
    code, out, _ = run(capsys, "ask", "How is data stored in milvus?", "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["status"] == "answered" and answer["model_failed"] is False
    assert answer["answer"] == "Milvus keeps inserted data in object storage [1]."
    assert [c["number"] for c in answer["citations"]] == [1]
    # DOCS_BASE_URL unset and sources of one's own: citations link to the file itself.
    own_file = Path(cli_env["KNOWLEDGE_SOURCES"]).resolve().as_uri() + "/faq/product_faq.md#"
    assert answer["citations"][0]["url"].startswith(own_file)
    assert len(answer["candidates"]) == 10
    for candidate in answer["candidates"]:
        assert {"source", "heading_path", "text", "dense_score", "rerank_score", "rank"} <= candidate.keys()
        assert candidate["source"] == "faq/product_faq.md"
    assert [c["rank"] for c in answer["candidates"]] == list(range(1, 11))
    assert {"embed", "search", "rerank", "model", "total"} <= answer["timings_ms"].keys()
    request = fake_openai.requests[-1]
    assert "How is data stored in milvus?" in request["messages"][-1]["content"]

    fake_openai.reply("Data goes to object storage [1].\n\nMetadata goes to etcd [1].")
    code, out, _ = run(capsys, "ask", "How is data stored in milvus?")
    assert code == 0 and "Sources:" in out and "[1]" in out
    assert out.count("Data goes to object storage [1].") == 1  # streamed once, not printed again
    assert out.count("Metadata goes to etcd [1].") == 1

    # What streams is what is kept: no invented marker, no escape sequence reaches the terminal.
    fake_openai.reply("Data lives in object storage [7]. Metadata in etcd [1][0].\x1b]0;pwned\x07\x1b[2J Done [1].")
    code, out, _ = run(capsys, "ask", "How is data stored in milvus?")
    assert code == 0 and out.startswith("Data lives in object storage. Metadata in etcd [1]. Done [1].\n")
    assert "\x1b" not in out and "\x07" not in out and "pwned" not in out

    # The model fails: the passages are still printed, and the exit status says it failed.
    fake_openai.fail(500)
    code, out, _ = run(capsys, "ask", "How is data stored in milvus?")
    assert code == 1 and "Sources:" in out and "[1]" in out
    fake_openai.fail(500)
    code, out, _ = run(capsys, "ask", "How is data stored in milvus?", "--json")
    failed = json.loads(out)
    assert code == 1 and failed["model_failed"] is True and failed["status"] == "retrieval_only"
    assert failed["note"] and failed["citations"]

    code, out, _ = run(capsys, "eval", str(dev_set), "--json")
    assert code == 0
    figures = json.loads(out)
    assert {"n", "recall@10", "recall@3", "mrr@10", "abstain_correct", "false_abstain",
            "by_lang", "misses"} <= figures.keys()
    assert figures["n"] == sum(1 for line in dev_set.read_text().splitlines() if line.strip())
    assert set(figures["by_lang"]) == {"en", "zh"}

    # The abstention model: fitted on the files' answerable and unanswerable items (the dev
    # set and the unanswerable tuning questions together), saved, used.
    # `--fit-abstention` is a flag: the file after it is an eval input, never where the model goes.
    tuning = Path(__file__).parents[1] / "docs" / "eval" / "abstention-tuning.jsonl"
    dev_copy = tmp_path / "dev.jsonl"
    dev_copy.write_bytes(dev_set.read_bytes())
    code, out, _ = run(capsys, "eval", "--fit-abstention", str(dev_copy), str(tuning), "--no-rerank")
    assert code == 0 and "Abstention model (dense scores" in out
    assert dev_copy.read_bytes() == dev_set.read_bytes()
    saved = tmp_path / "data" / "abstention.json"
    assert f"Saved to {saved}, the file the bot reads" in out
    model = AbstentionModel.load(saved)
    assert model.score == "dense" and model.features[0] == "dense_top"
    assert model.declined_unanswerable.endswith("/15") and model.false_abstain <= 0.10
    assert model.fitted_on == f"{dev_copy} + {tuning}"
    assert model.describe() in out

    # Elsewhere on request (the message says how the bot would use it), never over an eval file.
    small = tmp_path / "small.jsonl"
    small.write_text("".join(dev_set.read_text().splitlines(keepends=True)[:6])
                     + "".join(tuning.read_text().splitlines(keepends=True)[:4]))
    other = tmp_path / "other.json"
    code, out, _ = run(capsys, "eval", str(small), "--no-rerank", "--fit-abstention", "--save-to", str(other))
    assert code == 0 and other.exists() and f"set ABSTENTION_MODEL={other}" in out
    for target in (small, dev_set):
        before = target.read_bytes()
        code, _, err = run(capsys, "eval", str(small), "--fit-abstention", "--save-to", str(target))
        assert_one_line_error(code, err, "--save-to", str(target))
        assert code == 2 and target.read_bytes() == before


def test_ask_without_an_api_key_is_retrieval_only(cli_env, capsys, monkeypatch, fake_openai):
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("RERANKER_MODEL", "none")
    assert run(capsys, "index")[0] == 0
    code, out, _ = run(capsys, "ask", "Where does Milvus store data?")
    assert code == 0
    assert "OPENAI_API_KEY" in out and "/faq/product_faq.md#" in out and "milvus.io" not in out
    assert fake_openai.requests == []


@pytest.mark.parametrize("question, fragment", [("   ", "empty"), ("x" * 2001, "too long")])
def test_bad_question_is_one_line(cli_env, capsys, question, fragment):
    assert run(capsys, "index")[0] == 0
    code, _, err = run(capsys, "ask", question)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_ask_and_eval_before_any_index_say_so(cli_env, capsys, dev_set, fake_openai, command):
    """Never indexed: not "the docs don't cover this" with exit 0, but what to run first."""
    argv = ["ask", "How is data stored?"] if command == "ask" else ["eval", str(dev_set)]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, "index is empty", "supportbot index")
    assert code == 1 and out == "" and fake_openai.requests == []


@pytest.mark.parametrize("argv, fragment", [
    (["feedback", "--limit", "-5"], "not a positive number"),
    (["answers", "list", "extra"], "takes no ID"),
])
def test_bad_arguments_are_usage_errors(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and fragment in capsys.readouterr().err


def test_interrupted_index_says_how_to_finish(cli_env, capsys, monkeypatch):
    from knowledge.pipeline import KnowledgeBase

    def interrupted(self, **_options):
        raise KeyboardInterrupt  # Ctrl-C while it works (a real signal would race a quick index)

    monkeypatch.setattr(KnowledgeBase, "refresh", interrupted)
    code, _, err = run(capsys, "index")
    assert code == 130 and "interrupted: run `supportbot index` again" in err


def test_eval_of_a_file_without_items_says_so(cli_env, capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, out, err = run(capsys, "eval", str(empty))
    assert_one_line_error(code, err, "No eval items", str(empty))
    assert out == ""


def test_output_into_a_closed_pipe_ends_quietly(cli_env, tmp_path):
    """`supportbot … | head -1`: the reader went away; no BrokenPipeError traceback."""
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "feedback"], cwd=tmp_path,
                               env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before anything was written
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception ignored" not in err


def test_missing_model_path_is_one_line_at_once(cli_env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDDING_MODEL", str(tmp_path / "no-such-model"))
    started = time.monotonic()
    code, _, err = run(capsys, "index")
    assert time.monotonic() - started < 10
    assert_one_line_error(code, err, "no-such-model", "EMBEDDING_MODEL")


def test_uncached_hub_model_is_one_line_at_once(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("RERANKER_MODEL", "Qwen/Qwen3-Reranker-0.6B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    code, _, err = run(capsys, "ask", "anything")
    assert time.monotonic() - started < 15
    assert_one_line_error(code, err, "Qwen/Qwen3-Reranker-0.6B", "RERANKER_MODEL")


def test_unreachable_milvus_uri_is_one_line(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("MILVUS_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    code, _, err = run(capsys, "index")
    assert_one_line_error(code, err, "127.0.0.1:9")


@pytest.mark.parametrize(("command", "uri"), [
    *((command, "http://127.0.0.1:9") for command in ("index", "ask", "eval", "chat")),
    ("ask", "https://127.0.0.1:9"),  # a Zilliz-style URI
])
def test_unreachable_milvus_is_reported_before_any_model_loads(cli_env, capsys, monkeypatch, tmp_path, dev_set,
                                                                 command, uri):
    """Loading the models takes seconds to a minute: a store that cannot be reached is said first.
    The models' paths do not exist, so loading either would fail with its own error instead."""
    monkeypatch.setenv("MILVUS_URI", uri)
    monkeypatch.setenv("EMBEDDING_MODEL", str(tmp_path / "no-such-embedder"))
    monkeypatch.setenv("RERANKER_MODEL", str(tmp_path / "no-such-reranker"))
    argv = {"index": ["index"], "ask": ["ask", "How is data stored?"], "eval": ["eval", str(dev_set)],
            "chat": ["chat"]}[command]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, "Cannot open Milvus at", uri)
    assert code == 1 and out == "" and "no-such" not in err


@pytest.mark.parametrize("kind", ["missing", "empty", "bad-zip"])
def test_bad_sources_are_one_line(cli_env, capsys, monkeypatch, tmp_path, kind):
    if kind == "missing":
        location, fragment = tmp_path / "nowhere", "nowhere"
    elif kind == "empty":
        location = tmp_path / "empty-folder"
        location.mkdir()
        fragment = "empty-folder"
    else:
        location = tmp_path / "docs.zip"
        location.write_bytes(b"this is not a zip file")
        fragment = "docs.zip"
    monkeypatch.setenv("KNOWLEDGE_SOURCES", str(location))
    code, _, err = run(capsys, "index")
    assert_one_line_error(code, err, fragment)


def test_invalid_setting_is_one_line(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_TOP_K", "zero")
    code, _, err = run(capsys, "index")
    assert code == 2 and "RETRIEVE_TOP_K" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["json-in-environment", "json-in-env-file", "not-utf8-env-file", "missing-env-file"])
def test_unreadable_settings_are_one_line(cli_env, capsys, monkeypatch, tmp_path, case):
    """Settings that cannot even be parsed: one line naming the setting or file, exit 2, never a traceback."""
    env_file = tmp_path / "bot.env"
    if case == "json-in-environment":
        monkeypatch.setenv("SUGGESTED_PROMPTS", "[not json")
        env_file.write_text("# nothing here\n")
        fragments = ("SUGGESTED_PROMPTS", "not valid JSON")
    elif case == "json-in-env-file":
        env_file.write_text("SUGGESTED_PROMPTS=[not json\n")
        fragments = ("SUGGESTED_PROMPTS", str(env_file), "not valid JSON")
    elif case == "not-utf8-env-file":
        env_file.write_bytes(b"LOG_LEVEL=INFO\nOPENAI_MODEL=fake \xff\xfe binary\n")
        fragments = (str(env_file), "UTF-8", "0xff", "line 2")
    else:
        env_file = tmp_path / "missing.env"
        fragments = (str(env_file), "no such file")
    code, out, err = run(capsys, "--env-file", str(env_file), "feedback")
    assert_one_line_error(code, err, "invalid settings", *fragments)
    assert code == 2 and out == ""


def test_misspelled_setting_is_named(cli_env, capsys, tmp_path, monkeypatch):
    """A .env line or an environment variable (docker compose passes .env so) close to a setting's
    name is ignored by the settings, so the CLI says so; another tool's variable is left alone."""
    env_file = tmp_path / "bot.env"
    env_file.write_text("export LOG_LEVL=DEBUG\nHF_HUB_OFFLINE=1\nnot a setting line\nLOG_LEVEL=INFO\n")
    monkeypatch.setenv("MILVUS_URL", "http://127.0.0.1:19530")
    monkeypatch.setenv("MILVUS_USER", "root")  # close, but another setting is meant (MILVUS_TOKEN)
    code, _, err = run(capsys, "--env-file", str(env_file), "feedback")
    assert code == 0
    warnings = sorted(line for line in err.splitlines() if "is not a setting" in line)
    assert len(warnings) == 2, err
    assert "LOG_LEVL" in warnings[0] and "did you mean LOG_LEVEL?" in warnings[0]
    assert "MILVUS_URL" in warnings[1] and "did you mean MILVUS_URI?" in warnings[1]
    assert "HF_HUB_OFFLINE" not in err and "MILVUS_USER" not in err
    assert err.count("could not parse") <= 1  # the malformed line: python-dotenv's own word, once


def test_console_script_reports_without_traceback(cli_env, tmp_path):
    """The installed `supportbot` script itself: a bad zip is one line on stderr, exit 1."""
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    script = Path(sys.executable).with_name("supportbot")
    env = {**os.environ, "KNOWLEDGE_SOURCES": str(bad)}
    result = subprocess.run([str(script), "index"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("supportbot:")] == [
        line for line in result.stderr.splitlines() if "bad.zip" in line
    ]


def test_bench_runs_the_benchmark_package_from_the_command(cli_env, capsys, tmp_path):
    """`bench` loads benchmarks/ inside the command (the runtime never imports it): a missing corpus is one line."""
    code, _, err = run(capsys, "bench", "--corpus", str(tmp_path / "nowhere"), "--quick")
    assert_one_line_error(code, err, "nowhere", "does not exist")


def stale_keyword_kb(make_kb, monkeypatch):
    """A KnowledgeBase over an index whose keywords an older version analysed."""
    from knowledge.pipeline import KnowledgeBase
    from tests.fixtures.milvus import release_lite

    with monkeypatch.context() as patch:
        patch.setattr("knowledge.store.ANALYZER_VERSION", "snowball-english-0")
        old = make_kb(reranker=False, api_key="")
        settings = old.settings
        old.close()
        release_lite(settings.milvus_target)  # what the old process's exit does
    return KnowledgeBase.from_settings(settings)


def test_an_index_with_older_keywords_serves_at_once_and_serve_rebuilds_it(
    make_kb, monkeypatch, fake_slack, tmp_path
):
    import threading
    import time

    from bot.cli import _ensure_index
    from bot.server import serve
    from bot.settings import BotSettings
    from tests.fixtures.milvus import release_lite

    kb = stale_keyword_kb(make_kb, monkeypatch)
    try:
        status = kb.status()
        assert "older version" in status["rebuild_reason"] and status["serves_until_rebuilt"]
        _ensure_index(kb, progress=False)  # no blocking rebuild: it answers meanwhile
        assert kb.status()["rebuild_reason"] and kb.status()["last_refresh"] is None
        assert kb.retriever.retrieve("How is data stored?").candidates_top_k

        settings = BotSettings(
            _env_file=None, slack_bot_token=fake_slack.bot_token, slack_app_token=fake_slack.app_token,
            slack_api_url=fake_slack.api_url, feedback_db=tmp_path / "feedback.sqlite",
            reindex_schedule="never", metrics_port=0,
        )
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings, kb), kwargs={"stop": stop}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while kb.status()["rebuild_reason"] and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        thread.join(timeout=60)
        status = kb.status()
        assert status["rebuild_reason"] == "" and status["last_refresh"]["rebuilt"]
        assert kb.retriever.store.supports_hybrid
    finally:
        kb.close()
        release_lite(kb.settings.milvus_target)
