"""Prometheus metrics of one worker: load, throughput, latency and errors, served as text on ``/metrics``.

Every server owns its own registry (no process-global state), so tests can run several in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Content type of :meth:`WorkerMetrics.render`.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    """The worker's instruments; the scheduler updates them, the server renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge("worker_queue_depth", "Requests waiting for a place in the batch", registry=r)
        self.running = Gauge("worker_running_requests", "Requests in the running batch", registry=r)
        self.batch_size = Histogram("worker_decode_batch_size", "Sequences advanced per decode step",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.tokens = Counter("worker_generated_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("worker_prompt_tokens", "Prompt tokens prefilled", registry=r)
        # ``front_end``: which front end the request came through (ndjson, openai, redis, ...)
        self.requests = Counter("worker_requests_finished", "Requests that ended with a done event",
                                ["finish_reason", "front_end"], registry=r)
        self.errors = Counter("worker_request_errors", "Requests refused or ended with an error event",
                              ["code", "front_end"], registry=r)
        self.latency = Histogram("worker_request_duration_seconds", "From submission to the done event",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("worker_time_to_first_token_seconds", "From submission to the first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("worker_queue_wait_seconds", "From submission to admission",
                                    buckets=_LATENCY_BUCKETS, registry=r)

    def watch_engine(self, engine: object) -> None:
        """Also expose the engine's own counters (caches, tokens prefilled and decoded), if it keeps any."""
        if getattr(engine, "stats", None) is not None:
            from model_worker.engine.metrics import EngineStatsCollector

            self.registry.register(EngineStatsCollector(engine))

    def render(self) -> bytes:
        """The Prometheus text exposition of every instrument."""
        return generate_latest(self.registry)
