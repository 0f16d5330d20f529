"""Prometheus metrics of one app, in its own registry.

Under `deficiency serve` several worker processes answer requests, so the
server sets `PROMETHEUS_MULTIPROC_DIR` before any worker imports
prometheus_client; `/metrics` then aggregates every worker's values (a scrape
that reached one worker would otherwise see only its share).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "deficiency_decisions", "Decisions answered (recorded), by bearer and ruleset version.",
            ["bearer", "ruleset_version"], registry=r)
        self.decision_seconds = Histogram(
            "deficiency_decision_duration_seconds",
            "Time to decide one facts document (validation excluded).",
            buckets=_FAST_BUCKETS, registry=r)
        self.audit_write_seconds = Histogram(
            "deficiency_audit_write_duration_seconds",
            "Time from handing a decision to the audit log until it is committed.",
            buckets=_FAST_BUCKETS, registry=r)
        self.errors = Counter(
            "deficiency_errors", "Error answers (problem+json), by kind.", ["kind"], registry=r)
        self.requests = Counter(
            "deficiency_http_requests", "HTTP requests, by method, route and status.",
            ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram(
            "deficiency_http_request_duration_seconds", "HTTP request duration, by route.",
            ["route"], buckets=_FAST_BUCKETS, registry=r)
        self.reloads = Counter(
            "deficiency_ruleset_reloads", "Ruleset reloads, by result.", ["result"], registry=r)
        # Labelled children, looked up once: labels() costs a lock and a tuple each time.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)),
                        self.request_seconds.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory and os.path.isdir(directory):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
