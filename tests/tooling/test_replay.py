"""`deficiency replay`: re-deciding the audit log with a candidate ruleset.

The log is filled through the real path (Decider with the project's rules, then
`store.append`); the candidate is a copy of rules/ with Nevada taken out of the
fair-value states. What the replay must report is worked out here, independently,
from the facts the test generated (SPEC §3 and the fair-value row of §6).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service import facts as facts_mod
from service.audit import AuditStore, NewRecord, open_store
from service.cli import main
from service.engine.decide import Decider
from service.policy.loader import load_ruleset
from service.tooling import replay as replay_mod

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
FAIR_VALUE_LINE = "fair_value_states: [AZ, CA, FL, NC, NV, NY, TX]"
PG_ADMIN_URL = os.environ.get("REPLAY_TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class Case:
    """One recorded decision and what removing NV from the fair-value states does to it."""

    raw: dict[str, Any]
    recorded_at: datetime
    old_bearer: str
    new_bearer: str
    owes_delta: Decimal  # new - old borrower_owes
    version: str = "2026.12.0"

    @property
    def changes(self) -> bool:
        return self.owes_delta != 0 or self.old_bearer != self.new_bearer

    @property
    def jurisdiction(self) -> str:
        return self.raw["jurisdiction"]

    @property
    def loan_type(self) -> str:
        return self.raw["loan"]["type"]


def foreclosure(loan_id: str, state: str, balance: int, proceeds: int, *,
                fair_value: int | None, method: str = "judicial_foreclosure",
                as_of: str = "2026-03-01", negotiation: str = "none") -> dict[str, Any]:
    raw: dict[str, Any] = {
        "as_of": as_of,
        "jurisdiction": state,
        "loan": {"id": loan_id, "type": "mortgage", "unpaid_balance": f"{balance}.00",
                 "accrued_interest": "1234.56"},
        "collateral": {"kind": "dwelling", "dwelling_units": 1},
        "disposition": {"method": method, "date": "2026-02-01", "proceeds": f"{proceeds}.00",
                        "costs": {"legal": "2500.00", "sale": "999.44"}},
        "negotiation": {"state": negotiation},
    }
    if fair_value is not None:
        raw["collateral"]["fair_value"] = f"{fair_value}.00"
    return raw


def car(loan_id: str, state: str, balance: int, proceeds: int) -> dict[str, Any]:
    return {
        "as_of": "2026-03-01", "jurisdiction": state,
        "loan": {"id": loan_id, "type": "auto", "unpaid_balance": f"{balance}.00"},
        "collateral": {"kind": "vehicle"},
        "disposition": {"method": "auction", "date": "2026-02-01", "proceeds": f"{proceeds}.00",
                        "costs": {"repossession": "450.00"}},
    }


def claim_of(raw: dict[str, Any]) -> Decimal:
    """SPEC §3: debt + costs - credits (the generated facts have no credits)."""
    loan = raw["loan"]
    debt = Decimal(loan["unpaid_balance"]) + Decimal(loan.get("accrued_interest", "0"))
    costs = sum((Decimal(v) for v in raw["disposition"].get("costs", {}).values()), Decimal(0))
    return debt + costs


def make_cases() -> list[Case]:
    cases: list[tuple[dict[str, Any], str, str, Decimal, str]] = []
    version = "2026.12.0"
    for i in range(12):  # NV, proceeds < fair value < claim: shared -> borrower
        balance = 150_000 + 7_919 * i
        proceeds = balance * 7 // 10
        fair_value = proceeds + 1_000 + 1_733 * i
        method = "non_judicial_foreclosure" if i % 3 == 0 else "judicial_foreclosure"
        raw = foreclosure(f"NV-SHARED-{i}", "NV", balance, proceeds, fair_value=fair_value,
                          method=method)
        # old owes claim - fair value, new owes the deficiency: the fair-value cushion moves.
        cases.append((raw, "shared", "borrower", Decimal(fair_value - proceeds), version))
    for i in range(5):  # NV, fair value above the whole claim: lender -> borrower
        balance = 90_000 + 10_007 * i
        proceeds = balance - 20_000
        raw = foreclosure(f"NV-LENDER-{i}", "NV", balance, proceeds, fair_value=balance + 50_000)
        cases.append((raw, "lender", "borrower", claim_of(raw) - proceeds, version))
    for i in range(4):  # NV, fair value not above the proceeds: the rule never matched
        raw = foreclosure(f"NV-LOWFV-{i}", "NV", 200_000, 150_000, fair_value=140_000 + i)
        cases.append((raw, "borrower", "borrower", Decimal(0), version))
    for i in range(3):  # NV without a fair value
        raw = foreclosure(f"NV-NOFV-{i}", "NV", 120_000 + i, 100_000, fair_value=None)
        cases.append((raw, "borrower", "borrower", Decimal(0), version))
    for i in range(2):  # NV in negotiation: pending outranks the fair-value limit
        raw = foreclosure(f"NV-PENDING-{i}", "NV", 200_000, 150_000, fair_value=170_000,
                          negotiation="in_progress")
        cases.append((raw, "pending", "pending", Decimal(0), version))
    for i in range(2):  # NV, more than 180 days after the sale: time-barred on its as_of
        raw = foreclosure(f"NV-BARRED-{i}", "NV", 200_000, 150_000, fair_value=170_000,
                          as_of="2026-09-30")
        cases.append((raw, "lender", "lender", Decimal(0), version))
    for i in range(6):  # NV cars
        cases.append((car(f"NV-CAR-{i}", "NV", 12_000 + i, 8_000), "borrower", "borrower",
                      Decimal(0), version))
    for i, state in enumerate(["FL", "NY", "FL", "NY", "NC", "TX"]):  # still fair-value states
        raw = foreclosure(f"{state}-FV-{i}", state, 200_000, 150_000, fair_value=170_000 + i)
        cases.append((raw, "shared", "shared", Decimal(0), version))
    for i in range(6):
        cases.append((car(f"OH-CAR-{i}", "OH", 10_000 + 100 * i, 8_500), "borrower",
                      "borrower", Decimal(0), version))
    old_version = "2026.10.0"
    for i in range(3):  # decided by an older ruleset version
        balance = 180_000 + 1_000 * i
        proceeds = 120_000
        raw = foreclosure(f"NV-OLDVER-{i}", "NV", balance, proceeds, fair_value=130_000)
        cases.append((raw, "shared", "borrower", Decimal(10_000), old_version))
    return [Case(raw, T0 + timedelta(days=n), old, new, delta, ver)
            for n, (raw, old, new, delta, ver) in enumerate(cases)]


CASES = make_cases()


def record_cases(store: AuditStore, cases: list[Case], rulesets: dict[str, Path]) -> None:
    """Decide each case with the ruleset of its version and append it, as the API does."""
    deciders = {version: Decider(load_ruleset(path)) for version, path in rulesets.items()}
    try:
        records = []
        for case in cases:
            facts = facts_mod.validate_facts(case.raw)
            decision = deciders[case.version].decide_facts(facts)
            assert decision["outcome"]["bearer"] == case.old_bearer, case.raw["loan"]["id"]
            ruleset = decision["ruleset"]
            records.append(NewRecord(
                decision_id=decision["decision_id"],
                recorded_at=case.recorded_at,
                loan_id=decision["loan_id"],
                ruleset_name=ruleset["name"],
                ruleset_version=ruleset["version"],
                ruleset_sha256=ruleset["sha256"],
                facts=facts_mod.to_json_facts(facts),
                decision={k: v for k, v in decision.items() if k != "trace"},
                trace=decision["trace"],
                duration_ms=decision["duration_ms"],
            ))
        store.append(records)
    finally:
        for decider in deciders.values():
            decider.close()


def copy_rules(target: Path, edit: tuple[str, str] | None = None,
               file: str = "ruleset.yaml") -> Path:
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("tests"))
    if edit is not None:
        path = target / file
        text = path.read_text()
        assert edit[0] in text
        path.write_text(text.replace(edit[0], edit[1]))
    return target


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replay")
    return {
        "old": copy_rules(base / "old-rules", ('version: "2026.12.0"', 'version: "2026.10.0"')),
        "same": copy_rules(base / "same"),
        "no-nv": copy_rules(base / "no-nv", (FAIR_VALUE_LINE, FAIR_VALUE_LINE.replace(
            "NV, ", ""))),
    }


@pytest.fixture(scope="module")
def log_url(tmp_path_factory: pytest.TempPathFactory, dirs: dict[str, Path]) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('log') / 'audit.db'}"
    store = open_store(url)
    try:
        record_cases(store, CASES, {"2026.12.0": RULES, "2026.10.0": dirs["old"]})
    finally:
        store.close()
    return url


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["replay", *argv], out=out)
    return code, out.getvalue()


def replay_json(url: str, candidate: Path, *extra: str) -> dict[str, Any]:
    code, text = run_cli("--candidate", str(candidate), "--url", url, "--workers", "1",
                         "--format", "json", *extra)
    assert code == 0, text
    return json.loads(text)


def expected(cases: list[Case]) -> dict[str, Any]:
    changed = [c for c in cases if c.changes]
    delta = sum((c.owes_delta for c in changed), Decimal(0))
    nv = sum((c.owes_delta for c in changed if c.jurisdiction == "NV"), Decimal(0))
    return {
        "evaluated": len(cases),
        "changed": len(changed),
        "transitions": Counter((c.old_bearer, c.new_bearer) for c in changed),
        "owes": f"{delta:.2f}", "absorbs": f"{-delta:.2f}",
        "nv_owes": f"{nv:.2f}", "nv_absorbs": f"{-nv:.2f}",
        "loans": [c.raw["loan"]["id"] for c in changed],
    }


def transitions(report: dict[str, Any]) -> Counter[tuple[str, str]]:
    return Counter({(t["from"], t["to"]): t["count"] for t in report["transitions"]})


def nv_row(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["money"]["by_jurisdiction"] if r["jurisdiction"] == "NV")


# --------------------------------------------------------------------------- the impact


def test_removing_nevada_from_fair_value_states(log_url: str, dirs: dict[str, Path]) -> None:
    store = open_store(log_url)
    before = store.count()
    report = replay_json(log_url, dirs["no-nv"])
    want = expected(CASES)
    assert want["changed"] == 20 and want["evaluated"] == len(CASES) == 49
    assert report["evaluated"] == report["scanned"] == want["evaluated"]
    assert report["changed"] == want["changed"]
    assert report["failed"] == 0
    assert transitions(report) == Counter({("shared", "borrower"): 15, ("lender", "borrower"): 5})
    assert transitions(report) == want["transitions"]
    assert report["money"]["borrower_owes_delta"] == want["owes"]
    assert report["money"]["lender_absorbs_delta"] == want["absorbs"]
    assert nv_row(report) == {"jurisdiction": "NV", "evaluated": 37, "changed": 20,
                              "borrower_owes_delta": want["nv_owes"],
                              "lender_absorbs_delta": want["nv_absorbs"]}
    assert report["changed_fields"]["bearer"] == 20
    assert [c["loan_id"] for c in report["changes"]] == want["loans"]  # log order
    first = report["changes"][0]
    assert first["old"]["bearer"] == "shared" and first["new"]["bearer"] == "borrower"
    assert first["rule"] == {"old": "fair-value-limit", "new": "mortgage-recourse-default"}
    assert first["as_of"] == "2026-03-01"
    # Other jurisdictions are evaluated, and unchanged.
    others = {r["jurisdiction"]: r for r in report["money"]["by_jurisdiction"]}
    assert set(others) == {"FL", "NC", "NV", "NY", "OH", "TX"}
    assert all(r["changed"] == 0 and r["borrower_owes_delta"] == "0.00"
               for code, r in others.items() if code != "NV")
    # Read only: nothing appended, the chain untouched.
    assert store.count() == before == len(CASES)
    assert store.verify().ok
    store.close()


def test_unchanged_candidate_changes_nothing(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["same"], "--ruleset-version", "2026.12.0")
    assert report["evaluated"] == len([c for c in CASES if c.version == "2026.12.0"])
    assert report["changed"] == 0 and report["changes"] == [] and report["transitions"] == []
    assert report["money"]["borrower_owes_delta"] == "0.00"


def test_workers_give_the_same_report(log_url: str, dirs: dict[str, Path]) -> None:
    one = replay_json(log_url, dirs["no-nv"])
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "2", "--format", "json")
    assert code == 0
    assert json.loads(text) == one  # deterministic: order and content


def test_parallel_replay_in_small_chunks(log_url: str, dirs: dict[str, Path]) -> None:
    store = open_store(log_url)
    try:
        tally = replay_mod.replay(store, dirs["no-nv"], workers=2, chunk_size=3)
    finally:
        store.close()
    want = expected(CASES)
    assert (tally.evaluated, tally.changed) == (want["evaluated"], want["changed"])
    assert [c["loan_id"] for c in tally.changes] == want["loans"]
    assert f"{tally.borrower_owes_delta:.2f}" == want["owes"]


def test_candidate_changed_under_the_workers_is_refused(log_url: str,
                                                        dirs: dict[str, Path]) -> None:
    # The parent checked one ruleset; the workers find another in the directory.
    store = open_store(log_url)
    try:
        with pytest.raises(replay_mod.ReplayError, match="changed during the replay"):
            replay_mod.replay(store, dirs["no-nv"], workers=2,
                              ruleset=load_ruleset(dirs["same"]))
    finally:
        store.close()


# --------------------------------------------------------------------------- filters


def test_filter_by_jurisdiction_and_loan_type(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"], "--jurisdiction", "nv", "--loan-type", "auto")
    assert (report["evaluated"], report["changed"]) == (6, 0)
    assert report["filters"]["jurisdictions"] == ["NV"]
    report = replay_json(log_url, dirs["no-nv"], "--jurisdiction", "FL", "--jurisdiction", "NY")
    assert (report["evaluated"], report["changed"]) == (4, 0)
    report = replay_json(log_url, dirs["no-nv"], "--loan-type", "mortgage")
    want = expected([c for c in CASES if c.loan_type == "mortgage"])
    assert (report["evaluated"], report["changed"]) == (want["evaluated"], want["changed"])
    assert report["scanned"] == len(CASES)


def test_filter_by_time(log_url: str, dirs: dict[str, Path]) -> None:
    since, until = T0 + timedelta(days=10), T0 + timedelta(days=30)
    report = replay_json(log_url, dirs["no-nv"], "--since", "2026-01-11T09:00:00Z",
                         "--until", "2026-01-31T09:00:00+00:00")
    want = expected([c for c in CASES if since <= c.recorded_at < until])
    assert report["scanned"] == report["evaluated"] == want["evaluated"] == 20
    assert report["changed"] == want["changed"]
    assert report["money"]["borrower_owes_delta"] == want["owes"]
    # A date is midnight UTC; a timestamp without an offset is UTC.
    report = replay_json(log_url, dirs["no-nv"], "--since", "2026-02-01",
                         "--until", "2026-02-05T09:00:00Z")
    assert [c["loan_id"] for c in report["changes"]] == []
    assert report["evaluated"] == len([c for c in CASES if datetime(2026, 2, 1, tzinfo=UTC)
                                       <= c.recorded_at < datetime(2026, 2, 5, 9, tzinfo=UTC)])


def test_filter_by_ruleset_version(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"], "--ruleset-version", "2026.10.0")
    want = expected([c for c in CASES if c.version == "2026.10.0"])
    assert (report["evaluated"], report["changed"]) == (3, 3)
    assert report["money"]["borrower_owes_delta"] == want["owes"] == "30000.00"
    assert {c["ruleset_version"] for c in report["changes"]} == {"2026.10.0"}
    assert replay_json(log_url, dirs["no-nv"], "--ruleset-version", "1999.1")["scanned"] \
        == len(CASES)


# --------------------------------------------------------------------------- output


def test_json_report_schema(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"], "--jurisdiction", "NV", "--since",
                         "2026-01-01")
    assert report["schema"] == "deficiency.replay/1"
    assert list(report) == ["schema", "candidate", "store", "filters", "scanned", "held",
                            "evaluated", "changed", "failed", "warnings", "changed_fields",
                            "transitions", "money", "changes_limit", "changes_shown",
                            "changes", "failures"]
    assert list(report["held"]) == ["jurisdictions", "loan_types"]
    assert list(report["held"]["jurisdictions"][0]) == ["jurisdiction", "records"]
    assert list(report["held"]["loan_types"][0]) == ["loan_type", "records"]
    assert (report["changes_limit"], report["changes_shown"]) == (50, report["changed"])
    assert report["candidate"]["name"] == "deficiency-default"
    assert report["candidate"]["version"] == "2026.12.0"
    assert re.fullmatch(r"[0-9a-f]{64}", report["candidate"]["sha256"])
    assert report["filters"] == {"since": "2026-01-01T00:00:00.000000Z", "until": None,
                                 "jurisdictions": ["NV"], "loan_types": [],
                                 "ruleset_version": None}
    assert list(report["changed_fields"]) == ["bearer", "action", "borrower_owes",
                                              "lender_absorbs", "credit_category", "tax_form",
                                              "event_code"]
    assert list(report["money"]) == ["borrower_owes_delta", "lender_absorbs_delta",
                                     "by_jurisdiction"]
    change = report["changes"][0]
    assert list(change) == ["decision_id", "loan_id", "jurisdiction", "recorded_at",
                            "ruleset_version", "as_of", "fields", "old", "new", "rule"]
    assert list(change["old"]) == list(change["new"]) == list(report["changed_fields"])
    assert re.fullmatch(r"2026-01-01T09:00:00\.000000Z", change["recorded_at"])
    assert re.fullmatch(r"-?[0-9]+\.[0-9]{2}", report["money"]["lender_absorbs_delta"])


def test_text_report(log_url: str, dirs: dict[str, Path]) -> None:
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url)  # one per CPU
    assert code == 0
    want = expected(CASES)
    assert "Evaluated 49 of 49 recorded decisions" in text
    assert "20 changed (40.82%)" in text
    assert re.search(r"^  shared\s+borrower\s+15$", text, re.M)
    assert re.search(r"^  lender\s+borrower\s+5$", text, re.M)
    owes = f"{Decimal(want['nv_owes']):+,.2f}"
    assert re.search(rf"^  NV\s+37\s+20\s+{re.escape(owes)}\s+-", text, re.M)
    assert re.search(rf"^  total\s+49\s+20\s+{re.escape(owes)}", text, re.M)
    assert "no change in: FL, NC, NY, OH, TX" in text
    assert "NV-SHARED-0" in text and "fair-value-limit -> mortgage-recourse-default" in text


# --------------------------------------------------------------------------- what the log held


def held(cases: list[Case]) -> dict[str, Any]:
    """The "held" part of the JSON report for these cases."""
    by_code = Counter(c.jurisdiction for c in cases)
    by_type = Counter(c.loan_type for c in cases)
    return {"jurisdictions": [{"jurisdiction": k, "records": n}
                              for k, n in sorted(by_code.items())],
            "loan_types": [{"loan_type": k, "records": n} for k, n in sorted(by_type.items())]}


def test_json_report_says_what_the_log_held(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"])
    assert report["held"] == held(CASES)
    assert report["held"]["jurisdictions"][-1] == {"jurisdiction": "TX", "records": 1}
    # Counted before the filters, so a filter cannot hide what the log holds ...
    assert replay_json(log_url, dirs["no-nv"], "--jurisdiction", "OH")["held"] == held(CASES)
    # ... but within the time window, like `scanned`.
    since, until = T0 + timedelta(days=10), T0 + timedelta(days=30)
    report = replay_json(log_url, dirs["no-nv"], "--since", "2026-01-11T09:00:00Z",
                         "--until", "2026-01-31T09:00:00Z")
    assert report["held"] == held([c for c in CASES if since <= c.recorded_at < until])


def test_text_report_says_what_the_log_held(log_url: str, dirs: dict[str, Path]) -> None:
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "1", "--loan-type", "auto")
    assert code == 0
    assert "\nHeld in the whole log: 49 recorded decisions\n" \
           "  by jurisdiction: FL 2, NC 1, NV 37, NY 2, OH 6, TX 1\n" \
           "  by loan type: auto 12, mortgage 37\n" \
           "Evaluated 12 of 49 recorded decisions" in text
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "1", "--since", "2026-02-16")
    assert "\nHeld in the time window: 3 recorded decisions\n" \
           "  by jurisdiction: NV 3\n  by loan type: mortgage 3\n" in text


# --------------------------------------------------------------------------- warnings

#: What the rules in rules/ name in conditions and the test log does not hold.
UNHELD_CODES = "AK, AZ, CA, MN, MT, OR, WA"


@pytest.fixture(scope="module")
def with_ok(dirs: dict[str, Path]) -> Path:
    """A candidate that adds OK to the fair-value states: it names OK."""
    return copy_rules(dirs["old"].parent / "with-ok",
                      (FAIR_VALUE_LINE, FAIR_VALUE_LINE.replace("NY, ", "NY, OK, ")))


def test_warning_when_the_candidate_names_what_the_log_lacks(
        log_url: str, dirs: dict[str, Path], with_ok: Path) -> None:
    report = replay_json(log_url, with_ok)
    assert report["warnings"] == [
        f"the log holds no decision in {UNHELD_CODES.replace('MT, ', 'MT, OK, ')}, which "
        "the candidate's rules name: replay cannot show their effect",
        "the log holds no decision on loan type other_secured, which the candidate's rules "
        "name: replay cannot show its effect"]
    code, text = run_cli("--candidate", str(with_ok), "--url", log_url, "--workers", "1")
    assert code == 0
    assert re.search(r"^warning: the log holds no decision in AK, .*\bOK\b.*: replay cannot "
                     r"show their effect$", text, re.M)
    assert re.search(r"^warning: the log holds no decision on loan type other_secured, ",
                     text, re.M)
    # Held jurisdictions the candidate names (NV, FL, ...) are never in a warning.
    assert not re.search(r"\b(NV|FL|NC|NY|TX|mortgage|auto)\b", " ".join(report["warnings"]))


def test_no_warning_for_what_the_filters_leave_out(log_url: str, with_ok: Path) -> None:
    report = replay_json(log_url, with_ok, "--jurisdiction", "NV", "--loan-type", "mortgage")
    assert report["warnings"] == []
    code, text = run_cli("--candidate", str(with_ok), "--url", log_url, "--workers", "1",
                         "--jurisdiction", "NV", "--loan-type", "mortgage")
    assert code == 0 and "warning" not in text
    # A filter that asks for OK on purpose still hears that the log holds none, and
    # that the mortgages it holds were all left out (they are in other states).
    report = replay_json(log_url, with_ok, "--jurisdiction", "OK", "--loan-type", "mortgage")
    assert report["warnings"] == [
        "the log holds no decision in OK, which the candidate's rules name: replay cannot "
        "show its effect",
        "no decision on loan type mortgage was evaluated (the log holds some, but the other "
        "filters or failures left them out), which the candidate's rules name: replay cannot "
        "show its effect"]


def test_warning_when_other_filters_leave_out_what_the_log_holds(
        log_url: str, dirs: dict[str, Path]) -> None:
    # The older ruleset decided NV mortgages only: FL, NC, NY, TX and cars go unseen.
    report = replay_json(log_url, dirs["no-nv"], "--ruleset-version", "2026.10.0")
    assert "no decision in FL, NC, NY, TX was evaluated (the log holds some, but the other " \
           "filters or failures left them out), which the candidate's rules name: replay " \
           "cannot show their effect" in report["warnings"]
    assert any(w.startswith("no decision on loan type auto was evaluated")
               for w in report["warnings"])


def test_no_warning_when_the_log_holds_what_the_candidate_names(
        tmp_path: Path, dirs: dict[str, Path], with_ok: Path) -> None:
    ok = foreclosure("OK-FV-0", "OK", 200_000, 150_000, fair_value=170_000)
    cases = [*CASES, Case(ok, T0 - timedelta(days=1), "borrower", "shared",
                          Decimal(-20_000))]
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    try:
        record_cases(store, cases, {"2026.12.0": RULES, "2026.10.0": dirs["old"]})
    finally:
        store.close()
    report = replay_json(url, with_ok, "--loan-type", "mortgage")
    assert report["warnings"] == [f"the log holds no decision in {UNHELD_CODES}, which the "
                                  "candidate's rules name: replay cannot show their effect"]
    assert {"jurisdiction": "OK", "records": 1} in report["held"]["jurisdictions"]
    assert report["changes"][0]["loan_id"] == "OK-FV-0"


# --------------------------------------------------------------------------- the changed list


def test_limit_caps_the_changed_list(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"], "--limit", "5")
    want = expected(CASES)
    assert (report["changed"], report["changes_limit"], report["changes_shown"]) == (20, 5, 5)
    assert [c["loan_id"] for c in report["changes"]] == want["loans"][:5]
    assert report["money"]["borrower_owes_delta"] == want["owes"]  # sums cover all 20
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "1", "--limit", "5")
    assert code == 0
    assert "Changed decisions (log order, the first 5 of 20):" in text
    assert re.search(r"^  15 more not shown: --limit N lists the first N, --all lists every "
                     r"one\.$", text, re.M)
    listed = [loan for loan in want["loans"] if re.search(rf"^  {loan}\s", text, re.M)]
    assert listed == want["loans"][:5]


def test_all_lists_every_change(log_url: str, dirs: dict[str, Path]) -> None:
    report = replay_json(log_url, dirs["no-nv"], "--all")
    assert (report["changes_limit"], report["changes_shown"]) == (None, 20)
    assert len(report["changes"]) == 20
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "1", "--all")
    assert "Changed decisions (log order):" in text and "more not shown" not in text
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url,
                         "--workers", "1", "--limit", "0")
    assert code == 0
    assert "Changed decisions: 20 not listed (--limit N or --all to list them)." in text
    assert "NV-SHARED-0" not in text


def test_limit_and_all_exclude_each_other(log_url: str, dirs: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("--candidate", str(dirs["no-nv"]), "--url", log_url, "--limit", "5", "--all")
    assert exit_.value.code == 2
    assert "--all: not allowed with argument --limit" in capsys.readouterr().err


def test_the_default_limit_is_50() -> None:
    change = {"loan_id": "L", "decision_id": "D", "jurisdiction": "NV",
              "old": {"bearer": "shared", "borrower_owes": "1.00"},
              "new": {"bearer": "borrower", "borrower_owes": "2.00"},
              "rule": {"old": "a", "new": "b"}, "fields": ["bearer"]}
    tally = replay_mod.Tally(evaluated=60, changes=[change] * 60)
    report = replay_mod.ReplayReport("c", {"name": "n", "version": "v", "sha256": "0" * 64},
                                     "s", replay_mod.Filters(), tally)
    doc = replay_mod.report_json(report)
    assert (doc["changed"], doc["changes_limit"], doc["changes_shown"]) == (60, 50, 50)
    assert len(doc["changes"]) == 50
    assert "  10 more not shown: " in replay_mod.render_text(report)


# --------------------------------------------------------------------------- command line


REPLAY_OPTIONS = {"--candidate", "--config", "--url", "--since", "--until", "--jurisdiction",
                  "--loan-type", "--ruleset-version", "--workers", "--format", "--limit",
                  "--all", "--out", "--console-url"}


def test_every_replay_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    entries = re.split(r"\n(?=  -)", text.split("\noptions:\n", 1)[1])
    by_option = {entry.split()[0].rstrip(","): entry for entry in entries}
    assert REPLAY_OPTIONS | {"-h"} == set(by_option)
    for option in REPLAY_OPTIONS:  # the option, its metavar, then words of help
        assert len(by_option[option].split()) >= 4, by_option[option]
def test_invalid_candidate_exits_2_with_the_first_problem(
        log_url: str, dirs: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = copy_rules(tmp_path / "bad", ("cod_reporting_threshold: 600.00",
                                        "cod_reporting_threshold: [600.00"))
    code, out = run_cli("--candidate", str(bad), "--url", log_url)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(r"invalid candidate ruleset: .*ruleset\.yaml:\d+:\d+: ", err)
    bad = copy_rules(tmp_path / "bad2", ("priority: 500", "priority: high"), "bearer.yaml")
    assert run_cli("--candidate", str(bad), "--url", log_url)[0] == 2
    assert re.search(r"bearer\.yaml:\d+:\d+: .*priority", capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [
    (["--since", "yesterday"], "--since: 'yesterday' is not an ISO date"),
    (["--until", "2026-02-30"], "--until: '2026-02-30' is not an ISO date"),
    # A time without an offset is refused, as the API refuses it: never read as UTC.
    (["--until", "2026-02-05T09:00:00"], "--until: '2026-02-05T09:00:00' is not an ISO date"),
    (["--since", "2026-02-01", "--until", "2026-01-01"], "--since must be before --until"),
    (["--jurisdiction", "ZZ"], "--jurisdiction: unknown code 'ZZ'"),
    (["--loan-type", "boat"], "--loan-type: unknown type 'boat'"),
    (["--workers", "0"], "--workers: must be from 1 to 256"),
    (["--limit", "-1"], "--limit: must be 0 or more"),
])
def test_bad_options_exit_2(log_url: str, dirs: dict[str, Path], argv: list[str],
                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli("--candidate", str(dirs["same"]), "--url", log_url, *argv)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_or_bad_store_exits_2(dirs: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "audit.db"
    assert run_cli("--candidate", str(dirs["same"]), "--url", f"sqlite:///{missing}")[0] == 2
    assert f"no audit log at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()  # a replay never creates a log
    assert run_cli("--candidate", str(dirs["same"]), "--url", "mysql://x/y")[0] == 2
    assert "audit store: unsupported" in capsys.readouterr().err


def test_store_url_from_configuration(log_url: str, dirs: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEFICIENCY_CONFIG", raising=False)
    monkeypatch.setenv("DEFICIENCY_AUDIT_URL", log_url)
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--workers", "1",
                         "--format", "json")
    assert code == 0 and json.loads(text)["changed"] == 20
    config = tmp_path / "replay.yaml"
    config.write_text("audit:\n  url: 42\n")
    monkeypatch.delenv("DEFICIENCY_AUDIT_URL")
    assert run_cli("--candidate", str(dirs["no-nv"]), "--config", str(config))[0] == 2
    assert "configuration: " in capsys.readouterr().err


def test_unreadable_stored_facts_are_reported_not_fatal(tmp_path: Path,
                                                        dirs: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    try:
        record_cases(store, CASES[:2], {"2026.12.0": RULES})
        good = store.iter_records().__next__()
        broken = {**good["facts"], "jurisdiction": "XX"}
        store.append([NewRecord(
            decision_id=f"broken-{uuid.uuid4().hex}", recorded_at=T0, loan_id="BROKEN",
            ruleset_name="deficiency-default", ruleset_version="2026.12.0",
            ruleset_sha256="0" * 64, facts=broken, decision=good["decision"],
            trace=good["trace"], duration_ms=1.0)])
    finally:
        store.close()
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", url, "--workers", "1",
                         "--format", "json")
    report = json.loads(text)
    assert code == 1
    assert (report["evaluated"], report["changed"], report["failed"]) == (2, 2, 1)
    assert report["failures"][0]["loan_id"] == "BROKEN"
    assert "jurisdiction" in report["failures"][0]["error"]


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_url() -> Any:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"replay_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.orig}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_replay_on_postgresql(pg_url: str, dirs: dict[str, Path]) -> None:
    store = open_store(pg_url)
    try:
        record_cases(store, CASES, {"2026.12.0": RULES, "2026.10.0": dirs["old"]})
    finally:
        store.close()
    code, text = run_cli("--candidate", str(dirs["no-nv"]), "--url", pg_url, "--workers", "2",
                         "--format", "json", "--jurisdiction", "NV")
    assert code == 0
    report = json.loads(text)
    want = expected([c for c in CASES if c.jurisdiction == "NV"])
    assert (report["evaluated"], report["changed"]) == (want["evaluated"], want["changed"])
    assert transitions(report) == want["transitions"]
    assert nv_row(report)["borrower_owes_delta"] == want["nv_owes"]
    store = open_store(pg_url)
    try:
        assert store.count() == len(CASES) and store.verify().ok
    finally:
        store.close()
