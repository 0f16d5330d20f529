"""`deficiency test`: the policy's own YAML test cases, with rule and threshold coverage.

A test file under `<rules>/tests/` looks like::

    fixtures:                      # optional named fact sets to build cases on
      car: {jurisdiction: OH, loan: {...}, collateral: {...}, disposition: {...}}
    cases:
      - name: car sold at auction, no negotiation
        base: car                  # optional: a fixture, deep-merged under `facts`
        facts: {loan: {fees: 25.00}}
        expect:                    # a subset of the decision JSON
          outcome: {bearer: borrower, borrower_owes: 2025.00}
        decided_by: consumer-goods-default   # optional: the rule that set the bearer
"""

from __future__ import annotations

import datetime
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from ..engine.reference import leaf_holds, operand
from ..policy.model import COMPARISONS, Ruleset, walk_leaves
from ..policy.yamlsafe import PosDict, PosList, YamlError, load_yaml

CASE_KEYS = {"name", "base", "facts", "expect", "decided_by", "as_of"}


@dataclass
class Case:
    file: str
    line: int
    name: str
    facts: dict
    expect: dict
    decided_by: str | None


@dataclass
class CaseResult:
    case: Case
    failures: list[str]
    seconds: float
    decision: dict | None = None


@dataclass
class Report:
    results: list[CaseResult]
    rules_total: int
    rules_applied: set[str]
    # leaf label -> (seen true, seen false, seen exactly at the boundary)
    thresholds: dict[str, tuple[bool, bool, bool]]
    load_errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.failures]

    @property
    def coverage(self) -> float:
        return 100.0 * len(self.rules_applied) / self.rules_total if self.rules_total else 100.0


def _plain(value: Any) -> Any:
    """YAML values as the JSON a client would post (dates as text, money as exact numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_cases(tests_dir: Path) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    errors: list[str] = []
    if not tests_dir.is_dir():
        return cases, [f"{tests_dir}: no tests directory"]
    for path in sorted(tests_dir.glob("*.y*ml")):
        try:
            doc = load_yaml(path.read_bytes(), str(path))
        except YamlError as exc:
            errors.append(str(exc))
            continue
        if not isinstance(doc, PosDict) or not isinstance(doc.get("cases"), PosList):
            errors.append(f"{path}:1:1: a test file has 'cases:' (a list) and optional 'fixtures:'")
            continue
        fixtures = doc.get("fixtures") or {}
        for item, pos in zip(doc["cases"], doc["cases"].item_pos, strict=True):
            if not isinstance(item, PosDict) or "name" not in item or "expect" not in item:
                errors.append(f"{pos}: a case needs name, facts (or base) and expect")
                continue
            unknown = set(item) - CASE_KEYS
            if unknown:
                errors.append(f"{pos}: unknown case keys {sorted(unknown)}")
                continue
            facts: dict = {}
            if "base" in item:
                if item["base"] not in fixtures:
                    errors.append(f"{pos}: unknown fixture {item['base']!r}")
                    continue
                facts = _plain(fixtures[item["base"]])
            facts = _merge(facts, _plain(item.get("facts") or {}))
            if "as_of" in item:
                facts["as_of"] = _plain(item["as_of"])
            cases.append(Case(str(path), pos.line, str(item["name"]), facts,
                              _plain(item["expect"]), item.get("decided_by")))
    return cases, errors


def _compare(expected: Any, actual: Any, path: str, out: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected an object, got {actual!r}")
            return
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}: missing from the decision".lstrip("."))
            else:
                _compare(v, actual[k], f"{path}.{k}".lstrip("."), out)
        return
    if isinstance(expected, (Decimal, int)) and not isinstance(expected, bool) and isinstance(
            actual, str):
        try:
            if Decimal(actual) == Decimal(expected):
                return
        except InvalidOperation:
            pass
    elif expected == actual and type(expected) is type(actual):
        return
    out.append(f"{path}: expected {expected!r}, got {actual!r}")


def run_cases(rs: Ruleset, cases: list[Case], matcher: str = "durable") -> Report:
    from .. import facts as facts_mod
    from ..engine.decide import Decider

    decider = Decider(rs, matcher)
    results: list[CaseResult] = []
    applied: set[str] = set()
    leaves = [(r, leaf) for r in rs.rules for leaf in walk_leaves(r.when)
              if leaf.op in COMPARISONS]
    thresholds: dict[str, list[bool]] = {}
    try:
        for case in cases:
            started = time.perf_counter()
            failures: list[str] = []
            decision = None
            try:
                facts = facts_mod.validate_facts(case.facts)
            except facts_mod.FactsInvalid as exc:
                failures.append(f"facts invalid: {exc}")
            else:
                amounts, res = decider.evaluate(facts)
                decision = decider.build(facts, amounts, res)
                _compare(case.expect, decision, "", failures)
                if case.decided_by is not None:
                    got = res.winners.get("outcome.bearer")
                    if got != case.decided_by:
                        failures.append(f"decided_by: expected {case.decided_by}, got {got}")
                applied.update(t["rule"] for t in decision["trace"] if t["applied"])
                for rule, leaf in leaves:
                    label = f"{rule.id}: {leaf.path} {leaf.op} ({leaf.pos})"
                    seen = thresholds.setdefault(label, [False, False, False])
                    if res.ctx.get(leaf.path) is None:
                        continue
                    seen[0 if leaf_holds(leaf, res.ctx, rs) else 1] = True
                    if operand(leaf, res.ctx, rs) == res.ctx.get(leaf.path):
                        seen[2] = True
            results.append(CaseResult(case, failures, time.perf_counter() - started, decision))
    finally:
        decider.close()
    return Report(results, len(rs.rules), applied,
                  {k: (v[0], v[1], v[2]) for k, v in thresholds.items()})


def run_tests(rules_dir: str, out: TextIO = sys.stdout, min_coverage: float | None = None,
              junit: str | None = None) -> int:
    from ..policy.loader import PolicyError, load_ruleset

    try:
        rs = load_ruleset(rules_dir)
    except PolicyError as exc:
        for p in exc.problems:
            out.write(f"{p}\n")
        return 2
    cases, errors = load_cases(Path(rules_dir) / "tests")
    for e in errors:
        out.write(f"{e}\n")
    report = run_cases(rs, cases)
    for r in report.results:
        if r.failures:
            out.write(f"FAIL {r.case.name} ({r.case.file}:{r.case.line})\n")
            for f in r.failures:
                out.write(f"     {f}\n")
    never = [r.id for r in rs.rules if r.id not in report.rules_applied]
    one_sided = [k for k, (t, f, _b) in report.thresholds.items() if not (t and f)]
    no_boundary = [k for k, (_t, _f, b) in report.thresholds.items() if not b]
    out.write(f"{len(report.results) - len(report.failed)} passed, {len(report.failed)} failed"
              f" ({len(cases)} cases, ruleset {rs.name} {rs.version})\n")
    out.write(f"rule coverage: {len(report.rules_applied)}/{report.rules_total} rules applied "
              f"({report.coverage:.1f}%)\n")
    if never:
        out.write("rules never applied: " + ", ".join(never) + "\n")
    if one_sided:
        out.write("thresholds not tested on both sides:\n" + "".join(
            f"  {k}\n" for k in one_sided))
    if no_boundary:
        out.write("thresholds never tested exactly at the boundary:\n" + "".join(
            f"  {k}\n" for k in no_boundary))
    if junit:
        _write_junit(junit, report)
    if errors or report.failed:
        return 1
    if min_coverage is not None and report.coverage < min_coverage:
        out.write(f"coverage {report.coverage:.1f}% is below --min-coverage {min_coverage}\n")
        return 1
    return 0


def _write_junit(path: str, report: Report) -> None:
    suite = ET.Element("testsuite", name="policy", tests=str(len(report.results)),
                       failures=str(len(report.failed)))
    for r in report.results:
        tc = ET.SubElement(suite, "testcase", classname=Path(r.case.file).stem,
                           name=r.case.name, time=f"{r.seconds:.4f}")
        if r.failures:
            ET.SubElement(tc, "failure", message=r.failures[0]).text = "\n".join(r.failures)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
