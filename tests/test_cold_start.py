"""The first index, built once across replicas: `supportbot serve` start-ups (and `supportbot
index`) on one empty index and one state database (SQLite file or PostgreSQL via pgserver)
take the replicas' refresh lease, so one embeds the corpus and the others wait for it and
serve what it built; a builder that dies or fails is taken over. And the serving alias when
two processes create it at the same moment (knowledge/store.py)."""

from __future__ import annotations

import argparse
import logging
import threading
import time

import pytest

from bot import cli, refresher
from bot.refresher import RefreshWaitError, refresh_under_lease
from bot.state import Database, database_url
from bot.state.refresh_runs import DIED, RefreshRuns
from bot.state.tables import refresh_runs

EMBED_DELAY = 0.2  # seconds per embedding call: a build long enough for the other start-up to see it run


@pytest.fixture(autouse=True)
def _quick_polls(monkeypatch):
    monkeypatch.setattr(refresher, "LEASE_POLL_SECONDS", 0.05)
    monkeypatch.setattr(refresher, "SETTLE_SECONDS", 1.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path) -> str:
    """DATABASE_URL shared by the replicas: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "shared.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def replica_settings(tmp_path, small_corpus, tiny_embedder_path, tiny_reranker_path, fake_openai, state_url):
    """replica_settings(name) -> BotSettings of one replica: its own DATA_DIR, the shared Milvus
    (one Lite file, which every thread of this process can open) and the shared DATABASE_URL."""
    from bot.settings import BotSettings
    from knowledge.store import VectorStore

    shared_milvus = str(tmp_path / "milvus" / "shared.db")
    # This process's Lite server for the file, started once here: replicas in threads would race to start it.
    VectorStore.check_reachable(uri=shared_milvus)

    def make(name: str, **overrides) -> BotSettings:
        values = {
            "knowledge_sources": str(small_corpus),
            "embedding_model": str(tiny_embedder_path),
            "reranker_model": str(tiny_reranker_path),
            "milvus_uri": shared_milvus,
            "openai_base_url": fake_openai.base_url,
            "openai_api_key": "test-key",
            "openai_max_retries": 0,
            "data_dir": tmp_path / f"data-{name}",
            "database_url": state_url,
            "device": "cpu",
            "dtype": "float32",
            "docs_base_url": "https://docs.example/{stem}#{anchor}",
            "claim_lease_seconds": 1.0,
            "log_format": "json",  # no progress bar
        }
        values.update(overrides)
        return BotSettings(_env_file=None, **values)

    yield make
    from tests.fixtures.milvus import release_lite

    release_lite(shared_milvus)


class Replicas:
    """`cmd_serve` of several replicas in threads of this process, up to the point where it
    would serve Slack (`bot.server.serve` records what it would serve instead). Counts the
    texts each replica embedded; with `fail_first` the first embedding call of any replica raises."""

    def __init__(self, monkeypatch) -> None:
        self.embedded: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.errors: dict[str, BaseException] = {}
        self.refreshes: list[tuple[str, str, dict]] = []  # (replica, thread, kb.refresh arguments)
        self.fail_first = False
        self.at_index_check: threading.Barrier | None = None
        self._names = threading.local()
        self._lock = threading.Lock()
        make_kb = cli._knowledge_base
        check = cli._check_answerer

        loading = threading.Lock()

        def knowledge_base(settings):
            with loading:  # (separate processes in life) transformers cannot load models in two threads at once
                kb = make_kb(settings)
            name = self._names.name
            embed = kb.indexer.embedder.embed_documents

            def counted(texts, *args, **kwargs):
                with self._lock:
                    fail, self.fail_first = self.fail_first, False
                if fail:
                    raise RuntimeError(f"{name}'s embedder failed")
                time.sleep(EMBED_DELAY)
                with self._lock:
                    self.embedded[name] = self.embedded.get(name, 0) + len(texts)
                return embed(texts, *args, **kwargs)

            kb.indexer.embedder.embed_documents = counted
            refresh = kb.refresh

            def recorded(**kwargs):
                self.refreshes.append((name, threading.current_thread().name, kwargs))
                return refresh(**kwargs)

            kb.refresh = recorded
            return kb

        def check_answerer(kb):
            check(kb)
            if self.at_index_check is not None:
                self.at_index_check.wait(60)  # every replica looks at the index at the same moment

        def serve(settings, kb, **_):
            self.served[self._names.name] = kb.store.count()

        monkeypatch.setattr(cli, "_knowledge_base", knowledge_base)
        monkeypatch.setattr(cli, "_check_answerer", check_answerer)
        monkeypatch.setattr("bot.server.serve", serve)

    def start(self, name: str, settings, command=cli.cmd_serve, args=None) -> threading.Thread:
        def run() -> None:
            self._names.name = name
            try:
                command(args or argparse.Namespace(), settings)
            except BaseException as error:  # noqa: BLE001 - the test reads it
                self.errors[name] = error

        thread = threading.Thread(target=run, name=f"replica-{name}", daemon=True)
        thread.start()
        return thread

    def run_together(self, settings: dict) -> None:
        self.at_index_check = threading.Barrier(len(settings))
        threads = [self.start(name, values) for name, values in settings.items()]
        for thread in threads:
            join(thread)


def join(thread: threading.Thread) -> None:
    thread.join(240)
    assert not thread.is_alive(), f"{thread.name} never finished"


def wait_for_log(caplog, prefix: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = [r.getMessage() for r in list(caplog.records) if r.getMessage().startswith(prefix)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"nothing logged starting {prefix!r}"
        time.sleep(0.05)


def _runs(state_url: str) -> list:
    database = Database(url=database_url(state_url, default_path="unused"))
    try:
        with database.begin() as connection:
            return connection.execute(refresh_runs.select().order_by(refresh_runs.c.id)).all()
    finally:
        database.close()


def test_replicas_starting_on_an_empty_index_build_it_once(replica_settings, state_url, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    replicas = Replicas(monkeypatch)
    replicas.run_together({"a": replica_settings("a"), "b": replica_settings("b")})

    assert replicas.errors == {}
    [builder] = replicas.embedded  # one replica embedded the corpus, the other nothing
    chunks = replicas.served[builder]
    assert chunks > 0 and replicas.served == {"a": chunks, "b": chunks}  # both serve the whole index
    [run] = _runs(state_url)
    assert (run.requested_by, run.state, run.rebuild) == ("start-up", "ok", False)
    assert run.holder.count(":") == 2 and run.report
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting for the index refresh")]
    assert len(waits) == 1 and f"by start-up on {run.holder}" in waits[0] and "before serving" in waits[0], waits
    assert any(r.getMessage().startswith("Serving the index another replica built") for r in caplog.records)


def test_a_start_up_build_whose_replica_died_is_taken_over(replica_settings, state_url, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    database = Database(url=database_url(state_url, default_path="unused"))
    alive = threading.Event()
    alive.set()
    try:
        # A replica took the lease to build the index; it renews it until it "dies".
        dead = RefreshRuns(database=database, holder="host:1:dead", lease_seconds=1.0)
        started = dead.start(by="start-up", rebuild=False)

        def keep_renewing() -> None:
            while alive.is_set():
                dead.renew()
                time.sleep(0.2)

        renewer = threading.Thread(target=keep_renewing, daemon=True)
        renewer.start()
        replicas = Replicas(monkeypatch)
        thread = replicas.start("a", replica_settings("a"))
        wait_for_log(caplog, "Waiting for the index refresh by start-up on host:1:dead")
        time.sleep(1.0)
        assert replicas.embedded == {}  # it waits while the builder lives
        alive.clear()  # the builder dies: its lease lapses within a second
        renewer.join(5)
        join(thread)
        assert replicas.errors == {}
        assert replicas.embedded["a"] > 0 and replicas.served["a"] > 0
        assert dead.get(started.id).error == DIED
    finally:
        alive.clear()
        database.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("on host:1:dead stopped before it finished: refreshing here" in m for m in messages), messages
    assert [(r.state, r.requested_by) for r in _runs(state_url)] == [("failed", "start-up"), ("ok", "start-up")]


def test_a_start_up_build_that_fails_is_taken_over_by_the_waiting_replica(replica_settings, state_url, monkeypatch):
    replicas = Replicas(monkeypatch)
    replicas.fail_first = True  # the replica that builds first fails
    replicas.run_together({"a": replica_settings("a"), "b": replica_settings("b")})
    [failed] = replicas.errors
    assert "embedder failed" in str(replicas.errors[failed])
    survivor = "b" if failed == "a" else "a"
    assert list(replicas.embedded) == [survivor] and list(replicas.served) == [survivor]
    assert replicas.served[survivor] > 0
    assert [(r.state, r.requested_by) for r in _runs(state_url)] == [("failed", "start-up"), ("ok", "start-up")]


def test_supportbot_index_waits_for_a_refresh_running_elsewhere_then_refreshes(
        replica_settings, state_url, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    database = Database(url=database_url(state_url, default_path="unused"))
    try:
        other = RefreshRuns(database=database, holder="host:2:busy", lease_seconds=60.0)
        running = other.start(by="the schedule", rebuild=False)
        replicas = Replicas(monkeypatch)
        thread = replicas.start("cli", replica_settings("cli"), command=cli.cmd_index,
                                args=argparse.Namespace(rebuild=False, json=True))
        message = wait_for_log(caplog, "Waiting for the index refresh by the schedule on host:2:busy")
        assert "before indexing" in message
        time.sleep(0.5)
        assert replicas.embedded == {} and thread.is_alive()  # it waits while the other runs
        other.finish(running.id, state="ok", report={})
        join(thread)
    finally:
        database.close()
    assert replicas.errors == {} and replicas.embedded["cli"] > 0
    assert [(r.requested_by, r.state) for r in _runs(state_url)] == [("the schedule", "ok"), ("supportbot index", "ok")]


def test_supportbot_chat_on_an_empty_index_waits_for_the_build_running_elsewhere_and_takes_over_if_it_fails(
        replica_settings, state_url, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    chatted = []
    monkeypatch.setattr("bot.chat.run_chat", lambda kb: chatted.append(kb.store.count()))
    database = Database(url=database_url(state_url, default_path="unused"))
    try:
        other = RefreshRuns(database=database, holder="host:2:busy", lease_seconds=60.0)
        running = other.start(by="start-up", rebuild=False)
        replicas = Replicas(monkeypatch)
        thread = replicas.start("chat", replica_settings("chat"), command=cli.cmd_chat)
        wait_for_log(caplog, "Waiting for the index refresh by start-up on host:2:busy")
        time.sleep(0.5)
        assert replicas.embedded == {} and thread.is_alive() and not chatted  # it waits while the other builds
        other.finish(running.id, state="failed", report=None, error="the builder failed", skipped="")
        join(thread)
    finally:
        database.close()
    assert replicas.errors == {} and replicas.embedded["chat"] > 0 and chatted[0] > 0
    assert [(r.requested_by, r.state) for r in _runs(state_url)] == [("start-up", "failed"), ("start-up", "ok")]


def test_one_process_on_the_default_sqlite_file_builds_in_the_foreground_with_its_progress_bar(
        replica_settings, monkeypatch, tmp_path):
    """`make run`: no DATABASE_URL (the SQLite file under DATA_DIR), Milvus Lite; the index is built
    in the serving thread, with the progress bar, before serving."""
    settings = replica_settings("one", database_url="", log_format="plain")
    replicas = Replicas(monkeypatch)
    replicas.run_together({"one": settings})
    assert replicas.errors == {}
    assert replicas.refreshes == [("one", "replica-one", {"rebuild": False, "progress": True})]
    assert replicas.served["one"] > 0
    [run] = _runs(str(settings.data_dir / "feedback.sqlite"))
    assert (run.requested_by, run.state) == ("start-up", "ok")


class _FakeKb:
    def __init__(self) -> None:
        self.refreshes = 0

    def refresh(self, *, rebuild=False, progress=False):
        self.refreshes += 1
        raise AssertionError("must not refresh while another replica runs one")


def test_a_waiter_gives_up_after_the_wait_limit_and_says_whose_run(tmp_path, monkeypatch):
    monkeypatch.setattr(refresher, "LEASE_WAIT_SECONDS", 0.5)
    first = Database(url=database_url(str(tmp_path / "s.sqlite"), default_path="unused"))
    second = Database(url=database_url(str(tmp_path / "s.sqlite"), default_path="unused"))
    try:
        holder = RefreshRuns(database=first, holder="host:3:slow", lease_seconds=60.0)
        holder.start(by="start-up", rebuild=False)
        kb = _FakeKb()
        with pytest.raises(RefreshWaitError, match="index refresh by start-up on host:3:slow"):
            refresh_under_lease(kb, RefreshRuns(database=second, holder="B", lease_seconds=60.0), by="start-up",
                                needed=lambda: True)
        assert kb.refreshes == 0
    finally:
        first.close()
        second.close()


# ---- the serving alias -------------------------------------------------------------------


@pytest.fixture
def open_store(milvus_lite_uri):
    from knowledge.store import VectorStore

    opened = []

    def make():
        store = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=8, model_id="test/8")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def milvus_log(caplog):
    """pymilvus's own records too (its logger does not propagate to the root)."""
    logger = logging.getLogger("pymilvus")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def _collections(store) -> list[str]:
    return sorted(name for name in store._client.list_collections() if name.startswith("docs_"))


def test_two_processes_opening_an_empty_index_at_once_share_one_collection_quietly(open_store, monkeypatch,
                                                                                   milvus_log):
    from knowledge.store import VectorStore

    first = open_store()
    # The second listed the collections just before the first created the serving name.
    real = VectorStore.physical_name
    calls = []

    def late(self):
        calls.append(1)
        return None if len(calls) == 1 else real(self)

    monkeypatch.setattr(VectorStore, "physical_name", late)
    second = open_store()
    assert second._serving == first._serving and _collections(second) == [first._serving]
    assert [r.getMessage()[:200] for r in milvus_log.records if r.levelno >= logging.ERROR] == []  # no traceback
    assert any("created by another process at the same moment" in r.getMessage() for r in milvus_log.records)


def test_a_switch_that_finds_the_alias_created_meanwhile_points_it_at_its_build(open_store, monkeypatch, milvus_log):
    from knowledge.store import VectorStore

    first = open_store()
    rebuilder = open_store()
    staging = rebuilder.create_staging()
    real = VectorStore.physical_name
    calls = []

    def late(self):  # the rebuilder read "no serving collection" just before the first created it
        calls.append(1)
        return None if self is rebuilder and len(calls) == 1 else real(self)

    monkeypatch.setattr(VectorStore, "physical_name", late)
    rebuilder.switch_to(staging)
    monkeypatch.undo()
    assert rebuilder._serving == staging and _collections(rebuilder) == [staging]
    assert rebuilder._client.describe_alias("docs")["collection_name"] == staging
    assert first.follow_serving() and first._serving == staging
    assert [r.getMessage()[:200] for r in milvus_log.records if r.levelno >= logging.ERROR] == []
