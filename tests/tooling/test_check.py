"""`deficiency check`: load errors with positions, and the static analysis (gaps,
equal-priority conflicts, shadowed rules) on copies of the default policy.

Every reported gap and conflict carries a concrete fact set; these tests run it
through the reference evaluator again, independently of the analysis.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import facts as facts_mod
from service.engine.decide import Decider
from service.policy.loader import load_ruleset
from service.policy.schema import NO_RULE_DECIDED
from service.tooling.check import run_check

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A private copy of the default policy."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def check(directory: Path, fmt: str = "text", **kwargs) -> tuple[int, str]:
    # The analysis' budget is wall-clock time: a generous one keeps these tests
    # independent of how loaded the machine is (its default is tested via the CLI).
    kwargs.setdefault("time_budget", 120.0)
    out = io.StringIO()
    code = run_check(str(directory), fmt, out, **kwargs)
    return code, out.getvalue()


def check_json(directory: Path) -> tuple[int, dict]:
    code, text = check(directory, "json")
    assert not [f for f in json.loads(text)["findings"] if f["kind"] == "incomplete"], text
    return code, json.loads(text)


def rule_block(text: str, rule_id: str) -> str:
    """The YAML text of one rule (from its `- id:` line to the next rule)."""
    start = text.index(f"  - id: {rule_id}\n")
    nxt = text.find("\n  - id: ", start + 1)
    return text[start:] if nxt < 0 else text[start:nxt + 1]


def remove_rule(path: Path, rule_id: str) -> None:
    text = path.read_text()
    path.write_text(text.replace(rule_block(text, rule_id), ""))


def add_rules(path: Path, yaml_text: str) -> None:
    text = path.read_text()
    path.write_text(text.rstrip("\n") + "\n" + yaml_text)


def evaluate(directory: Path, raw: dict):
    """The reference evaluator's resolution of JSON facts (validated first)."""
    decider = Decider(load_ruleset(directory), "reference")
    facts = facts_mod.validate_facts(json.loads(json.dumps(raw)))
    return decider.evaluate(facts)[1]


def example_after(text: str) -> dict:
    """The JSON fact set printed on the line after 'example …:'."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("example "):
            return json.loads(lines[i + 1])
    raise AssertionError(f"no example facts in:\n{text}")


# --------------------------------------------------------------------------- the default policy


def test_default_policy_is_clean_and_fast(rules: Path) -> None:
    code, text = check(rules)
    assert code == 0, text
    assert text.startswith("ok: deficiency-default"), text
    assert "no gaps, no conflicts" in text
    for word in ("gap:", "conflict:", "shadowed", "unreachable", "warning", "incomplete"):
        assert word not in text, text
    code, doc = check_json(rules)
    assert code == 0 and doc["ok"] is True
    assert doc["findings"] == [] and doc["problems"] == []
    assert doc["ruleset"]["analysis"]["seconds"] < 10
    # gaps + every rule's shadowing + the equal-priority pairs that can match together
    assert doc["ruleset"]["analysis"]["questions"] >= 35


# --------------------------------------------------------------------------- gaps


def test_deleting_the_mortgage_default_leaves_a_gap(rules: Path) -> None:
    remove_rule(rules / "bearer.yaml", "mortgage-recourse-default")
    code, text = check(rules)
    assert code == 1, text
    assert "error: gap: no rule of stage bearer sets outcome.bearer" in text
    regions = [line for line in text.splitlines() if line.strip().startswith("region:")]
    assert regions and all("loan.type=mortgage" in r for r in regions), text
    raw = example_after(text)
    assert raw["loan"]["type"] == "mortgage"
    res = evaluate(rules, raw)
    assert res.ctx["outcome.basis"] == NO_RULE_DECIDED
    assert res.ctx["outcome.bearer"] == "review" and res.ctx["outcome.action"] == "refer"


def test_gap_only_above_a_numeric_threshold(rules: Path) -> None:
    """The mortgage default only up to a deficiency of 1000: the gap is above it."""
    path = rules / "bearer.yaml"
    text = path.read_text()
    block = rule_block(text, "mortgage-recourse-default")
    path.write_text(text.replace(block, block.replace(
        "      loan.type: mortgage\n",
        "      loan.type: mortgage\n      amounts.deficiency: {lt: 1000}\n")))
    code, doc = check_json(rules)
    assert code == 1
    (gap,) = [f for f in doc["findings"] if f["kind"] == "gap"]
    assert gap["severity"] == "error" and gap["stage"] == "bearer"
    for region in gap["regions"]:
        assert region["conditions"]["loan.type"] == "mortgage"
        assert float(region["example_values"]["amounts.deficiency"]) >= 1000
    res = evaluate(rules, gap["example"])
    assert res.ctx["outcome.basis"] == NO_RULE_DECIDED
    assert res.ctx["amounts.deficiency"] >= 1000


# --------------------------------------------------------------------------- conflicts

WRITE_OFF_COPY = """\
  - id: consumer-goods-write-off
    description: A copy of consumer-goods-default that writes the deficiency off.
    stage: bearer
    priority: 110
    basis: "UCC §9-615(d)(2) (obligor liable for any deficiency)"
    when:
      loan.type: {in: consumer_goods_loans}
    then:
      preset: borrower_owes_all
      outcome.action: write_off
"""


def test_equal_priority_rules_setting_different_values_conflict(rules: Path) -> None:
    add_rules(rules / "bearer.yaml", WRITE_OFF_COPY)
    code, text = check(rules)
    assert code == 1, text
    line = next(ln for ln in text.splitlines() if "error: conflict:" in ln)
    assert "consumer-goods-default" in line and "consumer-goods-write-off" in line
    assert "same priority (110, stage bearer)" in line and "outcome.action" in line
    # The later rule (the one just written) first, and the fix.
    assert line.index("consumer-goods-write-off") < line.index("consumer-goods-default")
    assert "'write_off' vs 'pursue_deficiency'" in line
    assert "Give one of them another priority" in line and "reference evaluator" not in text
    raw = example_after(text)
    res = evaluate(rules, raw)
    entries = {e["rule"]: e for e in res.trace if e["stage"] == "bearer"}
    assert "consumer-goods-default" in entries and "consumer-goods-write-off" in entries
    assert "outcome.action" in entries["consumer-goods-write-off"].get("conflict", [])
    # the same rules tie: the copy never applies, which is worth a warning too
    assert "shadowed: rule consumer-goods-write-off" in text


@pytest.mark.parametrize("command", [["test"], ["replay", "--url", "sqlite:///unused.db",
                                                "--candidate"]])
def test_test_and_replay_refuse_a_ruleset_check_rejects(
        rules: Path, command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Passing policy tests, or a replay report, must never vouch for a ruleset that
    `deficiency check` rejects: a conflict the test cases do not happen to reach."""
    from service.cli import main

    assert main(["test", str(rules)], io.StringIO()) == 0  # the policy as shipped
    capsys.readouterr()
    add_rules(rules / "bearer.yaml", WRITE_OFF_COPY)
    out = io.StringIO()
    assert main([*command, str(rules)], out) == 2
    err = capsys.readouterr().err.strip()
    assert out.getvalue() == "" and len(err.splitlines()) == 1, err
    assert "conflict" in err and "consumer-goods-write-off" in err, err
    assert f"`deficiency check {rules}` rejects it" in err, err


def test_conflict_in_a_later_stage_reads_the_earlier_outcome(rules: Path) -> None:
    add_rules(rules / "reporting.yaml", """\
  - id: credit-paid-in-full-settled
    description: Reports a paid-in-full account as settled (contradicts credit-paid-in-full).
    stage: reporting
    priority: 900
    when:
      outcome.bearer: none
      amounts.surplus: {gt: 0}
    then:
      credit_reporting.category: settled
      credit_reporting.balance: 0
""")
    code, doc = check_json(rules)
    assert code == 1
    (conflict,) = [f for f in doc["findings"] if f["kind"] == "conflict"]
    assert conflict["rules"] == ["credit-paid-in-full", "credit-paid-in-full-settled"]
    assert conflict["stage"] == "reporting" and conflict["line"] > 0
    assert "credit_reporting.category" in conflict["message"]
    res = evaluate(rules, conflict["example"])
    assert res.ctx["outcome.bearer"] == "none" and res.ctx["amounts.surplus"] > 0


def test_disjoint_equal_priority_rules_do_not_conflict(rules: Path) -> None:
    """credit-lender-* share priority 600 and an output, but never match together."""
    code, doc = check_json(rules)
    assert code == 0
    assert not [f for f in doc["findings"] if f["kind"] == "conflict"]


# --------------------------------------------------------------------------- load errors


def test_a_bad_constant_key_is_reported_where_it_is_written(rules: Path) -> None:
    ruleset = rules / "ruleset.yaml"
    text = ruleset.read_text()
    ruleset.write_text(text.replace("  judgment_limit_days:\n", "  judgment_limit_days:\n"
                                    "    QQ: 1\n", 1))
    line = next(n for n, ln in enumerate(ruleset.read_text().splitlines(), 1)
                if ln.strip() == "QQ: 1")
    code, out = check(rules)
    assert code == 1
    errors = [ln for ln in out.splitlines() if ": error: " in ln]
    # Once, at the key, however many rules use the table; the use named in passing.
    assert len(errors) == 1, out
    assert errors[0].startswith(f"{ruleset}:{line}:5: error: constant judgment_limit_days: "
                                "jurisdiction: 'QQ' is not one of")
    assert "(used for jurisdiction at " in errors[0]


def test_typo_in_an_enum_value_points_at_file_line_column(rules: Path) -> None:
    path = rules / "bearer.yaml"
    text = path.read_text()
    block = rule_block(text, "consumer-goods-default")
    path.write_text(text.replace(block, block.replace(
        "loan.type: {in: consumer_goods_loans}", "loan.type: car")))
    lines = path.read_text().splitlines()
    line_no = next(i for i, ln in enumerate(lines, 1) if ln.strip() == "loan.type: car")
    column = lines[line_no - 1].index("car") + 1
    code, text = check(rules)
    assert code == 1, text
    assert f"{path}:{line_no}:{column}: error: loan.type: 'car' is not one of auto, mortgage, " \
           "other_secured" in text, text
    code, doc = check_json(rules)
    assert code == 1 and doc["ok"] is False and doc["findings"] == []
    (problem,) = doc["problems"]
    assert (problem["line"], problem["column"]) == (line_no, column)
    assert "not one of auto, mortgage, other_secured" in problem["message"]


# --------------------------------------------------------------------------- shadowed rules


def test_rule_below_a_broader_one_is_shadowed(rules: Path) -> None:
    add_rules(rules / "bearer.yaml", """\
  - id: ohio-auto-write-off
    description: Ohio car loans are written off (but consumer-goods-default is above it).
    stage: bearer
    priority: 105
    basis: "illustrative"
    when:
      jurisdiction: OH
      loan.type: auto
    then:
      preset: barred
""")
    code, text = check(rules)
    assert code == 0, text  # a warning, not an error
    line = next(ln for ln in text.splitlines() if "shadowed:" in ln)
    assert "warning" in line and "ohio-auto-write-off" in line
    assert "consumer-goods-default (priority 110)" in line
    assert re.search(r"bearer\.yaml:\d+:\d+: warning: shadowed", line)
    assert "1 warning(s)" in text


def test_date_thresholds_decide_shadowing(rules: Path) -> None:
    """A Texas time bar of 800 days sits under time-barred (730 days): shadowed. One of
    700 days applies between day 701 and day 730: not shadowed."""
    rule = """\
  - id: tx-late-{days}
    description: Texas time bar after {days} days.
    stage: bearer
    priority: 690
    basis: "illustrative"
    when:
      jurisdiction: TX
      loan.type: mortgage
      disposition.method: {{in: foreclosure_methods}}
      negotiation.state: {{not_in: [judgment_sought, judgment_obtained]}}
      as_of: {{gt: "disposition.date + {days}"}}
    then:
      preset: barred
"""
    add_rules(rules / "bearer.yaml", rule.format(days=800) + rule.format(days=700))
    code, doc = check_json(rules)
    assert code == 0
    shadowed = [f for f in doc["findings"] if f["kind"] == "shadowed"]
    assert [f["rules"] for f in shadowed] == [["tx-late-800", "time-barred"]]
    assert not [f for f in doc["findings"] if f["kind"] in ("gap", "conflict", "incomplete")]


def test_a_contradictory_condition_is_unreachable(rules: Path) -> None:
    add_rules(rules / "bearer.yaml", """\
  - id: never
    description: Both under 2 and over 3 units.
    stage: bearer
    priority: 950
    basis: "illustrative"
    when:
      collateral.dwelling_units: {lt: 2, gt: 3}
    then:
      preset: barred
""")
    code, doc = check_json(rules)
    assert code == 0
    (finding,) = doc["findings"]
    assert finding["kind"] == "unreachable" and finding["rules"] == ["never"]
    assert finding["severity"] == "warning"


# --------------------------------------------------------------------------- output and CLI


def test_json_output_lists_every_finding(rules: Path) -> None:
    remove_rule(rules / "bearer.yaml", "mortgage-recourse-default")
    add_rules(rules / "bearer.yaml", WRITE_OFF_COPY)
    code, doc = check_json(rules)
    assert code == 1 and doc["ok"] is False
    kinds = {f["kind"] for f in doc["findings"]}
    assert {"gap", "conflict", "shadowed"} <= kinds
    for f in doc["findings"]:
        assert set(f) >= {"kind", "severity", "stage", "message", "rules", "file", "line",
                          "column", "regions", "example"}
    gap = next(f for f in doc["findings"] if f["kind"] == "gap")
    assert gap["regions"][0]["conditions"]["loan.type"] == "mortgage"
    assert gap["regions"][0]["text"].startswith("jurisdiction=")
    conflict = next(f for f in doc["findings"] if f["kind"] == "conflict")
    assert conflict["rules"] == ["consumer-goods-default", "consumer-goods-write-off"]
    assert conflict["example"]["loan"]["type"] in ("auto", "other_secured")
    # every finding is a problem too, with its severity
    assert len(doc["problems"]) == len(doc["findings"])
    assert {p["severity"] for p in doc["problems"]} == {"error", "warning"}


def test_an_exhausted_budget_is_a_warning(rules: Path) -> None:
    code, text = check(rules, time_budget=0.0)
    assert code == 0, text
    assert "warning: analysis incomplete" in text
    assert "the analysis is incomplete" in text.splitlines()[-1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "check", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_check_exit_codes_and_json(rules: Path) -> None:
    ok = cli(str(rules))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("ok: ")
    remove_rule(rules / "bearer.yaml", "mortgage-recourse-default")
    bad = cli(str(rules))
    assert bad.returncode == 1
    assert "gap:" in bad.stdout and "loan.type=mortgage" in bad.stdout
    assert "Traceback" not in bad.stderr
    as_json = cli(str(rules), "--format", "json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    # on a very busy machine the default time budget may also leave a warning
    assert [f["kind"] for f in doc["findings"] if f["kind"] != "incomplete"] == ["gap"]


def test_every_load_error_at_once_and_the_analysis_said_to_wait(rules: Path) -> None:
    bearer, reporting = rules / "bearer.yaml", rules / "reporting.yaml"
    bearer.write_text(bearer.read_text().replace("loan.type: mortgage", "loan.type: mortage", 1))
    reporting.write_text(reporting.read_text().replace("stage: reporting", "stage: reportng", 1))
    code, text = check(rules)
    assert code == 1
    errors = [ln for ln in text.splitlines() if ": error: " in ln]
    assert any("bearer.yaml" in ln and "'mortage'" in ln for ln in errors), text
    assert any("reporting.yaml" in ln and "reportng" in ln for ln in errors), text
    assert text.rstrip().endswith("not analysed yet: the search for gaps, conflicts and "
                                  "shadowed rules runs once the load errors above are fixed")
    code, doc = check(rules, "json")
    assert json.loads(doc)["analysed"] is False
    code, doc = check(RULES, "json")
    assert json.loads(doc)["analysed"] is True
