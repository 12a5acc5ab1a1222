"""The docs index goes away while the bot runs (Milvus Lite file taken by another process,
Milvus server unreachable): the person is told so with an error id, the bot stays up, and
answers again by itself once the store is back — no restart."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from bot.responder import UNAVAILABLE_TEXT
from tests.bot_helpers import bot_replies, final_answers, outcomes, section_text, start_bot  # noqa: F401
from tests.fixtures.milvus import release_lite

pytestmark = pytest.mark.timeout(150)

QUESTION = "How does Milvus store data?"
UNAVAILABLE_START = UNAVAILABLE_TEXT.split("{")[0]


def _ask(fake_slack, outcomes, channel: str) -> tuple[str, list[dict]]:
    """One mention; waits for its outcome; returns (outcome, the bot's replies in the thread)."""
    already = len(outcomes.records)
    event = fake_slack.mention(QUESTION, channel=channel)
    fake_slack.send_event(event)
    record = outcomes.wait(already + 1)[already]
    assert record.thread_ts == event["ts"]
    return record.outcome, bot_replies(fake_slack, channel, event["ts"])


def _assert_unavailable(outcome: str, replies: list[dict]) -> None:
    assert outcome == "unavailable"
    [reply] = replies
    assert reply["text"].startswith(UNAVAILABLE_START) and "error id: `" in reply["text"]
    assert "Milvus" not in reply["text"] and "127.0.0.1" not in reply["text"]  # no internals shown


def _assert_answered(fake_slack, outcome: str, replies: list[dict]) -> None:
    assert outcome == "answered"
    [reply] = replies
    assert section_text(reply).startswith("Milvus stores data")


def test_lite_file_taken_by_another_process_then_released(make_kb, fake_openai, fake_slack, start_bot, outcomes):
    kb = make_kb(abstain_threshold=0.0)
    start_bot(kb)
    _assert_answered(fake_slack, *_ask(fake_slack, outcomes, "CL1"))

    # Our in-process Milvus Lite server goes away and another process opens (and locks) the file.
    uri = kb.settings.milvus_target
    release_lite(uri)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pymilvus import MilvusClient; c = MilvusClient(uri=sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", uri],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        _assert_unavailable(*_ask(fake_slack, outcomes, "CL2"))
        _assert_unavailable(*_ask(fake_slack, outcomes, "CL3"))  # still locked: still a clear reply
    finally:
        holder.stdin.close()
        holder.wait(30)

    # The file is free again: the next question reconnects and is answered.
    _assert_answered(fake_slack, *_ask(fake_slack, outcomes, "CL4"))
    assert [r.outcome for r in outcomes.records] == ["answered", "unavailable", "unavailable", "answered"]
    assert kb.status()["chunks"] > 0


class TcpProxy:
    """A localhost TCP forwarder that can be cut (connections refused) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() and stops listening
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                return  # cut
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.slow
def test_milvus_server_unreachable_then_back(make_kb, fake_openai, fake_slack, start_bot, outcomes, milvus_server):
    proxy = TcpProxy(int(milvus_server.rsplit(":", 1)[1]))
    try:
        kb = make_kb(abstain_threshold=0.0, milvus_uri=f"http://127.0.0.1:{proxy.port}",
                     milvus_collection="outage_test")
        start_bot(kb)
        _assert_answered(fake_slack, *_ask(fake_slack, outcomes, "CS1"))

        proxy.cut()
        _assert_unavailable(*_ask(fake_slack, outcomes, "CS2"))
        _assert_unavailable(*_ask(fake_slack, outcomes, "CS3"))

        proxy.restore()
        # gRPC may still be backing off from the failed attempts: a question or two more
        # can hear "unavailable" (a clear reply still), then answers resume by themselves.
        deadline = time.monotonic() + 20
        attempt = 0
        while True:
            attempt += 1
            outcome, replies = _ask(fake_slack, outcomes, f"CS4-{attempt}")
            if outcome != "unavailable" or time.monotonic() > deadline:
                break
            _assert_unavailable(outcome, replies)
            time.sleep(0.5)
        _assert_answered(fake_slack, outcome, replies)
        print(f"\nanswering again {attempt} question(s) after Milvus came back")
        assert kb.status()["chunks"] > 0
    finally:
        proxy.cut()
