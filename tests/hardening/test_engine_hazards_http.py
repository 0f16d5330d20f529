"""One test per input hazard of ../shared/ENGINE-NOTES.md, through the HTTP API of the
real server (granian, 2 workers, threads), each answered with a correct decision or a
clean 4xx problem naming the paths, and no worker process lost.

tests/engine/test_engine_hazards.py proves the same in-process against the engine;
these prove that nothing between the socket and the engine lets a hazard through.
"Correct" is the plain-Python reference evaluator's decision for the same facts
(tests/engine/test_differential.py checks it against the engine on 5,000 fact sets).
Hazards only a policy author can trigger (rule counts, constants, conditions, `$nex`)
are in test_policy_author.py.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from service import facts as facts_mod
from service import strictjson
from service.amounts import compute_amounts
from service.engine.decide import Decider
from service.policy.loader import load_ruleset
from tests.api.conftest import CAR, SHORT_SALE, facts

from .conftest import Figures, Live, auth, key_path

# Not part of the decision: its id, timing, and the receipt of its logging.
VOLATILE = ("decision_id", "evaluated_at", "duration_ms", "receipt")
HAZARDS: list[str] = []


@pytest.fixture(scope="module")
def reference(live: Live) -> Iterator[Decider]:
    decider = Decider(load_ruleset(live.rules), "reference")
    yield decider
    decider.close()


@pytest.fixture(scope="module", autouse=True)
def _report(figures: Figures) -> Iterator[None]:
    yield
    figures.add(f"engine hazards through HTTP: {len(HAZARDS)} covered ({', '.join(HAZARDS)})")


@pytest.fixture
def steady(live: Live) -> Iterator[None]:
    """No worker process dies or is replaced during the test."""
    before = live.workers()
    yield
    assert live.workers() == before, "a worker process died:\n" + live.log()[-3000:]


def raw_body(doc: dict[str, Any], **raw: str) -> str:
    """`doc` as JSON with the placeholder strings "@name" replaced by raw tokens."""
    text = json.dumps(doc)
    for name, token in raw.items():
        text = text.replace(json.dumps(f"@{name}"), token)
    return text


def correct(live: Live, reference: Decider, body: str | dict[str, Any]) -> dict[str, Any]:
    """POST the facts; the answer must be 201 and the reference evaluator's decision."""
    r = live.post("/v1/decisions", body, key="decider")
    assert r.status_code == 201, r.text[:2000]
    live.conformance.check_response("POST", r)
    decision = r.json()
    text = body if isinstance(body, str) else json.dumps(body)
    facts_ = facts_mod.validate_facts(strictjson.parse_json(text))
    expected = reference.decide_facts(facts_)
    strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE}  # noqa: E731
    assert strip(decision) == strip(expected)
    assert decision["amounts"] == {k: str(v) for k, v in compute_amounts(facts_).items()}
    return decision


def refused(live: Live, body: str | dict[str, Any], status: int, paths: list[str]) -> list[str]:
    """POST the facts; the answer must be the 4xx problem naming exactly `paths`."""
    r = live.post("/v1/decisions", body, key="decider")
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers["Content-Type"].startswith("application/problem+json")
    live.conformance.check_response("POST", r)
    got = [e["path"] for e in r.json()["errors"]]
    assert sorted(got) == sorted(paths), got
    return got


# ------------------------------------------------------------------ the hazards


def test_numbers_as_strings_are_compared_as_numbers_and_types_are_strict(
        live: Live, reference: Decider, steady: None) -> None:
    HAZARDS.append("numbers as strings")
    # As strings "900" > "1000": compared as text the sale would not cover the debt.
    d = correct(live, reference, facts(CAR, loan__unpaid_balance="900",
                                       disposition__proceeds="1000",
                                       disposition__costs={}))
    assert d["amounts"]["deficiency"] == "0.00" and d["amounts"]["surplus"] == "100.00"
    d = correct(live, reference, facts(CAR, loan__unpaid_balance="10000.00",
                                       disposition__proceeds="9000.00"))
    assert d["amounts"]["deficiency"] == "1500.00"
    # No coercion: "true" and 1 are not true, "4" is not 4.
    for path, value in (("loan__consumer", "true"), ("loan__consumer", 1),
                        ("negotiation__deficiency_waived", "false"),
                        ("collateral__dwelling_units", "4"), ("jurisdiction", 1),
                        ("loan__type", 1), ("disposition__date", 20260110)):
        refused(live, facts(CAR, **{path: value}), 422, [path.replace("__", ".")])


def test_floats_with_exponents_are_exact_or_refused(live: Live, reference: Decider,
                                                    steady: None) -> None:
    HAZARDS.append("floats with exponents")
    for token, proceeds in (("8.5e3", "8500.00"), ("1E+3", "1000.00"), ("2.5E-1", "0.25"),
                            ("0e0", "0.00"), ("1.0e2", "100.00")):
        d = correct(live, reference, raw_body(facts(CAR, disposition__proceeds="@p"), p=token))
        assert d["amounts"]["proceeds"] == proceeds, token
    for token in ("1e-05", "1e+16", "1e-400", "1E400", "1e999999999", "-1e-05",
                  "0.30000000000000004"):
        refused(live, raw_body(facts(CAR, disposition__proceeds="@p"), p=token), 422,
                ["disposition.proceeds"])
    # A number longer than the parser reads is refused before anything else.
    refused(live, raw_body(facts(CAR, disposition__proceeds="@p"), p="1" + "0" * 150),
            400, [""])


def test_inf_and_nan_are_refused(live: Live, steady: None) -> None:
    HAZARDS.append("inf/NaN")
    for token in ("NaN", "Infinity", "-Infinity"):
        refused(live, raw_body(facts(CAR, loan__fees="@v"), v=token), 400, ["loan.fees"])
        refused(live, raw_body(facts(CAR, collateral__dwelling_units="@v"), v=token), 400,
                ["collateral.dwelling_units"])
    for text in ("NaN", "nan", "Infinity", "inf", "-inf", "1e400", "sNaN"):
        refused(live, facts(CAR, loan__fees=text), 422, ["loan.fees"])


def test_strings_of_64_kib_and_more_are_refused(live: Live, reference: Decider,
                                                steady: None) -> None:
    HAZARDS.append("64 KiB strings")
    refused(live, facts(CAR, loan__id="L" * 65_536), 422, ["loan.id"])
    # Compared on a truncated 16-bit length, this would equal "CA" in the engine.
    refused(live, facts(CAR, jurisdiction="CA" + "x" * 65_534), 422, ["jurisdiction"])
    refused(live, facts(CAR, loan__type="auto" + " " * 70_000), 422, ["loan.type"])
    refused(live, facts(CAR, disposition__date="2026-01-10" + "0" * 65_536), 422,
            ["disposition.date"])
    long_key = "k" * 70_000
    refused(live, facts(CAR, **{f"loan__{long_key}": 1}), 422, [key_path("loan", long_key)])
    d = correct(live, reference, facts(CAR, loan__id="L" * 128))  # the longest id allowed
    assert d["loan_id"] == "L" * 128


def test_more_than_252_properties_are_refused(live: Live, reference: Decider,
                                              steady: None) -> None:
    HAZARDS.append(">252 properties")
    many = {f"p{i}": i for i in range(300)}
    r = live.post("/v1/decisions", {**CAR, **many}, key="decider")
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert len(errors) == facts_mod.MAX_ERRORS  # listed up to the cap, then counted
    assert errors[-1]["path"] == "" and "201 more errors not listed" in errors[-1]["message"]
    assert all(e["message"] == "unknown field" for e in errors[:-1])
    r = live.post("/v1/decisions", facts(CAR, disposition__costs={**many, "legal": "1.00"}),
                  key="decider")
    assert r.status_code == 422
    assert {e["path"] for e in r.json()["errors"][:-1]} <= {f"disposition.costs.p{i}"
                                                          for i in range(300)}
    # 300 properties below one unknown key: one error, the engine never sees them.
    refused(live, facts(CAR, loan__extra=many), 422, ["loan.extra"])
    # A legal document reads only the fields the stages need (tests/engine checks < 60).
    correct(live, reference, facts(SHORT_SALE, disposition__costs={
        k: "1.00" for k in ("repossession", "storage", "preparation", "sale", "legal",
                            "admin")}))


def test_sid_id_and_dollar_keys_are_refused_at_any_level(live: Live, steady: None) -> None:
    HAZARDS.append("sid/id/$ keys")
    doc = copy.deepcopy(CAR)
    doc.update({"sid": "other-session", "id": "dup", "$x": 1})
    doc["loan"].update({"sid": "s", "$where": "1"})
    doc["collateral"]["id"] = 7
    doc["disposition"]["costs"].update({"$add": {"$m": "legal"}})
    doc["negotiation"] = {"$": True, "state": "none"}
    doc["borrower"] = {"$nex": {"x": 1}}
    refused(live, doc, 422, ["sid", "id", "$x", "loan.sid", "loan.$where", "collateral.id",
                             "disposition.costs.$add", "negotiation.$", "borrower.$nex"])
    # Duplicates of a reserved key are a JSON error, reported by path too.
    body = json.dumps(CAR)[:-1] + ', "sid": 1, "sid": 2}'
    refused(live, body, 400, ["sid"])


def test_decimal_and_datetime_like_values_are_converted_or_refused(
        live: Live, reference: Decider, steady: None) -> None:
    HAZARDS.append("Decimal/datetime-like values")
    for path, value in (("as_of", "2026-02-01T00:00:00Z"), ("as_of", "2026-02-30"),
                        ("as_of", 20260201), ("disposition__date", "2026-1-10"),
                        ("disposition__date", "1899-12-31"), ("as_of", "2200-01-01"),
                        ("loan__unpaid_balance", "8500.000"),
                        ("loan__unpaid_balance", "8,500.00"),
                        ("loan__unpaid_balance", "-1.00"),
                        ("loan__unpaid_balance", "1000000000000.00"),
                        ("collateral__acres", "2.505")):
        refused(live, facts(CAR, **{path: value}), 422, [path.replace("__", ".")])
    # Exact decimals in, exact strings out: JSON numbers never go through a float.
    d = correct(live, reference, raw_body(facts(CAR, loan__unpaid_balance="@b",
                                                disposition__proceeds="@p"),
                                          b="999999999999.99", p="0.1"))
    assert d["amounts"]["debt"] == "999999999999.99"
    assert d["amounts"]["deficiency"] == str(Decimal("999999999999.99") + 500
                                             - Decimal("0.10"))
    for day in ("1900-01-01", "2199-12-31", "2024-02-29"):
        correct(live, reference, facts(CAR, as_of="2199-12-31", disposition__date=day))


def test_more_than_1024_sessions_in_1100_sequential_requests(live: Live, reference: Decider,
                                                             steady: None,
                                                             figures: Figures) -> None:
    HAZARDS.append("1025+ sessions (1,100 sequential requests)")
    started = time.monotonic()
    ids = []
    for i in range(1100):
        doc = facts(CAR, loan__id=f"seq-{i}", disposition__proceeds=f"{8000 + i}.00")
        r = live.post("/v1/decisions", doc, key="decider")
        assert r.status_code == 201, (i, r.text[:500])
        body = r.json()
        assert body["loan_id"] == f"seq-{i}"
        assert body["amounts"]["deficiency"] == f"{10500 - 8000 - i}.00"
        ids.append(body["decision_id"])
    elapsed = time.monotonic() - started
    assert len(set(ids)) == 1100
    # Every one was recorded, and the engine still decides right afterwards.
    for i in (0, 1023, 1024, 1099):
        r = live.get(f"/v1/decisions/{ids[i]}", key="auditor")
        assert r.status_code == 200 and r.json()["loan_id"] == f"seq-{i}"
    correct(live, reference, SHORT_SALE)
    figures.add(f"1,100 sequential decisions in {elapsed:.1f}s")


def _variants(n: int) -> list[dict[str, Any]]:
    jurisdictions = ["CA", "TX", "OH", "NY", "AZ", "FL", "NV", "NC", "OR", "WA"]
    methods = ["auction", "private_sale", "short_sale", "deed_in_lieu",
               "judicial_foreclosure", "non_judicial_foreclosure"]
    states = ["none", "in_progress", "short_sale_approved", "deed_in_lieu_agreed",
              "settlement_agreed", "judgment_sought", "judgment_obtained"]
    docs = []
    for i in range(n):
        base = SHORT_SALE if i % 2 else CAR
        doc = facts(base, loan__id=f"thr-{i}", jurisdiction=jurisdictions[i % 10],
                    disposition__method=methods[i % 6],
                    disposition__proceeds=f"{(i * 7919) % 260000}.{i % 100:02d}",
                    negotiation__state=states[i % 7],
                    negotiation__deficiency_waived=bool(i % 3 == 0))
        if states[i % 7] == "settlement_agreed":
            doc["negotiation"]["settlement_amount"] = "1000.00"
        docs.append(doc)
    return docs


def test_concurrent_requests_from_8_threads_are_each_decided_right(
        live: Live, reference: Decider, steady: None) -> None:
    HAZARDS.append("8 concurrent threads")
    docs = _variants(8 * 40)
    expected = [reference.decide(d) for d in docs]
    results: list[Any] = [None] * len(docs)
    barrier = threading.Barrier(8)

    def client(t: int) -> None:
        import requests

        session = requests.Session()
        barrier.wait()
        for i in range(t, len(docs), 8):
            try:
                r = session.post(live.base + "/v1/decisions", data=json.dumps(docs[i]),
                                 headers={"Content-Type": "application/json",
                                          **auth("decider")},
                                 timeout=60)
                results[i] = (r.status_code, r.json())
            except Exception as exc:  # reported below, with the index
                results[i] = (None, repr(exc))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE}  # noqa: E731
    wrong = [(i, results[i]) for i in range(len(docs))
             if results[i] is None or results[i][0] != 201
             or strip(results[i][1]) != strip(expected[i])]
    assert wrong == [], wrong[:3]
    assert len({r[1]["decision_id"] for r in results}) == len(docs)
