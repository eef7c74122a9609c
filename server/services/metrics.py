"""The server's Prometheus metrics (`GET /metrics`), one `CollectorRegistry` per app.

`Metrics` is made by the app factory and handed to whoever reports: the request
middleware (`RequestObserver`), the chat and completion services (`GenerationObserver`,
called on the models' worker threads: prometheus_client's metrics are thread-safe).
What is live state — queues, loaded models, memory, fine-tuning jobs — is read when
Prometheus scrapes (`LiveState`), from the model registry and the store `watch` names.

Engine runners started again after a crash are counted too (`pomar_runner_restarts`, read
from the model registry's supervisor at scrape time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from server.models.registry import ModelRegistry
from server.models.residency import rss_bytes
from server.store.jobs import JobRepository, JobStatus

#: the `Content-Type` of a scrape: the text format every Prometheus reads (the names here
#: need none of format 1.0.0's UTF-8 escaping)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: seconds from a request's start to its first token (a prompt's prefill, a model's load)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds between two tokens of a completion (one decode step, shared in a batch)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: seconds a request takes to its last byte (a stream's whole length)
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The app's metrics; `render()` is a scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pomar_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "pomar_request_duration_seconds",
            "Time from a request's arrival to its answer's last byte (a stream's whole length).",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            "pomar_generated_tokens",
            "Completion tokens generated (usage.completion_tokens), by model.",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "pomar_time_to_first_token_seconds",
            "Time from a generation request's start to its first generated token, by model.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pomar_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a completion, by model.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pomar_prompt_tokens",
            "Prompt tokens read (usage.prompt_tokens), by model.",
            ["model"],
            registry=r,
        )
        self.cached_tokens = Counter(
            "pomar_prompt_cached_tokens",
            "Prompt tokens taken from the prompt cache instead of computed "
            "(usage.prompt_tokens_details.cached_tokens), by model.",
            ["model"],
            registry=r,
        )
        #: `generated` and `itl` of each model (`_token_metrics`)
        self._per_token: dict[str, tuple[Any, Any]] = {}
        self.live = LiveState()
        r.register(self.live)
        if os.path.exists("/proc/self/stat"):
            # process_resident_memory_bytes, process_cpu_seconds_total, open fds, ...
            ProcessCollector(registry=r)
        else:  # macOS: prometheus_client reads /proc only; the resident memory still
            r.register(_ResidentMemory())

    def watch(self, models: ModelRegistry | None, jobs: JobRepository | None) -> None:
        """Read live state from these (None: stop, e.g. when the app shuts down)."""
        self.live.models, self.live.jobs = models, jobs

    def render(self) -> bytes:
        """A scrape: every metric in Prometheus's text format."""
        return generate_latest(self.registry)

    # ------------------------------------------------ RequestObserver (server.middleware)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    # --------------------------------- GenerationObserver (server.services.observer)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def tokens(self, model: str, count: int, seconds_each: float | None) -> None:
        generated, itl = self._token_metrics(model)
        generated.inc(count)
        if seconds_each is not None:
            for _ in range(count):
                itl.observe(seconds_each)

    def _token_metrics(self, model: str) -> tuple[Any, Any]:
        """The model's token counter and inter-token histogram, looked up once a model:
        `labels()` (a lock and a validation) cost more than the count it keeps, once a
        token."""
        found = self._per_token.get(model)
        if found is None:
            found = self._per_token[model] = (self.generated.labels(model), self.itl.labels(model))
        return found

    def prompt(self, model: str, tokens: int, cached: int) -> None:
        self.prompt_tokens.labels(model).inc(tokens)
        self.cached_tokens.labels(model).inc(cached)


class LiveState:
    """Gauges read at scrape time: per loaded model, and fine-tuning jobs by status."""

    def __init__(self) -> None:
        self.models: ModelRegistry | None = None
        self.jobs: JobRepository | None = None

    def describe(self) -> list[Metric]:
        return []  # names are known only at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "pomar_queue_depth",
            "Requests waiting for a loaded model's worker, by model.",
            labels=["model"],
        )
        running = GaugeMetricFamily(
            "pomar_running_sequences",
            "Requests a loaded model's worker is generating now, by model.",
            labels=["model"],
        )
        memory = GaugeMetricFamily(
            "pomar_model_memory_bytes",
            "Memory a loaded model holds as the residency budget reckons it (an estimate "
            "made before loading; with engine runners, the runner's measured RSS), by model.",
            labels=["model", "backend"],
        )
        restarts = CounterMetricFamily(
            "pomar_runner_restarts",
            "Engine runner processes started again after one died (engine_process), by model.",
            labels=["model"],
        )
        for model in self.models.loaded() if self.models is not None else []:
            queued.add_metric([model.id], model.worker.queued)
            running.add_metric([model.id], model.worker.running)
            memory.add_metric([model.id, model.engine.backend], model.memory)
        supervisor = getattr(self.models, "supervisor", None)
        for model_id, count in (supervisor.restarts if supervisor else {}).items():
            restarts.add_metric([model_id], count)
        yield from (queued, running, memory, restarts)
        jobs = GaugeMetricFamily(
            "pomar_fine_tuning_jobs", "Fine-tuning jobs by status.", labels=["status"]
        )
        counts = self.jobs.count_by_status() if self.jobs is not None else {}
        for status in get_args(JobStatus):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs


class _ResidentMemory:
    """`process_resident_memory_bytes` where prometheus_client's ProcessCollector has no
    /proc to read (macOS)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            value=resident_bytes(),
        )


def resident_bytes() -> int:
    """This process's resident memory now (0 where it cannot be read)."""
    rss = rss_bytes()
    if rss:
        return rss
    try:
        import psutil  # accelerate's dependency

        return int(psutil.Process().memory_info().rss)
    except Exception:  # no psutil, or a platform it cannot read
        return 0
