"""`deficiency decide|check|test` as a user runs them: a real subprocess each time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SHORT_SALE = {
    "as_of": "2026-07-01", "jurisdiction": "TX",
    "loan": {"id": "SEED-1", "type": "mortgage", "unpaid_balance": "250000.00",
             "investor": "portfolio"},
    "collateral": {"kind": "dwelling"},
    "disposition": {"method": "short_sale", "date": "2026-06-01", "proceeds": "200000.00"},
    "negotiation": {"state": "short_sale_approved", "deficiency_waived": True},
}
CAR = {
    "as_of": "2026-07-01", "jurisdiction": "OH",
    "loan": {"id": "SEED-2", "type": "auto", "unpaid_balance": "10000.00"},
    "collateral": {"kind": "vehicle"},
    "disposition": {"method": "auction", "date": "2026-06-01", "proceeds": "8500.00",
                    "costs": {"legal": "500.00"}},
}


def deficiency(*args: str, stdin: str | bytes = b"") -> subprocess.CompletedProcess:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, input=data,
                          capture_output=True, timeout=120)


def test_seed_example_1_short_sale_with_waiver():
    proc = deficiency("decide", "-", stdin=json.dumps(SHORT_SALE))
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["amounts"]["deficiency"] == "50000.00"
    assert d["outcome"]["bearer"] == "lender"
    assert d["outcome"]["action"] == "write_off"
    assert d["outcome"]["lender_absorbs"] == "50000.00"
    assert d["outcome"]["borrower_owes"] == "0.00"
    assert d["credit_reporting"]["category"] == "settled"
    assert d["tax"] == {**d["tax"], "form": "1099-C", "canceled_debt": "50000.00",
                        "event_code": "F"}
    assert d["ruleset"]["name"] == "deficiency-default" and len(d["ruleset"]["sha256"]) == 64
    assert d["trace"] and all({"stage", "rule", "priority", "matched", "applied",
                               "overridden_by", "set"} <= set(t) for t in d["trace"])


def test_seed_example_2_car(tmp_path):
    f = tmp_path / "car.json"
    f.write_text(json.dumps(CAR, indent=2))
    proc = deficiency("decide", str(f))
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    o = d["outcome"]
    assert (d["amounts"]["deficiency"], o["bearer"], o["action"], o["borrower_owes"]) == (
        "2000.00", "borrower", "pursue_deficiency", "2000.00")
    assert d["credit_reporting"]["category"] == "open_until_paid"
    assert d["tax"]["form"] is None
    assert Decimal(o["borrower_owes"]) + Decimal(o["lender_absorbs"]) == Decimal("2000.00")
    # the six UCC §9-616 items, in order
    assert [line[:2] for line in d["explanation"][:6]] == ["1.", "2.", "3.", "4.", "5.", "6."]


def test_json_lines_give_one_result_per_line_in_order():
    bad = dict(CAR, loan={"id": "X", "type": "car", "unpaid_balance": "1"})
    lines = "\n".join(json.dumps(x) for x in (CAR, bad, SHORT_SALE)) + "\n"
    proc = deficiency("decide", "-", stdin=lines)
    assert proc.returncode == 1  # one line failed
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(out) == 3
    assert out[0]["loan_id"] == "SEED-2"
    assert out[1]["line"] == 2 and out[1]["errors"][0]["path"] == "loan.type"
    assert out[2]["loan_id"] == "SEED-1"


def test_explain_prints_plain_language():
    proc = deficiency("decide", "--explain", "-", stdin=json.dumps(CAR))
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "You owe $2,000.00" in text and "pursue_deficiency" in text
    assert "{" not in text.splitlines()[0]
    # Money is spelled one way: the header as the explanation spells it.
    assert "deficiency $2,000.00" in text and "borrower owes $2,000.00" in text
    assert not re.search(r"(?<![$,\d.])\d+\.\d\d(?![\d.])", text), text


@pytest.mark.parametrize("stdin, field", [
    (json.dumps({**CAR, "jurisdiction": "XX"}), "jurisdiction"),
    (json.dumps({**CAR, "loan": {**CAR["loan"], "unpaid_balance": 1e-5}}), "loan.unpaid_balance"),
    (json.dumps({**CAR, "sid": "x"}), "sid"),
    ('{"jurisdiction": "OH", "jurisdiction": "CA"}', "jurisdiction"),
    ("{not json", "line 1"),
    (b"\xff\xfe", "UTF-8"),
    ("[" * 100_000, "deep"),
])
def test_bad_input_is_one_line_naming_the_field(stdin, field):
    proc = deficiency("decide", "-", stdin=stdin)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert field in err


def test_missing_file_and_bad_rules_are_one_line(tmp_path):
    proc = deficiency("decide", str(tmp_path / "nope.json"))
    assert proc.returncode == 2 and "nope.json" in proc.stderr.decode()
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    text = (rules / "bearer.yaml").read_text().replace("loan.type: mortgage", "loan.type: car", 1)
    (rules / "bearer.yaml").write_text(text)
    proc = deficiency("decide", "--rules", str(rules), "-", stdin=json.dumps(CAR))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert "bearer.yaml:" in err and "not one of auto, mortgage, other_secured" in err


def test_rules_option_selects_another_ruleset(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    text = (rules / "ruleset.yaml").read_text().replace('version: "2026.12.0"',
                                                         'version: "candidate-7"')
    (rules / "ruleset.yaml").write_text(text)
    proc = deficiency("decide", "--rules", str(rules), "-", stdin=json.dumps(CAR))
    assert json.loads(proc.stdout)["ruleset"]["version"] == "candidate-7"


def test_check_and_test_pass_on_the_default_policy():
    proc = deficiency("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = deficiency("test", "--min-coverage", "100")
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    assert b"100.0%" in proc.stdout
