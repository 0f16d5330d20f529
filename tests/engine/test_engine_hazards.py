"""One regression test per hazard of ../shared/ENGINE-NOTES.md (durable-rules 2.0.28).

Several hazards crash the whole process (segfault, endless loop); those tests
run the risky code in a child process so a regression fails the test instead
of killing the suite.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import textwrap
import threading
import tomllib
from decimal import Decimal
from pathlib import Path

import durable_rules_engine as dre
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import facts as facts_mod
from service.engine.decide import Decider
from service.engine.runtime import MAX_IDLE_SESSIONS, DurableMatcher, EngineLimit
from service.policy.loader import PolicyError, load_ruleset

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

CAR = {
    "as_of": "2026-07-01", "jurisdiction": "OH",
    "loan": {"id": "CAR-1", "type": "auto", "unpaid_balance": "10000.00"},
    "collateral": {"kind": "vehicle"},
    "disposition": {"method": "auction", "date": "2026-06-01", "proceeds": "8500.00",
                    "costs": {"legal": "500.00"}},
}


@pytest.fixture(scope="module")
def rs():
    return load_ruleset(RULES)


@pytest.fixture(scope="module")
def decider(rs):
    d = Decider(rs)
    yield d
    d.close()


def write_rules(directory: Path, rules: str, constants: str = "{}") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(rules), "  ")
    # every rule that decides the bearer names a basis
    body = re.sub(r"^(\s+)description: (.*)$", r"\1description: \2\n\1basis: test", body,
                  flags=re.M)
    (directory / "rules.yaml").write_text(
        f"ruleset: t\nversion: '1'\nstages: [s]\nconstants: {constants}\nrules:\n" + body)
    return directory


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_more_than_1024_sessions_are_never_live(decider):
    # hazard: MemoryError on the 1025th live session; a session is emptied and reused,
    # or deleted in finally
    for _ in range(3000):
        assert decider.decide(CAR)["outcome"]["bearer"] == "borrower"
    assert len(decider.matcher._idle) <= MAX_IDLE_SESSIONS


def test_a_reused_session_is_empty_and_decides_like_a_fresh_one(rs):
    # sessions are reused (half the engine time of a fresh one): each must be emptied by
    # retraction, or the previous decision's facts would match again
    matcher_decider = Decider(rs)
    try:
        matcher = matcher_decider.matcher
        first = matcher_decider.decide(CAR)
        assert len(matcher._idle) == 1
        sid = matcher._idle[0]
        assert json.loads(dre.get_facts(matcher._handle, sid)) == []
        other = json.loads(json.dumps(CAR))
        other["jurisdiction"] = "CA"  # anti-deficiency: a different decision
        for facts in (other, CAR, other, CAR):
            again = matcher_decider.decide(facts)
            fresh = Decider(rs, "reference").decide(facts)
            assert again["outcome"] == fresh["outcome"]
            assert [t["rule"] for t in again["trace"]] == [t["rule"] for t in fresh["trace"]]
            assert matcher._idle == [sid]  # the same session, emptied every time
            assert json.loads(dre.get_facts(matcher._handle, sid)) == []
        assert again["outcome"] == first["outcome"]
    finally:
        matcher_decider.close()


def test_idle_sessions_stay_bounded_under_many_threads(rs):
    decider = Decider(rs)
    expected = Decider(rs, "reference").decide(CAR)["outcome"]
    wrong: list = []

    def work():
        for _ in range(40):
            out = decider.decide(CAR)["outcome"]
            if out != expected:
                wrong.append(out)

    try:
        threads = [threading.Thread(target=work) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wrong == []
        assert 1 <= len(decider.matcher._idle) <= MAX_IDLE_SESSIONS
        for sid in decider.matcher._idle:
            assert json.loads(dre.get_facts(decider.matcher._handle, sid)) == []
    finally:
        decider.close()


def test_session_where_no_user_rule_matches_is_deleted_safely(tmp_path):
    # hazard: delete_state on a session in which no action ran segfaults; the
    # per-stage catch-all rule guarantees an action. Run in a child: a crash fails the test.
    d = write_rules(tmp_path / "r", """\
        - id: only-ca
          description: matches CA only
          stage: s
          priority: 1
          when: {jurisdiction: CA}
          then: {outcome.bearer: lender, outcome.action: write_off}
        """)
    proc = run_child(f"""
        from service.engine.decide import Decider
        from service.policy.loader import load_ruleset
        d = Decider(load_ruleset({str(d)!r}))
        facts = {json.dumps(CAR)}
        for _ in range(2000):
            out = d.decide(facts)
        print(out["outcome"]["bearer"], out["outcome"]["basis"])
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "review no rule decided"


def test_host_starts_no_dispatcher_threads(rs):
    # hazard: the default Host's two timer threads steal actions across request threads
    before = threading.active_count()
    matcher = DurableMatcher(rs)
    try:
        assert threading.active_count() == before
    finally:
        matcher.close()


def test_threaded_decisions_are_correct_and_do_not_crash():
    # 8 threads x thousands of decisions in one process: correct results, no crash
    proc = run_child("""
        import threading, json
        from decimal import Decimal
        from service.engine.decide import Decider
        from service.policy.loader import load_ruleset
        d = Decider(load_ruleset("rules"))
        errors = []
        def work(t):
            try:
                for i in range(750):
                    balance = Decimal(9000 + t * 100 + i)
                    facts = {"as_of": "2026-07-01", "jurisdiction": "OH",
                             "loan": {"id": f"T{t}-{i}", "type": "auto",
                                      "unpaid_balance": str(balance)},
                             "collateral": {"kind": "vehicle"},
                             "disposition": {"method": "auction", "date": "2026-06-01",
                                             "proceeds": "8500.00"}}
                    if i % 3 == 0:
                        facts["negotiation"] = {"state": "in_progress"}
                    out = d.decide(facts)
                    want = "pending" if i % 3 == 0 else "borrower"
                    assert out["loan_id"] == f"T{t}-{i}", out["loan_id"]
                    assert out["outcome"]["bearer"] == want, out["outcome"]
                    assert Decimal(out["outcome"]["borrower_owes"]) == balance - 8500
            except BaseException as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(json.dumps({"errors": errors[:3], "count": len(errors)}))
        """, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"errors": [], "count": 0}


def test_two_loads_of_the_same_ruleset_coexist(rs):
    # hazard: "Ruleset with name ... already registered"; each load gets a unique engine name
    a, b = Decider(rs), Decider(rs)
    try:
        assert a.matcher.engine_name != b.matcher.engine_name
        assert a.decide(CAR)["outcome"] == b.decide(CAR)["outcome"]
    finally:
        a.close()
        b.close()


def test_rule_testing_only_absence_does_not_loop(tmp_path):
    # hazard: a rule whose only test is $nex loops forever; every rule ANDs the stage marker
    d = write_rules(tmp_path / "r", """\
        - id: no-fair-value
          description: fair value not given
          stage: s
          priority: 1
          when: {collateral.fair_value: {missing: true}}
          then: {outcome.bearer: borrower, outcome.action: pursue_deficiency}
        """)
    proc = run_child(f"""
        from service.engine.decide import Decider
        from service.policy.loader import load_ruleset
        d = Decider(load_ruleset({str(d)!r}))
        print(d.decide({json.dumps(CAR)})["outcome"]["bearer"])
        """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "borrower"


def test_arithmetic_with_an_absent_operand_does_not_fire(tmp_path):
    # hazard: an arithmetic condition with a missing operand fires when another rule
    # shares the field; operands are guarded with $ex
    d = write_rules(tmp_path / "r", """\
        - id: arith
          description: fair value above settlement plus one cent
          stage: s
          priority: 2
          when: {collateral.fair_value: {gt: "negotiation.settlement_amount + 0.01"}}
          then: {outcome.bearer: lender, outcome.action: write_off}
        - id: shares-field
          description: shares the field
          stage: s
          priority: 1
          when: {collateral.fair_value: {gt: 0}}
          then: {outcome.bearer: borrower, outcome.action: pursue_deficiency}
        """)
    decider = Decider(load_ruleset(d))
    try:
        facts = json.loads(json.dumps(CAR))
        facts["collateral"]["fair_value"] = "9000.00"  # settlement_amount absent
        trace = decider.decide(facts)["trace"]
        assert [t["rule"] for t in trace] == ["shares-field"]
        facts["negotiation"] = {"state": "settlement_agreed", "settlement_amount": "100.00"}
        assert [t["rule"] for t in decider.decide(facts)["trace"]] == ["arith", "shares-field"]
    finally:
        decider.close()


def test_non_ascii_text_matches_the_same_text_in_a_rule(tmp_path):
    # found here, not in ENGINE-NOTES: raw UTF-8 in a fact never equals the same text
    # in a rule (the compiled rules carry it \\u-escaped); facts must be escaped too
    d = write_rules(tmp_path / "r", """\
        - id: named-loan
          description: one loan by its id
          stage: s
          priority: 2
          when: {loan.id: "PRÉT-Ü-€-😀"}
          then: {outcome.bearer: lender, outcome.action: write_off}
        - id: any-loan
          description: every other loan
          stage: s
          priority: 1
          when: {loan.id: {exists: true}}
          then: {outcome.bearer: borrower, outcome.action: pursue_deficiency}
        """)
    decider = Decider(load_ruleset(d))
    try:
        facts = json.loads(json.dumps(CAR))
        for loan_id, bearer in (("PRÉT-Ü-€-😀", "lender"), ("PRET-U", "borrower"),
                                ("PRÉT-Ü-€", "borrower")):
            facts["loan"]["id"] = loan_id
            assert decider.decide(facts)["outcome"]["bearer"] == bearer, loan_id
    finally:
        decider.close()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=40), st.integers(),
                                                      st.booleans()), max_size=6))
def test_stage_facts_are_written_as_json_dumps_writes_them(fact):
    # the engine must see exactly the ASCII-escaped JSON `json.dumps` writes (see above)
    from service.engine.runtime import _dumps

    text = _dumps(fact)
    assert text.isascii()
    assert text == json.dumps(fact, separators=(",", ":"))


def test_engine_facts_hold_only_ints_bools_and_short_strings(decider):
    # hazards: numbers sent as strings compare as strings; floats with exponents and
    # inf break the engine's parser; Decimal/datetime raise TypeError; >= 64 KiB
    # strings compare truncated. The engine fact holds cents, day ordinals, bools, enums.
    f = facts_mod.validate_facts({**CAR, "loan": {**CAR["loan"], "unpaid_balance":
                                                  "999999999999.99"}})
    from service.amounts import compute_amounts
    from service.engine.decide import context

    ctx = context(f, compute_amounts(f))
    for stage in decider.rs.stages:
        fact = decider.matcher.stage_fact(stage, ctx, "sid-x")
        for k, v in fact.items():
            assert type(v) in (int, bool, str), (k, v)
            assert not isinstance(v, str) or len(v) < 200, k
        # hazard: more than ~252 properties in one fact; only the paths the stage reads travel
        assert len(fact) < 60
    bearer = decider.matcher.stage_fact("bearer", ctx, "sid-x")
    keys = decider.matcher.keys
    assert bearer[keys["amounts.deficiency"]] == 99999999199999  # 999999991999.99 in cents
    assert bearer[keys["disposition.date"]] == datetime.date(2026, 6, 1).toordinal()


@pytest.mark.parametrize("bad, path", [
    ({"collateral": {"kind": "vehicle", "dwelling_units": "4"}}, "collateral.dwelling_units"),
    ({"loan": {**CAR["loan"], "consumer": "true"}}, "loan.consumer"),
    ({"loan": {**CAR["loan"], "consumer": 1}}, "loan.consumer"),
    ({"disposition": {**CAR["disposition"], "proceeds": 1e-05}}, "disposition.proceeds"),
    ({"jurisdiction": "CA" + "x" * 70_000}, "jurisdiction"),
    ({"loan": {**CAR["loan"], "id": "L" * 65_536}}, "loan.id"),
    ({"sid": "other-session"}, "sid"),
    ({"id": "dup"}, "id"),
    ({"loan": {**CAR["loan"], "$x": 1}}, "loan.$x"),
])
def test_values_that_confuse_the_engine_never_reach_it(bad, path):
    with pytest.raises(facts_mod.FactsInvalid) as info:
        facts_mod.validate_facts({**CAR, **bad})
    assert path in [e.path for e in info.value.errors]


def test_too_many_simultaneous_tests_is_refused_at_load(tmp_path):
    # hazard: 64 or more conditions true for one fact -> error 303 at decision time
    rules = "".join(f"""\
        - id: r{i}
          description: distinct test {i}
          stage: s
          priority: {i}
          when: {{disposition.proceeds: {{gt: {i}}}}}
          then: {{outcome.bearer: borrower, outcome.action: close}}
        """.rstrip(" ") for i in range(70))
    rs = load_ruleset(write_rules(tmp_path / "r", rules))
    with pytest.raises(EngineLimit, match="303"):
        Decider(rs)


def test_more_than_512_constants_on_one_field_is_refused_before_the_engine(tmp_path):
    # hazard: create_ruleset hangs forever (holding the GIL) above 512 constants on a field
    values = ", ".join(f"L{i}" for i in range(600))
    rules = f"""\
        - id: many
          description: too many ids
          stage: s
          priority: 1
          when: {{loan.id: {{in: [{values}]}}}}
          then: {{outcome.bearer: borrower, outcome.action: close}}
        """
    with pytest.raises(PolicyError, match="longer than 500"):
        load_ruleset(write_rules(tmp_path / "r", rules))


def test_more_than_4000_rules_is_refused(tmp_path):
    # hazard: error 106 above 4096 rules
    rules = "".join(f"""\
        - id: r{i}
          description: rule
          stage: s
          priority: 1
          when: {{loan.type: auto}}
          then: {{outcome.bearer: borrower, outcome.action: close}}
        """.rstrip(" ") for i in range(4001))
    with pytest.raises(PolicyError, match="at most 4000"):
        load_ruleset(write_rules(tmp_path / "r", rules))


def test_priority_beyond_16_bits_is_applied_by_the_project(tmp_path):
    # hazard: the engine stores `pri` as an unsigned 16-bit number (70000 wraps);
    # the hit policy (higher priority wins) is applied by the resolver, not the agenda
    d = write_rules(tmp_path / "r", """\
        - id: high
          description: high priority
          stage: s
          priority: 70000
          when: {loan.type: auto}
          then: {outcome.bearer: lender, outcome.action: write_off}
        - id: low
          description: low priority
          stage: s
          priority: 5
          when: {loan.type: auto}
          then: {outcome.bearer: borrower, outcome.action: pursue_deficiency}
        """)
    decider = Decider(load_ruleset(d))
    try:
        out = decider.decide(CAR)
        assert out["outcome"]["bearer"] == "lender"
        assert [(t["rule"], t["applied"], t["overridden_by"]) for t in out["trace"]] == [
            ("high", True, None), ("low", False, "high")]
    finally:
        decider.close()


def test_an_exception_inside_an_action_is_surfaced_not_swallowed(rs):
    # hazard: the engine swallows action exceptions into the state and carries on
    matcher = DurableMatcher(rs)
    try:
        f = facts_mod.validate_facts(CAR)
        from service.amounts import compute_amounts
        from service.engine.decide import context

        def boom(stage, matched):
            raise RuntimeError("resolver failed")

        with pytest.raises(RuntimeError, match="resolver failed"):
            matcher.run(context(f, compute_amounts(f)), boom)
        # the failed call's session was abandoned and deleted (never reused with a half
        # decision in it): the engine still decides
        assert matcher._idle == []
        seen = []
        matcher.run(context(f, compute_amounts(f)), lambda s, m: seen.append(s) or {})
        assert seen == list(rs.stages)
        assert len(matcher._idle) == 1
        sid = matcher._idle[0]
        # a reused session that fails is deleted too
        with pytest.raises(RuntimeError, match="resolver failed"):
            matcher.run(context(f, compute_amounts(f)), boom)
        assert matcher._idle == []
        with pytest.raises(dre.error):
            dre.get_facts(matcher._handle, sid)
    finally:
        matcher.close()


def test_python_313_is_excluded():
    # hazard: durable-rules does not import on Python 3.13 (PyEval_CallObject removed)
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11,<3.13"


def test_memory_is_flat_when_sessions_are_deleted(decider):
    import resource

    for _ in range(2000):
        decider.decide(CAR)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20000):
        decider.decide(CAR)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (after - before) < 10 * 1024, f"max RSS grew {after - before} KiB"


def test_money_stays_exact_through_the_engine(decider):
    facts = json.loads(json.dumps(CAR))
    facts["loan"]["unpaid_balance"] = "0.30"
    facts["loan"]["fees"] = "0.10"
    facts["disposition"] = {**CAR["disposition"], "proceeds": "0.20", "costs": {}}
    out = decider.decide(facts)
    assert out["amounts"]["deficiency"] == "0.20"
    assert Decimal(out["outcome"]["borrower_owes"]) == Decimal("0.20")


def test_an_output_too_large_for_cents_is_a_rule_error_not_a_crash(tmp_path):
    # found by the hardening work: an output beyond ~26 integer digits cannot be held to the
    # cent (decimal.InvalidOperation); the decision must fail safe, like any rule error
    d = write_rules(tmp_path / "r", """\
        - id: absurd
          description: absorbs an absurd amount
          stage: s
          priority: 1
          when: {loan.type: auto}
          then:
            outcome.bearer: lender
            outcome.action: write_off
            outcome.lender_absorbs: "amounts.deficiency * 1000000000 * 1000000000 * 1000000000"
        """)
    rs = load_ruleset(d)
    for matcher in ("durable", "reference"):
        decider = Decider(rs, matcher)
        try:
            out = decider.decide(CAR)
        finally:
            decider.close()
        assert out["outcome"]["bearer"] == "review"
        assert out["outcome"]["basis"].startswith("rule error: rule absurd:")
        assert "out of range" in out["outcome"]["basis"]
        assert out["outcome"]["borrower_owes"] == out["amounts"]["deficiency"]
