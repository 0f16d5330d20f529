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
    Gauge,
    Histogram,
    generate_latest,
)

from ..serving.generation import REJECTED, Verdict

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
            "deficiency_ruleset_reload",
            "Examinations of the rules directory, by result (accepted, unchanged, rejected) "
            "and trigger (api, watcher, boot).", ["result", "trigger"], registry=r)
        # Per worker (a `pid` label under `deficiency serve`): 1 for the ruleset it decides
        # with, 0 for the ones it used before. All workers on one version = converged.
        self.ruleset_info = Gauge(
            "deficiency_ruleset_info", "The ruleset this worker decides with (1).",
            ["name", "version", "sha256"], multiprocess_mode="liveall", registry=r)
        self.reload_failed = Gauge(
            "deficiency_ruleset_reload_failed",
            "1 while the last content of the rules directory examined was rejected: the "
            "files are not the active ruleset (see /readyz for the problems).",
            multiprocess_mode="livemax", registry=r)
        self.reload_timestamp = Gauge(
            "deficiency_ruleset_last_reload_timestamp_seconds",
            "When the rules directory was last examined (Unix time).",
            multiprocess_mode="livemax", registry=r)
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

    # ReloadObserver (rulesets.py)
    def ruleset_examined(self, result: str, trigger: str) -> None:
        self.reloads.labels(result, trigger).inc()

    def ruleset_active(self, previous: dict[str, str] | None, current: dict[str, str]) -> None:
        if previous is not None:
            self.ruleset_info.labels(previous["name"], previous["version"],
                                     previous["sha256"]).set(0)
        self.ruleset_info.labels(current["name"], current["version"], current["sha256"]).set(1)

    def ruleset_status(self, last: Verdict | None) -> None:
        self.reload_failed.set(1 if last is not None and last.result == REJECTED else 0)
        if last is not None:
            self.reload_timestamp.set(last.at)

    def render(self) -> tuple[bytes, str]:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory and os.path.isdir(directory):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
