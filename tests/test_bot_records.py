"""Answer/feedback records in SQLite and the `supportbot feedback` report."""

import threading

import pytest

from bot.records import Records, RecordsError, format_feedback_report
from knowledge.types import Answer, Citation


def _answer(question, status="answered"):
    return Answer(question=question, text=f"answer to {question} [1]", status=status,
                  citations=[Citation(1, "FAQ", ("Install",), "https://x/faq#install", "faq.md")],
                  timings_ms={"total": 12.5})


@pytest.fixture
def records(tmp_path):
    store = Records(path=tmp_path / "sub" / "feedback.sqlite")
    yield store
    store.close()


def test_answers_and_feedback_round_trip(records):
    first = records.record_answer(_answer("how to install?"), user_id="U1", channel="C1", thread_ts="1.1")
    second = records.record_answer(_answer("what is a quota?", "abstained"), user_id="U2", channel="C1",
                                   thread_ts="2.2")
    assert records.record_feedback(first, user_id="U1", value=1)
    assert records.record_feedback(second, user_id="U2", value=-1)
    assert not records.record_feedback("no-such-id", user_id="U2", value=1)
    with pytest.raises(ValueError):
        records.record_feedback(first, user_id="U1", value=5)

    feedback = records.recent_feedback(10)
    assert [(f.question, f.value) for f in feedback] == [("what is a quota?", -1), ("how to install?", 1)]
    assert [a.question for a in records.abstained(10)] == ["what is a quota?"]
    assert records.recent_answers(10)[0].sources[0]["url"] == "https://x/faq#install"
    assert records.totals() == {"answers": 2, "abstained": 1, "helpful": 1, "not_helpful": 1}
    assert records.answered_thread("C1", "1.1") and not records.answered_thread("C1", "9.9")


def test_report_text(records):
    record = records.record_answer(_answer("why is search slow?", "abstained"), channel="C1", thread_ts="1")
    records.record_feedback(record, user_id="U1", value=-1)
    report = format_feedback_report(records, limit=5)
    assert "Answers: 1  (not in the docs: 1)  Feedback: 0 helpful, 1 not helpful" in report
    assert "-1  [abstained]  why is search slow?" in report
    assert report.count("why is search slow?") == 2


def test_empty_report(records):
    report = format_feedback_report(records, limit=5)
    assert report.count("(none)") == 2


def test_concurrent_writers(records):
    def write(n):
        for i in range(20):
            records.record_answer(_answer(f"q{n}-{i}"), channel="C", thread_ts=str(n))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert records.totals()["answers"] == 80


def test_unopenable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecordsError, match="cannot open the state database"):
        Records(path=blocker / "feedback.sqlite")
