"""The terminal chat: the same answer path, history kept between turns, numbered sources."""

import io
import json
import os
import signal
import threading
import time

import pytest

from bot.chat import run_chat
from bot.terminal import AnswerPrinter
from bot.triage import SMALL_TALK_TEXT, THANKS_TEXT


def test_chat_streams_answers_keeps_history_and_prints_sources(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = "Milvus keeps data in object storage [1]."
    output = io.StringIO()
    answered = run_chat(kb, io.StringIO("How does Milvus store data?\n\nAnd the metadata?\nexit\nnot asked\n"),
                        output)
    text = output.getvalue()
    assert answered == 2
    assert text.count("bot> Milvus keeps data in object storage [1].") == 2
    assert "Sources:\n  [1] " in text and "https://docs.example/" in text
    assert "not asked" not in text
    # the second question went to the model with the first turn as history
    assert "How does Milvus store data?" in json.dumps(fake_openai.requests[-1])


def test_chat_shows_knowledge_errors_and_ends_at_eof(make_kb):
    kb = make_kb(refresh=False)
    output = io.StringIO()
    assert run_chat(kb, io.StringIO("x" * 5000 + "\n"), output) == 0
    assert "(error) The question is too long" in output.getvalue()
    assert "bot>" not in output.getvalue()  # no reply started: the error line stands alone


def test_ctrl_d_at_the_prompt_ends_its_line():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    output = io.StringIO()
    assert run_chat(None, Terminal(""), output) == 0  # EOF at once: nothing asked
    assert output.getvalue().endswith("you> \n")


def test_chat_answers_small_talk_without_a_lookup(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = "Milvus keeps data in object storage [1]."
    output = io.StringIO()
    answered = run_chat(kb, io.StringIO("hi\nHow does Milvus store data?\nthanks!\n👍\n"), output)
    text = output.getvalue()
    assert answered == 1
    assert len(fake_openai.requests) == 1  # only the question reached the model
    assert f"you> hi\nbot> {SMALL_TALK_TEXT}" in text
    assert f"you> thanks!\nbot> {THANKS_TEXT}" in text
    assert text.count(SMALL_TALK_TEXT) == 2  # the emoji too
    assert text.count("Sources:") == 1


def test_chat_follow_up_after_bad_bytes_and_a_failed_answer(make_kb):
    """Bad bytes from stdin arrive as lone surrogates: the follow-up searches with the cleaned
    question, and an unexpected exception in one answer does not end the conversation."""
    kb = make_kb(api_key="", reranker=False)
    failures = iter([RuntimeError("boom")])

    class FailsOnce:  # the real knowledge base, whose third answer fails with a bug
        calls = 0

        def ask(self, question, **kwargs):
            FailsOnce.calls += 1
            if FailsOnce.calls == 3:
                raise next(failures)
            return kb.ask(question, **kwargs)

    stdin = b"bad bytes \xff\xfe in a question about the index\nand why?\nwhat else?\nand data?\n"
    output = io.StringIO()
    answered = run_chat(FailsOnce(), io.StringIO(stdin.decode("utf-8", "surrogateescape")), output)
    text = output.getvalue()
    assert answered == 3
    assert "(error) The answer failed (RuntimeError)" in text
    assert text.count("Sources:") == 3


def test_chat_prints_the_kept_answer_and_nothing_that_drives_the_terminal(make_kb, fake_openai, tmp_path):
    """Markers the kept answer drops never show while streaming; escape sequences and control
    characters from the model or the docs (clear screen, window title, hidden text) never print."""
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = ("Data lives in object storage [7]. Metadata in etcd [1][0].\x1b[2J\x1b]0;pwned\x07"
                                " Hidden \x1b[8mtext\x1b[0m [1].\r\x08")
    output = io.StringIO()
    assert run_chat(kb, io.StringIO("How does Milvus store data?\n"), output) == 1
    text = output.getvalue()
    assert "bot> Data lives in object storage. Metadata in etcd [1]. Hidden text [1].\n" in text
    assert not any(char in text for char in "\x1b\x07\r\x08") and "pwned" not in text

    docs = tmp_path / "escapes"
    docs.mkdir()
    (docs / "storage.md").write_text(
        "# Storage \x1b]0;pwned-title\x07\n\n## Where data lives\n\n"
        "Milvus keeps data \x1b[2Jin object storage. \x1b[8mINVISIBLE TEXT\x1b[0m\x9b31m and metadata in etcd.\n")
    kb = make_kb(sources=docs, api_key="", reranker=False, abstain_threshold=0.0, abstain_dense_threshold=-1.0)
    output = io.StringIO()
    assert run_chat(kb, io.StringIO("Where does Milvus keep data?\n"), output) == 1
    text = output.getvalue()
    assert "INVISIBLE TEXT" in text and "Sources:" in text
    assert not any(char in text for char in "\x1b\x07\x9b") and "pwned-title" not in text


def test_streamed_text_waits_only_for_what_the_whole_answer_settles():
    """Text streams as it comes; a marker only the whole answer can judge waits for it."""
    from knowledge.pipeline import normalise_markers
    from knowledge.types import Answer

    output = io.StringIO()
    printer = AnswerPrinter(output, prefix="bot> ")
    deltas = ["Data ", "lives [", "1] in \x1b]0;ti", "tle\x07storage", " [", "7]. More [1]."]
    shown = []
    for delta in deltas:
        printer.on_delta(delta)
        shown.append(output.getvalue())
    assert shown[:3] == ["bot> Data", "bot> Data lives", "bot> Data lives [1] in"]  # "[" and ESC ] wait
    assert shown[3] == "bot> Data lives [1] in storage"  # the title sequence went whole
    assert shown[5] == shown[4] == shown[3]  # [7] may be dropped: the rest waits for the whole answer
    kept = normalise_markers("".join(deltas), 1)
    printer.finish(Answer(question="q", text=kept, status="answered"))
    assert output.getvalue() == "bot> Data lives [1] in storage. More [1].\n"


def test_streamed_full_width_marker_waits_for_the_whole_answer():
    """【1】 (a Chinese answer's marker) becomes [1] only once the whole text is in: what
    precedes it streams, it and the rest come from the kept answer."""
    from knowledge.pipeline import normalise_markers
    from knowledge.types import Answer

    output = io.StringIO()
    printer = AnswerPrinter(output)
    deltas = ["数据存放在", "对象存储【", "1】中。"]
    for delta in deltas:
        printer.on_delta(delta)
    assert output.getvalue() == "数据存放在对象存储"
    printer.finish(Answer(question="q", text=normalise_markers("".join(deltas), 1), status="answered"))
    assert output.getvalue() == "数据存放在对象存储[1]中。\n"


def test_ctrl_c_cancels_the_answer_and_ends_the_chat_at_the_prompt(make_kb, fake_openai):
    """A slow answer: Ctrl-C drops it and the chat goes on; Ctrl-C at the prompt ends it."""
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.hang(4)  # the first answer is slow
    fake_openai.default_text = "Milvus keeps data in object storage [1]."
    read_end, write_end = os.pipe()
    output = io.StringIO()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 60
        while text not in output.getvalue():
            assert time.monotonic() < deadline, output.getvalue()
            time.sleep(0.05)

    def user() -> None:  # types, and presses Ctrl-C (SIGINT to this process, as a terminal does)
        os.write(write_end, b"How does Milvus store data?\n")
        fake_openai.wait_for_requests(1)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        wait_for("(cancelled)")
        os.write(write_end, b"And the metadata?\n")
        wait_for("Sources:")
        time.sleep(1.0)  # back at the prompt, reading
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    with open(read_end, encoding="utf-8") as stdin, pytest.raises(KeyboardInterrupt):
        run_chat(kb, stdin, output)
    thread.join(timeout=10)
    os.close(write_end)
    text = output.getvalue()
    assert "you> How does Milvus store data?\n(cancelled)\n" in text
    assert "you> And the metadata?\nbot> Milvus keeps data in object storage [1]." in text
