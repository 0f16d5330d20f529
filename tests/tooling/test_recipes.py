"""docs/rules.md section 18, "Recipes": every recipe is applied exactly as written.

The convention (stated in the section): a fenced block whose info string is
`yaml FILE` is applied to FILE, relative to the ruleset directory. `bearer.yaml`
and `reporting.yaml` blocks are appended after one blank line (they join the
file's `rules:` list); a `tests/NAME.yaml` block is a new test file. Plain
`yaml`/`text`/`sh` blocks are illustrations and are not applied.

Each recipe is applied to a copy of rules/ in tmp_path: with only its rule
blocks, `deficiency check` is clean and `deficiency test --min-coverage 100`
fails (the new rules are not covered); with its test file too, it passes. The
decisions themselves are then checked through `deficiency decide`.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
DOC = ROOT / "docs" / "rules.md"
RULE_FILES = ("bearer.yaml", "reporting.yaml")
BLOCK = re.compile(r"^```yaml ([^\s`]+)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

OK_RULE = "ok-686-judicial-time-limit"
OK_BASIS = ("12 O.S. §686 (deficiency judgment must be sought within 90 days after a "
            "judicial foreclosure sale)")
VA_RULE = "va-compromise-sale"


# --------------------------------------------------------------------------- the docs


def recipes_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## 18. Recipes\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def recipes() -> dict[str, list[tuple[str, str]]]:
    """{recipe heading: [(file, block text), ...]} in document order."""
    parts = re.split(r"^### (Recipe \d+:.*)$", recipes_section(), flags=re.MULTILINE)
    found = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[heading.strip()] = [(m.group(1), m.group(2)) for m in BLOCK.finditer(body)]
    return found


RECIPES = recipes()
OK_RECIPE = next(k for k in RECIPES if "one state and one foreclosure method" in k)
VA_RECIPE = next(k for k in RECIPES if "investor" in k)


def apply(target: Path, blocks: list[tuple[str, str]], *, with_tests: bool) -> None:
    for name, block in blocks:
        path = target / name
        if name in RULE_FILES:
            text = path.read_text(encoding="utf-8")
            assert text.endswith("\n"), name
            path.write_text(text + "\n" + block, encoding="utf-8")
        elif name.startswith("tests/") and name.endswith(".yaml"):
            if with_tests:
                assert not path.exists(), f"{name} would overwrite an existing test file"
                path.write_text(block, encoding="utf-8")
        else:  # pragma: no cover - a block naming another file breaks the convention
            pytest.fail(f"block for {name!r}: not a rule file or a tests/*.yaml file")


def ruleset_copy(tmp_path: Path, recipe: str, *, with_tests: bool) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    apply(target, RECIPES[recipe], with_tests=with_tests)
    return target


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def decide(directory: Path, tmp_path: Path, facts: dict) -> dict:
    path = tmp_path / f"{facts['loan']['id']}-{facts['as_of']}.json"
    path.write_text(json.dumps(facts), encoding="utf-8")
    code, text = cli("decide", str(path), "--rules", str(directory))
    assert code == 0, text
    return json.loads(text)


def decided_by(decision: dict) -> str | None:
    for entry in decision["trace"]:
        if entry["stage"] == "bearer" and "outcome.bearer" in entry["set"]:
            return entry["rule"]
    return None


# --------------------------------------------------------------------------- the blocks


def test_section_holds_both_recipes_with_the_named_blocks():
    assert [name for name, _ in RECIPES[OK_RECIPE]] == [
        "bearer.yaml", "reporting.yaml", "tests/ok-686-judicial.yaml"]
    assert [name for name, _ in RECIPES[VA_RECIPE]] == [
        "bearer.yaml", "tests/va-compromise-sale.yaml"]
    section = recipes_section()
    # The two points the recipes exist for are said plainly.
    assert "Why not a `judgment_limit_days` entry" in section
    assert "an absent `negotiation.state` means `none`" in section
    assert section.count("deficiency replay --candidate") >= 2


@pytest.mark.parametrize("recipe", [OK_RECIPE, VA_RECIPE])
def test_rule_blocks_alone_check_clean_but_are_not_covered(tmp_path, recipe):
    directory = ruleset_copy(tmp_path, recipe, with_tests=False)
    code, text = cli("check", str(directory))
    assert code == 0, text
    assert text.startswith("ok: ") and "no gaps, no conflicts" in text, text
    code, text = cli("test", str(directory), "--min-coverage", "100")
    assert code != 0, text
    assert "0 failed" in text and "rules never applied:" in text, text
    assert "is below --min-coverage 100.0" in text, text
    # The output shown in the docs is the real one.
    section = recipes_section()
    for line in text.splitlines():
        assert line in section, line


@pytest.mark.parametrize("recipe", [OK_RECIPE, VA_RECIPE])
def test_rule_blocks_with_their_cases_reach_full_coverage(tmp_path, recipe):
    directory = ruleset_copy(tmp_path, recipe, with_tests=True)
    code, text = cli("test", str(directory), "--min-coverage", "100")
    assert code == 0, text
    assert "rule coverage: " in text and "(100.0%)" in text, text
    assert "never" not in text and "below" not in text, text
    section = recipes_section()
    for line in text.splitlines():
        assert line in section, line


def test_ok_cases_would_catch_a_bar_on_both_methods(tmp_path):
    """The recipe's cases fail when the rule over-reaches to trustee's sales."""
    directory = ruleset_copy(tmp_path, OK_RECIPE, with_tests=True)
    bearer = directory / "bearer.yaml"
    text = bearer.read_text(encoding="utf-8")
    needle = "      disposition.method: judicial_foreclosure\n      negotiation.state"
    assert text.count(needle) == 1
    bearer.write_text(text.replace(
        needle, "      disposition.method: {in: foreclosure_methods}\n      negotiation.state"),
        encoding="utf-8")
    code, out = cli("test", str(directory), "--min-coverage", "100")
    assert code == 1, out
    assert "FAIL OK 686: trustee's sale at sale + 91 days" in out, out


# --------------------------------------------------------------------------- decisions


def ok_loan(method: str, as_of: str, **extra) -> dict:
    facts = {
        "as_of": as_of,
        "jurisdiction": "OK",
        "loan": {"id": "OK-T", "type": "mortgage", "unpaid_balance": "300000.00"},
        "collateral": {"kind": "dwelling", "dwelling_units": 1},
        "disposition": {"method": method, "date": "2026-03-02", "proceeds": "240000.00"},
    }
    facts.update(extra)
    return facts


@pytest.fixture(scope="module")
def ok_rules(tmp_path_factory) -> Path:
    return ruleset_copy(tmp_path_factory.mktemp("ok"), OK_RECIPE, with_tests=True)


def test_ok_judicial_day_91_is_barred_with_the_dates_and_limit(ok_rules, tmp_path):
    decision = decide(ok_rules, tmp_path, ok_loan("judicial_foreclosure", "2026-06-01"))
    assert decided_by(decision) == OK_RULE
    outcome = decision["outcome"]
    assert (outcome["bearer"], outcome["action"]) == ("lender", "write_off")
    assert (outcome["borrower_owes"], outcome["lender_absorbs"]) == ("0.00", "60000.00")
    assert outcome["deadline"] is None
    assert outcome["basis"] == OK_BASIS
    assert decision["tax"]["event_code"] == "C"
    assert decision["credit_reporting"]["category"] == "foreclosure"
    assert ("The collateral was sold on 2026-03-02. In OK, after a judicial foreclosure, the "
            "lender had 90 days from the sale to ask a court for a deficiency judgment; 91 days "
            "had passed by 2026-06-01, so the balance can no longer be collected."
            ) in decision["explanation"]


@pytest.mark.parametrize("as_of", ["2026-05-30", "2026-05-31"])
def test_ok_judicial_up_to_day_90_owes_with_deadline(ok_rules, tmp_path, as_of):
    decision = decide(ok_rules, tmp_path, ok_loan("judicial_foreclosure", as_of))
    assert decided_by(decision) == "mortgage-recourse-default"
    assert decision["outcome"]["bearer"] == "borrower"
    assert decision["outcome"]["deadline"] == "2026-05-31"
    assert ("The lender must ask a court for a deficiency judgment by 2026-05-31, or the "
            "balance can no longer be collected.") in decision["explanation"]


def test_ok_non_judicial_day_91_is_not_barred_and_has_no_deadline(ok_rules, tmp_path):
    decision = decide(ok_rules, tmp_path, ok_loan("non_judicial_foreclosure", "2026-06-01"))
    assert decided_by(decision) == "mortgage-recourse-default"
    assert decision["outcome"]["bearer"] == "borrower"
    assert decision["outcome"]["borrower_owes"] == "60000.00"
    assert decision["outcome"]["deadline"] is None
    assert not any("deficiency judgment" in line for line in decision["explanation"])


@pytest.mark.parametrize("negotiation", [None, {"state": "none"}, {"state": "in_progress"}])
def test_ok_day_91_barred_whatever_the_open_negotiation(ok_rules, tmp_path, negotiation):
    extra = {} if negotiation is None else {"negotiation": negotiation}
    decision = decide(ok_rules, tmp_path, ok_loan("judicial_foreclosure", "2026-06-01", **extra))
    assert decided_by(decision) == OK_RULE
    assert decision["outcome"]["bearer"] == "lender"


@pytest.mark.parametrize("state", ["judgment_sought", "judgment_obtained"])
def test_ok_judgment_sought_or_obtained_is_not_barred(ok_rules, tmp_path, state):
    decision = decide(ok_rules, tmp_path,
                      ok_loan("judicial_foreclosure", "2026-09-01", negotiation={"state": state}))
    assert decided_by(decision) != OK_RULE
    assert decision["outcome"]["bearer"] == "borrower"
    assert decision["outcome"]["deadline"] is None


def test_ok_other_state_is_not_covered(ok_rules, tmp_path):
    facts = ok_loan("judicial_foreclosure", "2026-06-01")
    facts["jurisdiction"] = "KS"
    decision = decide(ok_rules, tmp_path, facts)
    assert decided_by(decision) == "mortgage-recourse-default"
    assert decision["outcome"]["deadline"] is None


@pytest.fixture(scope="module")
def va_rules(tmp_path_factory) -> Path:
    return ruleset_copy(tmp_path_factory.mktemp("va"), VA_RECIPE, with_tests=True)


def va_loan(**changes) -> dict:
    facts = {
        "as_of": "2026-04-01",
        "jurisdiction": "NV",
        "loan": {"id": "VA-T", "type": "mortgage", "unpaid_balance": "250000.00",
                 "investor": "va"},
        "collateral": {"kind": "dwelling", "dwelling_units": 1},
        "disposition": {"method": "short_sale", "date": "2026-03-02", "proceeds": "210000.00"},
        "negotiation": {"state": "short_sale_approved"},
    }
    facts.update(changes)
    return facts


def test_va_approved_short_sale_is_waived(va_rules, tmp_path):
    decision = decide(va_rules, tmp_path, va_loan())
    assert decided_by(decision) == VA_RULE
    outcome = decision["outcome"]
    assert (outcome["bearer"], outcome["borrower_owes"], outcome["lender_absorbs"]) == (
        "lender", "0.00", "40000.00")
    assert decision["tax"]["event_code"] == "F"
    assert decision["credit_reporting"]["category"] == "settled"


@pytest.mark.parametrize("changes", [
    {"negotiation": {"state": "none"}},
    {"negotiation": {}},
    {"loan": {"id": "VA-T", "type": "mortgage", "unpaid_balance": "250000.00",
              "investor": "portfolio"}},
])
def test_va_rule_does_not_reach_unapproved_or_other_investors(va_rules, tmp_path, changes):
    facts = va_loan(**changes)
    if facts["negotiation"] == {}:
        del facts["negotiation"]  # absent: negotiation.state is none
    decision = decide(va_rules, tmp_path, facts)
    assert decided_by(decision) == "mortgage-recourse-default"
    assert decision["outcome"]["bearer"] == "borrower"
