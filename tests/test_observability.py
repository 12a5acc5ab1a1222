"""Metrics and health endpoints, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.observability import STAGES, Metrics, ObservabilityServer
from knowledge.types import Answer


def _get(server: ObservabilityServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics):
    with ObservabilityServer(metrics=metrics, port=0, host="127.0.0.1") as running:
        yield running


def test_scraped_metrics_reflect_observed_answers(metrics: Metrics, server: ObservabilityServer):
    metrics.questions.inc(3)
    metrics.observe_answer(
        Answer(question="q", text="a", status="answered",
               timings_ms={"embed": 12.0, "search": 30.0, "rerank": 400.0, "model": 1500.0, "total": 1950.0})
    )
    metrics.observe_answer(Answer(question="q", text="", status="abstained", timings_ms={"total": 80.0}))
    metrics.observe_stage("slack", 0.2)
    metrics.record_error("AnswerError")
    metrics.record_refresh("ok", chunks=321)
    metrics.queue_depth.set(2)

    status, content_type, body = _get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = _samples(body)
    assert samples[("supportbot_questions_total", ())] == 3
    assert samples[("supportbot_answers_total", (("status", "answered"),))] == 1
    assert samples[("supportbot_answers_total", (("status", "abstained"),))] == 1
    assert samples[("supportbot_answers_total", (("status", "retrieval_only"),))] == 0
    assert samples[("supportbot_abstentions_total", ())] == 1
    assert samples[("supportbot_errors_total", (("kind", "AnswerError"),))] == 1
    assert samples[("supportbot_refresh_total", (("result", "ok"),))] == 1
    assert samples[("supportbot_index_chunks", ())] == 321
    assert samples[("supportbot_queue_depth", ())] == 2
    # timings_ms are milliseconds; the histogram is in seconds.
    assert samples[("supportbot_stage_seconds_sum", (("stage", "model"),))] == pytest.approx(1.5)
    assert samples[("supportbot_stage_seconds_count", (("stage", "total"),))] == 2
    assert samples[("supportbot_stage_seconds_sum", (("stage", "total"),))] == pytest.approx(2.03)
    assert samples[("supportbot_stage_seconds_bucket", (("le", "0.25"), ("stage", "rerank")))] == 0
    assert samples[("supportbot_stage_seconds_bucket", (("le", "0.5"), ("stage", "rerank")))] == 1
    assert samples[("supportbot_stage_seconds_count", (("stage", "slack"),))] == 1
    # Every known stage is exported from the start, even before it is observed.
    for stage in STAGES:
        assert ("supportbot_stage_seconds_count", (("stage", stage),)) in samples


def test_time_stage_records_even_when_the_body_raises(metrics: Metrics):
    with pytest.raises(RuntimeError):
        with metrics.time_stage("search"):
            raise RuntimeError("boom")
    body, _ = metrics.render()
    assert _samples(body.decode())[("supportbot_stage_seconds_count", (("stage", "search"),))] == 1


def test_openmetrics_is_negotiated(metrics: Metrics):
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_metrics_use_their_own_registry():
    first, second = Metrics(), Metrics()  # a second instance must not clash
    first.questions.inc()
    assert second.registry.get_sample_value("supportbot_questions_total") == 0
    assert REGISTRY.get_sample_value("supportbot_questions_total") is None


def test_healthz_is_ok_while_running(server: ObservabilityServer):
    status, content_type, body = _get(server, "/healthz")
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"status": "ok"})
    assert _get(server, "/nope")[0] == 404


def test_readyz_follows_the_readiness_callable(metrics: Metrics):
    state: dict = {"value": (False, "index is empty")}
    with ObservabilityServer(metrics=metrics, port=0, host="127.0.0.1",
                             readiness=lambda: state["value"]) as server:
        status, _, body = _get(server, "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "reason": "index is empty"})

        state["value"] = True
        status, _, body = _get(server, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})

        state["value"] = False
        status, _, body = _get(server, "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "reason": "not ready"})


def test_readyz_reports_a_failing_check_without_a_traceback(metrics: Metrics):
    def broken() -> bool:
        raise ConnectionError("milvus unreachable\nsecond line")

    with ObservabilityServer(metrics=metrics, port=0, host="127.0.0.1", readiness=broken) as server:
        status, _, body = _get(server, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "reason": "ConnectionError: milvus unreachable"}


def test_stop_frees_the_port_and_is_idempotent(metrics: Metrics):
    server = ObservabilityServer(metrics=metrics, port=0, host="127.0.0.1").start()
    port = server.port
    assert port > 0 and _get(server, "/healthz")[0] == 200
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # The same port can be bound again right away.
    again = ObservabilityServer(metrics=metrics, port=port, host="127.0.0.1").start()
    try:
        assert _get(again, "/healthz")[0] == 200
    finally:
        again.stop()
