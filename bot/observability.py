"""Prometheus metrics and the liveness / readiness / metrics HTTP endpoints.

`Metrics` owns its own `CollectorRegistry` (nothing is registered on the
process-wide default one), so tests and several bots in one process never
collide. `ObservabilityServer` serves, on one port:

    GET /metrics   Prometheus exposition of the registry
    GET /healthz   200 {"status": "ok"} while the process runs (liveness)
    GET /readyz    200 {"ready": true} when the readiness callable says so,
                   else 503 {"ready": false, "reason": "..."} (readiness)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from knowledge.types import Answer

log = logging.getLogger(__name__)

STAGES = ("rewrite", "embed", "search", "rerank", "model", "slack", "total")
# Seconds: from a cached embedding (ms) to a slow model answer (minutes).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# What a readiness check returns: a bool, or (bool, reason shown by /readyz).
Readiness = Callable[[], bool | tuple[bool, str]]


class Metrics:
    """The bot's Prometheus metrics, registered on a registry of their own.

    Names (with the default namespace "supportbot"):
      supportbot_questions_total, supportbot_answers_total{status},
      supportbot_abstentions_total, supportbot_errors_total{kind},
      supportbot_refresh_total{result}, supportbot_stage_seconds{stage},
      supportbot_queue_depth, supportbot_waiting_questions, supportbot_index_chunks
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "supportbot",
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": namespace, "registry": self.registry}
        self.questions = Counter("questions", "Questions received.", **common)
        self.answers = Counter("answers", "Answers sent, by status.", ["status"], **common)
        self.abstentions = Counter("abstentions", "Questions the docs could not answer.", **common)
        self.errors = Counter("errors", "Failures, by kind.", ["kind"], **common)
        self.refreshes = Counter("refresh", "Index refreshes, by result.", ["result"], **common)
        self.stage_seconds = Histogram(
            "stage_seconds", "Time spent per answering stage.", ["stage"],
            buckets=STAGE_BUCKETS, **common,
        )
        self.queue_depth = Gauge("queue_depth", "Questions waiting for a worker.", **common)
        # Read from the waiting line when scraped (bot.app sets the function): no count to keep in step.
        self.waiting_questions = Gauge("waiting_questions",
                                       "Questions waiting for the same person's earlier answer or their minute.",
                                       **common)
        self.index_chunks = Gauge("index_chunks", "Chunks in the vector index.", **common)
        if process_metrics:
            # The standard process_* series (CPU, memory, open files; Linux only).
            ProcessCollector(registry=self.registry)
        # Make the known series visible at 0 before the first event.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for status in ("answered", "abstained", "retrieval_only"):
            self.answers.labels(status=status)

    def observe_answer(self, answer: Answer) -> None:
        """Count one answer by status and record its `timings_ms` per stage.

        Every key of `timings_ms` becomes a `stage` label (the pipeline's keys
        are a fixed set, so the label cardinality stays small).
        """
        self.answers.labels(status=answer.status).inc()
        if answer.status == "abstained":
            self.abstentions.inc()
        for stage, milliseconds in answer.timings_ms.items():
            self.observe_stage(stage, milliseconds / 1000.0)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one duration for `stage`; negative values are clamped to 0."""
        self.stage_seconds.labels(stage=stage).observe(max(0.0, seconds))

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Time the `with` body into `stage_seconds{stage}` (also when it raises)."""
        with self.stage_seconds.labels(stage=stage).time():
            yield

    def record_error(self, kind: str) -> None:
        """Count one failure; `kind` must come from code (e.g. an error class name)."""
        self.errors.labels(kind=kind).inc()

    def record_refresh(self, result: str, *, chunks: int | None = None) -> None:
        """Count one refresh ("ok", "failed", "busy", "queued"); `chunks` updates index_chunks."""
        self.refreshes.labels(result=result).inc()
        if chunks is not None:
            self.index_chunks.set(chunks)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an Accept header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class ObservabilityServer:
    """/metrics, /healthz and /readyz on a stdlib HTTP server in a daemon thread.

    `port=0` picks a free port (read it back from `.port` after `start()`).
    `readiness` returns True, False, or (ready, reason); if it raises, /readyz
    answers 503 with the exception's one-line message.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        port: int,
        host: str = "0.0.0.0",
        readiness: Readiness | None = None,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._readiness = readiness or (lambda: True)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ObservabilityServer":
        """Bind and serve in a daemon thread. Raises OSError when the port is taken."""
        if self._httpd is not None:
            return self
        self._httpd = ThreadingHTTPServer((self.host, self.port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # A short poll interval makes stop() return quickly (shutdown waits for a poll).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name="observability-http", daemon=True,
        )
        self._thread.start()
        log.info("metrics and health endpoints on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "ObservabilityServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_ready(self) -> tuple[bool, str]:
        """Run the readiness callable: (ready, reason); never raises."""
        try:
            result = self._readiness()
        except Exception as error:  # a failing check means "not ready", not a 500
            return False, f"{type(error).__name__}: {error}".splitlines()[0]
        if isinstance(result, tuple):
            ready, reason = result
            return bool(ready), str(reason)
        return bool(result), "" if result else "not ready"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                path = urlsplit(self.path).path
                if path == "/metrics":
                    body, content_type = server.metrics.render(self.headers.get("Accept", ""))
                    self._send(200, body, content_type)
                elif path == "/healthz":
                    self._send_json(200, {"status": "ok"})
                elif path == "/readyz":
                    ready, reason = server.check_ready()
                    payload = {"ready": True} if ready else {"ready": False, "reason": reason}
                    self._send_json(200 if ready else 503, payload)
                else:
                    self._send_json(404, {"error": "not found"})

            def _send_json(self, status: int, payload: dict) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Scrapes and probes every few seconds would drown the real logs.
                pass

        return Handler
