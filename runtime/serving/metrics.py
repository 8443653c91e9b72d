"""Prometheus metrics of a serving engine: gauges and the generated-token counter read from the engine at scrape
time (tokens/s: over the engine's last 10 s), TTFT / TPOT histograms and prompt / request counters fed by the
engine loop as sequences finish (one registry per server, so tests can make many)."""
from __future__ import annotations

from typing import Any

from .sequence import Sequence

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, engine: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        stats = engine.stats
        Gauge("ember_queue_depth", "Requests waiting for a slot or KV pages", registry=registry).set_function(
            lambda: stats()["waiting"])
        Gauge("ember_running_sequences", "Sequences in the running batch", registry=registry).set_function(
            lambda: stats()["running"])
        Gauge("ember_kv_pages_used", "KV cache pages held by sequences", registry=registry).set_function(
            lambda: stats()["kv_pages_used"])
        Gauge("ember_kv_pages_cached", "KV cache pages only the prefix cache holds", registry=registry).set_function(
            lambda: stats()["kv_pages_cached"])
        Gauge("ember_prefix_cache_hit_tokens", "Prompt tokens forked from the prefix cache so far",
              registry=registry).set_function(lambda: stats()["prefix_cache_hit_tokens"])
        Gauge("ember_kv_pages_total", "KV cache pages in all", registry=registry).set_function(
            lambda: stats()["kv_pages_total"])
        Gauge("ember_preemptions", "Sequences preempted (and recomputed) so far", registry=registry).set_function(
            lambda: stats()["preempted"])
        Gauge("ember_generation_tokens_per_second", "Tokens generated per second over the last 10 s",
              registry=registry).set_function(engine.core.stats.tokens_per_s)
        registry.register(_Generated(engine.core.stats))
        self.ttft = Histogram("ember_time_to_first_token_seconds", "Arrival to first sampled token",
                              buckets=TTFT_BUCKETS, registry=registry)
        self.tpot = Histogram("ember_time_per_output_token_seconds", "Mean time per token after the first",
                              buckets=TPOT_BUCKETS, registry=registry)
        self.prompt = Counter("ember_prompt_tokens", "Prompt tokens of finished requests", registry=registry)
        self.requests = Counter("ember_requests_finished", "Requests finished, by reason", ["reason"],
                                registry=registry)
        engine.core.on_finish = self.observe

    def observe(self, seq: Sequence) -> None:
        """Called by the engine loop when a sequence retires."""
        import time

        self.requests.labels(seq.finish_reason or "unknown").inc()
        self.prompt.inc(seq.prompt_len)
        if seq.first_token_at is not None:
            self.ttft.observe(seq.first_token_at - seq.arrival)
            if seq.generated > 1:
                self.tpot.observe((time.perf_counter() - seq.first_token_at) / (seq.generated - 1))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Generated:
    """ember_generation_tokens_total, read at scrape time: it grows while streams run, not when they end."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("ember_generation_tokens", "Tokens generated", value=self.stats.generated_tokens)
