"""Concurrent decision traffic against a real server, every answer kept; and what the
audit log holds afterwards, read straight from the database.

Used by the store-fault and crash tests (docs/reliability.md §6, §7): they need to
know, per request, when it was sent and answered, what came back (status, media
type, decision id, problem type) or that no answer came at all, so that "every 2xx
is recorded", "only 503 while the store is down" and "recorded once" can be checked
request by request.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests
import sqlalchemy as sa

from tests.api.conftest import CAR, facts
from tests.hardening.conftest import auth


@dataclass
class Outcome:
    """One request and what came of it (`status` None: no answer, `error` says why)."""

    client: int
    loan_id: str
    key: str | None
    body: bytes
    started: float
    ended: float
    status: int | None = None
    content_type: str = ""
    retry_after: str | None = None
    problem_type: str | None = None
    decision_id: str | None = None
    doc: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def answer(outcome: Outcome, response: requests.Response) -> None:
    """Fill `outcome` from `response` (JSON bodies parsed; a 2xx must carry one)."""
    outcome.status = response.status_code
    outcome.content_type = (response.headers.get("Content-Type") or "").split(";")[0]
    outcome.retry_after = response.headers.get("Retry-After")
    if outcome.content_type.endswith("json"):
        outcome.doc = response.json()
        if outcome.ok:
            outcome.decision_id = outcome.doc["decision_id"]
        elif isinstance(outcome.doc, dict):
            outcome.problem_type = outcome.doc.get("type")


class Load:
    """`clients` threads, each on its own keep-alive session, posting decisions (one
    unique loan id per request) until stopped. Every `key_every`-th request carries an
    Idempotency-Key (0: none do); with `read_every`, a client reads every n-th decision
    it was answered back (GET, `audit:read`). Requests are never retried. Answers' JSON
    bodies are kept only with `keep_docs` (a long run would hold too many)."""

    def __init__(self, base: str, *, prefix: str, clients: int = 16, key_every: int = 0,
                 read_every: int = 0, timeout: float = 30.0, keep_docs: bool = False) -> None:
        self.base = base
        self.keep_docs = keep_docs
        self.prefix = prefix
        self.clients = clients
        self.key_every = key_every
        self.read_every = read_every
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self.reads: Counter[int | None] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for n in range(self.clients):
            t = threading.Thread(target=self._client, args=(n,), daemon=True,
                                 name=f"load-{n}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a client thread is stuck"

    def _client(self, n: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json", **auth("decider")}
        i = 0
        while not self._stop.is_set():
            i += 1
            loan_id = f"{self.prefix}-{n}-{i}"
            key = loan_id if self.key_every and i % self.key_every == 0 else None
            body = json.dumps(facts(CAR, loan__id=loan_id)).encode()
            outcome = Outcome(n, loan_id, key, body, time.monotonic(), 0.0)
            try:
                response = session.post(
                    self.base + "/v1/decisions", data=body, timeout=self.timeout,
                    headers={**headers, **({"Idempotency-Key": key} if key else {})})
                answer(outcome, response)
                if not self.keep_docs:
                    outcome.doc = None
            except requests.RequestException as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
                session.close()
                session = requests.Session()
            outcome.ended = time.monotonic()
            self.outcomes.append(outcome)
            if outcome.ok and self.read_every and i % self.read_every == 0:
                try:
                    r = session.get(f"{self.base}/v1/decisions/{outcome.decision_id}",
                                    headers=auth("auditor"), timeout=self.timeout)
                    self.reads[r.status_code] += 1
                except requests.RequestException:
                    self.reads[None] += 1
            if outcome.error is not None:
                time.sleep(0.01)

    # -- what happened -----------------------------------------------------------------

    def answered(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.ok]

    def wait_for_answers(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered()) < count:
            assert time.monotonic() < deadline, (
                f"only {len(self.answered())} of {count} answers in {timeout}s: "
                f"{self.statuses()}")
            time.sleep(0.02)

    def statuses(self) -> Counter[int | None]:
        return Counter(o.status for o in list(self.outcomes))

    def unanswered(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.status is None]


# ------------------------------------------------------------------ the audit log


@dataclass
class Stored:
    """What the audit table holds, read with plain SQL (not through the service)."""

    rows: int
    by_decision: dict[str, dict[str, Any]]
    decision_ids: Counter[str]
    loan_ids: Counter[str]
    keys: Counter[str]


def read_store(url: str) -> Stored:
    """Every record; each one's facts, decision and trace must parse as JSON (a record
    written halfway would not)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT seq, decision_id, loan_id, idempotency_key, request_hash,"
                " CAST(facts AS TEXT), CAST(decision AS TEXT), CAST(trace AS TEXT)"
                " FROM audit_records ORDER BY seq")).all()
    finally:
        engine.dispose()
    by_decision: dict[str, dict[str, Any]] = {}
    decision_ids: Counter[str] = Counter()
    loan_ids: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    for seq, decision_id, loan_id, key, body_hash, facts_text, decision, trace in rows:
        try:
            record = {"seq": seq, "loan_id": loan_id, "idempotency_key": key,
                      "request_hash": body_hash, "facts": json.loads(facts_text),
                      "decision": json.loads(decision), "trace": json.loads(trace)}
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"record seq={seq} {decision_id} is not whole: {exc}") from exc
        assert record["facts"]["loan"]["id"] == loan_id, (seq, decision_id)
        assert record["decision"]["decision_id"] == decision_id, (seq, decision_id)
        by_decision[decision_id] = record
        decision_ids[decision_id] += 1
        loan_ids[loan_id] += 1
        if key is not None:
            keys[key] += 1
    return Stored(len(rows), by_decision, decision_ids, loan_ids, keys)


def check_recorded(url: str, outcomes: list[Outcome], prefix: str) -> Stored:
    """Every decision answered 2xx is in the log, with the facts it was asked about, and
    nothing is in it twice: no decision id, no loan id (one request each, never
    retried by the load) and no idempotency key appears more than once."""
    stored = read_store(url)
    answered = [o for o in outcomes if o.ok]
    missing = [o.decision_id for o in answered if o.decision_id not in stored.by_decision]
    assert missing == [], f"{len(missing)} decisions answered 2xx are not in the log"
    for o in answered:
        assert stored.by_decision[str(o.decision_id)]["loan_id"] == o.loan_id, o
    assert [d for d, n in stored.decision_ids.items() if n > 1] == []
    assert [lo for lo, n in stored.loan_ids.items()
            if n > 1 and lo.startswith(prefix + "-")] == []
    assert [k for k, n in stored.keys.items() if n > 1] == []
    return stored
