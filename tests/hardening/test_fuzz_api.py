"""The API fuzzed from its own /openapi.json (schemathesis) against the real server.

Every operation of the served document gets schemathesis' coverage cases (boundary
values, every documented and undocumented method, missing and malformed parameters,
positive and negative) and then Hypothesis-generated requests, positive (valid per the
document) and negative (violating it). Every request carries the key with every scope,
so requests reach the handlers rather than stopping at 401. A generated
Idempotency-Key is made unique per request (a fixed one would answer 409 to almost
every later body), and every 201 that carried one is sent again and must come back
200 with the same decision.

Each response must be below 500 and conform to the document: schemathesis' checks
(status code documented, content type, headers, body schema) and the suite's own
(tests/api/conftest.py OpenApi: errors are problem+json, undocumented routes answer
401/404/405), strictly: no deviation is tolerated. The tests at the end pin the
amounts the document once declared too narrowly (a negative claim, 13-digit sums).

Default run: at least 1,000 requests; `-m slow`: about ten times as many.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from tests.api.conftest import CAR, facts

from .conftest import Figures, Live, auth

CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


class Fuzzer:
    def __init__(self, live: Live) -> None:
        self.live = live
        self.schema = schemathesis.openapi.from_dict(live.openapi_doc)
        self.session = requests.Session()
        self.requests = 0
        self.statuses: Counter[str] = Counter()
        self.by_phase: Counter[str] = Counter()
        self.failures: list[str] = []
        self.serial = 0

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    def send(self, case: Any, phase: str) -> None:
        self.serial += 1
        headers = case.headers
        key = (headers or {}).get("Idempotency-Key")
        if isinstance(key, str) and _VALID_KEY.match(key):
            headers["Idempotency-Key"] = f"fz{self.serial}-{uuid.uuid4().hex[:8]}-{key}"[:255]
        try:
            response = case.call(base_url=self.live.base, session=self.session,
                                 headers=auth("all"), timeout=60)
        except requests.RequestException as exc:  # the server dropped the connection
            self._fail(case, f"no answer: {exc!r}")
            return
        self._count(case, phase, response)
        self._validate(case, response)
        key = (case.headers or {}).get("Idempotency-Key")
        if (case.method == "POST" and case.path == "/v1/decisions"
                and response.status_code == 201 and key):
            again = case.call(base_url=self.live.base, session=self.session,
                              headers=auth("all"), timeout=60)
            self._count(case, "idempotent replay", again)
            self._validate(case, again)
            if again.status_code != 200 or again.json() != response.json():
                self._fail(case, f"replay with the same key: {again.status_code} "
                                 f"{again.content[:300]!r}")

    def _count(self, case: Any, phase: str, response: Any) -> None:
        self.requests += 1
        self.by_phase[phase] += 1
        self.statuses[f"{case.method} {case.path} {response.status_code}"] += 1

    def _validate(self, case: Any, response: Any) -> None:
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # schemathesis' FailureGroup is an exception group
            self._fail(case, str(exc)[:3000])
        path = requests.utils.urlparse(response.request.url).path
        try:
            self.live.conformance.check(case.method, path, response.status_code,
                                        response.headers, response.content)
        except AssertionError as exc:
            self._fail(case, f"{case.method} {path} -> {response.status_code}: {exc}"[:3000])

    def _fail(self, case: Any, message: str) -> None:
        if len(self.failures) < 20:
            try:
                curl = case.as_curl_command()
            except Exception:  # pragma: no cover - only for the report
                curl = f"{case.method} {case.path}"
            self.failures.append(f"{message}\n    {curl[:2000]}")
        else:
            self.failures.append("...")

    def coverage(self) -> None:
        for op in self.operations():
            cases = self.schema.iter_coverage_cases(
                op, generation_modes=list(MODES),
                generation_config=self.schema.config.generation_for(operation=op))
            for case in cases:
                self.send(case, "coverage")

    def fuzz(self, examples: Callable[[Any], int]) -> None:
        for op in self.operations():
            for mode in MODES:
                try:
                    self._run(op, mode, examples(op))
                except Unsatisfiable:
                    # Nothing to make invalid (/healthz, /readyz, /metrics take no input).
                    assert mode is GenerationMode.NEGATIVE, op.label

    def _run(self, op: Any, mode: GenerationMode, n: int) -> None:
        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            self.send(case, f"fuzz {mode.value}")

        run()


def examples_for(default_post: int, default_other: int) -> Callable[[Any], int]:
    return lambda op: default_post if op.method.upper() == "POST" else default_other


def _fuzz(live: Live, figures: Figures, post_examples: int, other_examples: int,
          minimum: int) -> None:
    before = live.workers()
    started = time.monotonic()
    fuzzer = Fuzzer(live)
    fuzzer.coverage()
    fuzzer.fuzz(examples_for(post_examples, other_examples))
    # The document and the hidden benchmark route are not operations of the document.
    for _ in range(3):
        r = fuzzer.session.get(live.base + "/openapi.json", timeout=30)
        fuzzer.requests += 1
        live.conformance.check_response("GET", r)
    elapsed = time.monotonic() - started
    statuses = Counter(s.rsplit(" ", 1)[1] for s in fuzzer.statuses.elements())
    figures.add(f"fuzzed API: {fuzzer.requests} requests in {elapsed:.0f}s over "
                f"{len(fuzzer.operations())} operations ("
                + ", ".join(f"{k} {v}" for k, v in sorted(fuzzer.by_phase.items())) + "); "
                "statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    assert fuzzer.failures == [], "\n\n".join(fuzzer.failures[:10])
    assert not any(s.startswith("5") for s in statuses), statuses
    assert fuzzer.requests >= minimum, fuzzer.requests
    assert live.workers() == before, "a worker process died:\n" + live.log()[-3000:]


def test_fuzzed_requests_get_no_5xx_and_conforming_answers(live: Live,
                                                           figures: Figures) -> None:
    _fuzz(live, figures, post_examples=40, other_examples=15, minimum=1000)


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_conforming_answers_long(live: Live,
                                                                figures: Figures) -> None:
    _fuzz(live, figures, post_examples=1500, other_examples=300, minimum=10_000)


# ------------------------------------------------------------------ computed amounts

M = "999999999999.99"
COSTS = {k: M for k in ("repossession", "storage", "preparation", "sale", "legal", "admin")}


# Once a known deviation (the document declared every output amount 12 digits, never
# negative); now a regression test: each extreme of SPEC §3 conforms to /openapi.json.
@pytest.mark.parametrize("changes", [
    {"disposition__credits": "20000.00"},  # claim = 10500 - 20000 < 0
    {"disposition__credits": M, "loan__unpaid_balance": "0",
     "disposition__costs": {}},  # the most negative claim: -999,999,999,999.99
    {"loan__unpaid_balance": M, "loan__accrued_interest": M, "loan__fees": M,
     "disposition__proceeds": "0"},  # debt = 2,999,999,999,999.97
    {"loan__unpaid_balance": M, "loan__accrued_interest": M, "loan__fees": M,
     "disposition__costs": COSTS, "disposition__proceeds": "0"},  # claim = 9 x M
    {"loan__unpaid_balance": "0", "disposition__costs": {}, "disposition__credits": M,
     "disposition__proceeds": M},  # surplus = 2 x M
], ids=["negative-claim", "most-negative-claim", "13-digit-debt", "largest-claim",
        "largest-surplus"])
def test_every_computed_amount_conforms_to_the_document(live: Live,
                                                       changes: dict[str, Any]) -> None:
    r = live.post("/v1/decisions", facts(CAR, **changes))
    assert r.status_code == 201, r.text
    live.conformance.openapi.validate("POST", "/v1/decisions", r)


def test_the_decision_behind_a_negative_claim_is_itself_right(live: Live) -> None:
    """The amounts behind a negative claim are right (SPEC §3)."""
    r = live.post("/v1/decisions", facts(CAR, disposition__credits="20000.00"))
    assert r.status_code == 201, r.text
    amounts = r.json()["amounts"]
    assert amounts["claim"] == "-9500.00" and amounts["surplus"] == "18000.00"
    assert json.loads(r.text)["outcome"]["surplus_to_borrower"] == "18000.00"
