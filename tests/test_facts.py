"""Strict parsing and validation of posted facts (SPEC §2): service/facts.py."""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import re
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import facts as facts_module
from service.facts import (
    FACT_DEFAULTS,
    FACT_ENUMS,
    FACT_FIELDS,
    FACT_OPTIONAL,
    FACT_REQUIRED,
    FIELDS,
    FIELDS_BY_PATH,
    JURISDICTIONS,
    KINDS,
    MAX_DATE,
    MAX_ERRORS,
    MAX_MONEY,
    MIN_DATE,
    FactsInvalid,
    FieldError,
    to_json_facts,
    validate_facts,
)
from service.strictjson import parse_json

TODAY = datetime.date(2024, 6, 1)


def minimal() -> dict[str, Any]:
    """The SPEC §6 car example, as posted JSON would parse."""
    return {
        "jurisdiction": "OH",
        "loan": {"id": "L-1", "type": "auto", "unpaid_balance": "10000.00"},
        "collateral": {"kind": "vehicle"},
        "disposition": {
            "method": "auction",
            "date": "2024-03-01",
            "proceeds": "8500.00",
            "costs": {"legal": "500.00"},
        },
    }


def full() -> dict[str, Any]:
    """Every field given."""
    return {
        "as_of": "2024-06-01",
        "jurisdiction": "CA",
        "loan": {
            "id": "L-2",
            "type": "mortgage",
            "consumer": True,
            "unpaid_balance": Decimal("250000.00"),
            "accrued_interest": "1200.5",
            "fees": 35,
            "purchase_money": True,
            "home_equity": False,
            "investor": "fha",
        },
        "collateral": {
            "kind": "dwelling",
            "dwelling_units": 1,
            "owner_occupied": True,
            "acres": "0.25",
            "fair_value": "210000.00",
        },
        "disposition": {
            "method": "short_sale",
            "date": "2024-03-01",
            "proceeds": "200000.00",
            "costs": {
                "repossession": "0",
                "storage": 0,
                "preparation": "100.00",
                "sale": "12000.00",
                "legal": "500.00",
                "admin": "50.00",
            },
            "credits": "0.00",
            "notice_sent": True,
            "commercially_reasonable": True,
        },
        "negotiation": {
            "state": "settlement_agreed",
            "deficiency_waived": False,
            "deficiency_reserved": False,
            "settlement_amount": "5000.00",
            "borrower_contribution": "0",
            "third_party_agent": False,
        },
        "borrower": {"in_bankruptcy": False, "insolvent": False},
    }


def errors_of(doc: Any, **kw: Any) -> dict[str, str]:
    with pytest.raises(FactsInvalid) as info:
        validate_facts(doc, today=TODAY, **kw)
    errs = info.value.errors
    assert errs and all(isinstance(e, FieldError) for e in errs)
    return {e.path: e.message for e in errs}


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return doc


def del_path(doc: dict[str, Any], path: str) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    del node[leaf]
    return doc


def with_value(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    return set_path(copy.deepcopy(base if base is not None else minimal()), path, value)


def get_path(facts: dict[str, Any], path: str) -> Any:
    node: Any = facts
    for p in path.split("."):
        node = node[p]
    return node


# --------------------------------------------------------------------------- happy path


def test_minimal_normalised_with_every_default() -> None:
    out = validate_facts(minimal(), today=TODAY)
    zero = Decimal("0.00")
    assert out == {
        "as_of": TODAY,
        "jurisdiction": "OH",
        "loan": {
            "id": "L-1",
            "type": "auto",
            "consumer": True,
            "unpaid_balance": Decimal("10000.00"),
            "accrued_interest": zero,
            "fees": zero,
            "purchase_money": False,
            "home_equity": False,
            "investor": "portfolio",
        },
        "collateral": {"kind": "vehicle", "owner_occupied": False},
        "disposition": {
            "method": "auction",
            "date": datetime.date(2024, 3, 1),
            "proceeds": Decimal("8500.00"),
            "costs": {
                "repossession": zero,
                "storage": zero,
                "preparation": zero,
                "sale": zero,
                "legal": Decimal("500.00"),
                "admin": zero,
            },
            "credits": zero,
            "notice_sent": True,
            "commercially_reasonable": True,
        },
        "negotiation": {
            "state": "none",
            "deficiency_waived": False,
            "deficiency_reserved": False,
            "borrower_contribution": zero,
            "third_party_agent": False,
        },
        "borrower": {"in_bankruptcy": False, "insolvent": False},
    }
    assert list(out) == [
        "as_of",
        "jurisdiction",
        "loan",
        "collateral",
        "disposition",
        "negotiation",
        "borrower",
    ]
    # Optional fields without a default are omitted, not None.
    for path in FACT_OPTIONAL:
        parent, _, leaf = path.rpartition(".")
        assert leaf not in get_path(out, parent)


def test_defaults_table_matches_output() -> None:
    out = validate_facts(minimal(), today=TODAY)
    for path, default in FACT_DEFAULTS.items():
        if path in ("disposition.costs.legal",):
            continue
        assert get_path(out, path) == default, path
        assert type(get_path(out, path)) is type(default), path


def test_full_document() -> None:
    out = validate_facts(full(), today=TODAY)
    assert out["as_of"] == datetime.date(2024, 6, 1)
    assert out["loan"]["unpaid_balance"] == Decimal("250000.00")
    assert str(out["loan"]["accrued_interest"]) == "1200.50"
    assert str(out["loan"]["fees"]) == "35.00"
    assert str(out["collateral"]["acres"]) == "0.25"
    assert out["collateral"]["dwelling_units"] == 1
    assert str(out["negotiation"]["settlement_amount"]) == "5000.00"
    assert str(out["disposition"]["costs"]["storage"]) == "0.00"
    # every money value is a Decimal with exactly two places
    for path, kind in FACT_FIELDS.items():
        if kind in ("money", "decimal"):
            value = get_path(out, path)
            assert isinstance(value, Decimal) and value.as_tuple().exponent == -2, path


def test_null_optional_counts_as_absent() -> None:
    doc = minimal()
    doc["as_of"] = None
    doc["loan"]["consumer"] = None
    doc["loan"]["investor"] = None
    doc["collateral"]["fair_value"] = None
    doc["disposition"]["costs"] = None
    doc["negotiation"] = None
    doc["borrower"] = None
    out = validate_facts(doc, today=TODAY)
    expected = validate_facts(minimal(), today=TODAY)
    expected["disposition"]["costs"]["legal"] = Decimal("0.00")
    assert out == expected
    assert out["as_of"] == TODAY
    assert out["loan"]["consumer"] is True
    assert "fair_value" not in out["collateral"]
    assert set(out["disposition"]["costs"].values()) == {Decimal("0.00")}
    assert out["negotiation"]["state"] == "none"
    assert out["borrower"] == {"in_bankruptcy": False, "insolvent": False}


def test_as_of_defaults_to_utc_today() -> None:
    before = datetime.datetime.now(datetime.UTC).date()
    out = validate_facts(minimal())
    after = datetime.datetime.now(datetime.UTC).date()
    assert out["as_of"] in (before, after)


def test_today_may_be_a_datetime() -> None:
    out = validate_facts(minimal(), today=datetime.datetime(2024, 1, 2, 23, 59))
    assert out["as_of"] == datetime.date(2024, 1, 2)
    assert type(out["as_of"]) is datetime.date


def test_output_is_new_and_independent() -> None:
    doc = full()
    snapshot = copy.deepcopy(doc)
    a = validate_facts(doc, today=TODAY)
    b = validate_facts(doc, today=TODAY)
    assert doc == snapshot  # input untouched
    assert a is not doc and a["loan"] is not doc["loan"]
    assert a["disposition"]["costs"] is not doc["disposition"]["costs"]
    a["negotiation"]["state"] = "changed"
    a["disposition"]["costs"]["legal"] = Decimal("1")
    assert b["negotiation"]["state"] == "settlement_agreed"
    assert b["disposition"]["costs"]["legal"] == Decimal("500.00")
    # defaulted sub-objects are fresh per call too
    c = validate_facts(minimal(), today=TODAY)
    d = validate_facts(minimal(), today=TODAY)
    assert c["borrower"] is not d["borrower"]


# --------------------------------------------------------------------------- required / structure


@pytest.mark.parametrize("path", sorted(FACT_REQUIRED))
@pytest.mark.parametrize("how", ["missing", "null"])
def test_required_field(path: str, how: str) -> None:
    doc = minimal()
    if how == "missing":
        del_path(doc, path)
    else:
        set_path(doc, path, None)
    assert errors_of(doc) == {path: "required"}


@pytest.mark.parametrize("obj", ["loan", "collateral", "disposition"])
def test_required_object_missing(obj: str) -> None:
    doc = minimal()
    del doc[obj]
    assert errors_of(doc) == {obj: "required"}
    doc[obj] = None
    assert errors_of(doc) == {obj: "required"}


@pytest.mark.parametrize("obj", ["loan", "disposition.costs", "negotiation", "borrower"])
@pytest.mark.parametrize("value", [[], "x", 1, True, Decimal("1")])
def test_object_of_wrong_type(obj: str, value: Any) -> None:
    assert errors_of(with_value(obj, value)) == {obj: "must be an object"}


@pytest.mark.parametrize("doc", [[], "facts", 1, None, True, Decimal("1.5"), 1.5])
def test_top_level_must_be_object(doc: Any) -> None:
    assert errors_of(doc) == {"": "must be a JSON object"}


def test_empty_object_lists_top_level_requirements() -> None:
    assert errors_of({}) == {
        "jurisdiction": "required",
        "loan": "required",
        "collateral": "required",
        "disposition": "required",
    }


def test_empty_sub_objects_list_their_requirements() -> None:
    doc = {"jurisdiction": "TX", "loan": {}, "collateral": {}, "disposition": {}}
    assert errors_of(doc) == {
        "loan.id": "required",
        "loan.type": "required",
        "loan.unpaid_balance": "required",
        "collateral.kind": "required",
        "disposition.method": "required",
        "disposition.date": "required",
        "disposition.proceeds": "required",
    }


# --------------------------------------------------------------------------- unknown fields


@pytest.mark.parametrize(
    "path",
    [
        "sid",
        "id",
        "$x",
        "$",
        "extra",
        "Jurisdiction",
        "loan.sid",
        "loan.$x",
        "loan.ID",
        "collateral.id",
        "collateral.sid",
        "disposition.$type",
        "disposition.costs.$x",
        "disposition.costs.id",
        "disposition.costs.other",
        "negotiation.id",
        "borrower.$ref",
    ],
)
def test_unknown_fields_rejected(path: str) -> None:
    assert errors_of(with_value(path, 1)) == {path: "unknown field"}


def test_unknown_field_with_null_value_rejected_too() -> None:
    assert errors_of(with_value("sid", None)) == {"sid": "unknown field"}


def test_loan_id_is_a_real_field() -> None:
    assert validate_facts(minimal(), today=TODAY)["loan"]["id"] == "L-1"


def test_odd_keys_are_quoted_in_paths() -> None:
    doc = minimal()
    doc["a.b"] = 1
    doc["loan"]["\n"] = 1
    doc["loan"]["\ud800"] = 1
    doc["k" * 1000] = 1
    errs = errors_of(doc)
    assert errs['["a.b"]'] == "unknown field"
    assert errs['loan["\\n"]'] == "unknown field"
    assert errs['loan["\\ud800"]'] == "unknown field"
    long_paths = [p for p in errs if p.startswith('["kkk')]
    assert len(long_paths) == 1 and len(long_paths[0]) < 100
    for p in errs:
        p.encode("utf-8")  # every path is safe to log and serialise


def test_error_count_is_capped() -> None:
    doc = minimal()
    for i in range(5000):
        doc[f"x{i}"] = i
    doc["loan"]["type"] = "boat"
    with pytest.raises(FactsInvalid) as info:
        validate_facts(doc, today=TODAY)
    errs = info.value.errors
    assert len(errs) == MAX_ERRORS
    assert errs[-1].path == ""
    assert "more errors not listed" in errs[-1].message
    assert errs[-1].message.startswith(str(5001 - (MAX_ERRORS - 1)))


# --------------------------------------------------------------------------- all errors at once


def test_every_violation_reported_at_once() -> None:
    doc = {
        "sid": "s",
        "as_of": "2024-13-01",
        "jurisdiction": "ca",
        "loan": {
            "id": "",
            "type": "boat",
            "consumer": 1,
            "unpaid_balance": "-5",
            "fees": 1.5,
            "investor": "Fannie",
            "$x": 1,
        },
        "collateral": {"kind": "vehicle", "dwelling_units": 0, "acres": "1.234"},
        "disposition": {
            "method": "auction",
            "date": "2024-02-30",
            "costs": {"legal": "abc", "other": "1"},
            "notice_sent": "true",
        },
        "negotiation": {"state": "settlement_agreed"},
        "borrower": [],
    }
    assert errors_of(doc) == {
        "sid": "unknown field",
        "as_of": "not a valid calendar date",
        "jurisdiction": (
            'must be the uppercase two-letter code of a US state, DC, PR, GU or VI (e.g. "CA")'
        ),
        "loan.$x": "unknown field",
        "loan.id": "must be 1 to 128 characters long",
        "loan.type": "not one of auto, mortgage, other_secured",
        "loan.consumer": "must be a boolean (true or false)",
        "loan.unpaid_balance": (
            "must be an amount from 0 to 999999999999.99 with at most 2 decimal places, "
            'as a string like "8500.00" or a JSON number'
        ),
        "loan.fees": "binary floating-point numbers are not accepted (parse with parse_json)",
        "loan.investor": "not one of portfolio, fannie_mae, freddie_mac, fha, va",
        "collateral.dwelling_units": "must be an integer from 1 to 1000",
        "collateral.acres": (
            "must be an amount from 0 to 999999999999.99 with at most 2 decimal places, "
            'as a string like "8500.00" or a JSON number'
        ),
        "disposition.date": "not a valid calendar date",
        "disposition.proceeds": "required",
        "disposition.costs.other": "unknown field",
        "disposition.costs.legal": (
            "must be an amount from 0 to 999999999999.99 with at most 2 decimal places, "
            'as a string like "8500.00" or a JSON number'
        ),
        "disposition.notice_sent": "must be a boolean (true or false)",
        "negotiation.settlement_amount": "required when negotiation.state is settlement_agreed",
        "borrower": "must be an object",
    }


def test_facts_invalid_message() -> None:
    exc = FactsInvalid(
        [
            FieldError("loan.type", "not one of auto, mortgage, other_secured"),
            FieldError("jurisdiction", "required"),
        ]
    )
    assert str(exc) == "loan.type: not one of auto, mortgage, other_secured; jurisdiction: required"
    assert FactsInvalid([FieldError("", "must be a JSON object")]).__str__() == (
        "must be a JSON object"
    )
    assert exc.to_list()[1] == {"path": "jurisdiction", "message": "required"}
    doc = minimal()
    doc["loan"]["type"] = "boat"
    del doc["jurisdiction"]
    with pytest.raises(FactsInvalid) as info:
        validate_facts(doc)
    assert str(info.value) == (
        "jurisdiction: required; loan.type: not one of auto, mortgage, other_secured"
    )
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- types


BOOL_PATHS = sorted(p for p, k in FACT_FIELDS.items() if k == "bool")
MONEY_PATHS = sorted(p for p, k in FACT_FIELDS.items() if k == "money")
ENUM_PATHS = sorted(p for p, k in FACT_FIELDS.items() if k == "enum")


@pytest.mark.parametrize("path", BOOL_PATHS)
@pytest.mark.parametrize("value", [1, 0, "true", "false", "True", Decimal("1"), [], {}])
def test_bool_is_strict(path: str, value: Any) -> None:
    assert errors_of(with_value(path, value)) == {path: "must be a boolean (true or false)"}


@pytest.mark.parametrize("path", BOOL_PATHS)
def test_bool_values_accepted(path: str) -> None:
    for value in (True, False):
        assert get_path(validate_facts(with_value(path, value), today=TODAY), path) is value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an integer"),
        (False, "must be an integer"),
        ("2", "must be an integer"),
        (2.0, "must be an integer"),
        (Decimal("2.0"), "must be an integer from 1 to 1000"),
        (Decimal("2"), "must be an integer from 1 to 1000"),
        (0, "must be an integer from 1 to 1000"),
        (-1, "must be an integer from 1 to 1000"),
        (1001, "must be an integer from 1 to 1000"),
        (10**30, "must be an integer from 1 to 1000"),
    ],
)
def test_dwelling_units_strict(value: Any, message: str) -> None:
    path = "collateral.dwelling_units"
    assert errors_of(with_value(path, value)) == {path: message}


@pytest.mark.parametrize("units", [1, 4, 1000])
def test_dwelling_units_range(units: int) -> None:
    out = validate_facts(with_value("collateral.dwelling_units", units), today=TODAY)
    assert out["collateral"]["dwelling_units"] == units


@pytest.mark.parametrize("path", ENUM_PATHS)
def test_enums_exact(path: str) -> None:
    choices = FACT_ENUMS[path]
    base = with_value("negotiation.settlement_amount", "1.00")
    for value in choices:
        out = validate_facts(with_value(path, value, base), today=TODAY)
        assert get_path(out, path) == value
    message = "not one of " + ", ".join(choices)
    for bad in (choices[0].upper(), choices[0] + " ", "", 1, True, [choices[0]], {}):
        assert errors_of(with_value(path, bad, base)) == {path: message}


def test_enum_tables() -> None:
    assert FACT_ENUMS["loan.type"] == ("auto", "mortgage", "other_secured")
    assert FACT_ENUMS["negotiation.state"] == (
        "none",
        "in_progress",
        "short_sale_approved",
        "deed_in_lieu_agreed",
        "settlement_agreed",
        "judgment_sought",
        "judgment_obtained",
    )
    assert FACT_ENUMS["disposition.method"] == (
        "auction",
        "private_sale",
        "short_sale",
        "deed_in_lieu",
        "judicial_foreclosure",
        "non_judicial_foreclosure",
    )
    assert FACT_ENUMS["loan.investor"] == ("portfolio", "fannie_mae", "freddie_mac", "fha", "va")
    assert FACT_ENUMS["collateral.kind"] == ("vehicle", "dwelling", "other")
    assert set(FACT_ENUMS) == {*ENUM_PATHS, "jurisdiction"}


def test_field_tables() -> None:
    assert len(FACT_FIELDS) == 36
    assert set(FACT_FIELDS.values()) <= {
        "date",
        "jurisdiction",
        "string",
        "enum",
        "bool",
        "int",
        "money",
        "decimal",
    }
    for key in ("repossession", "storage", "preparation", "sale", "legal", "admin"):
        assert FACT_FIELDS[f"disposition.costs.{key}"] == "money"
        assert FACT_DEFAULTS[f"disposition.costs.{key}"] == Decimal("0.00")
    assert FACT_FIELDS["as_of"] == "date"
    assert FACT_FIELDS["collateral.acres"] == "decimal"
    assert FACT_FIELDS["collateral.dwelling_units"] == "int"
    assert FACT_FIELDS["loan.id"] == "string"
    assert {
        "collateral.dwelling_units",
        "collateral.acres",
        "collateral.fair_value",
        "negotiation.settlement_amount",
    } == FACT_OPTIONAL
    assert {
        "jurisdiction",
        "loan.id",
        "loan.type",
        "loan.unpaid_balance",
        "collateral.kind",
        "disposition.method",
        "disposition.date",
        "disposition.proceeds",
    } == FACT_REQUIRED
    # every path is either required, optional, defaulted, or as_of
    assert set(FACT_FIELDS) == FACT_REQUIRED | FACT_OPTIONAL | set(FACT_DEFAULTS) | {"as_of"}
    assert FACT_DEFAULTS["loan.consumer"] is True
    assert FACT_DEFAULTS["loan.investor"] == "portfolio"
    assert FACT_DEFAULTS["negotiation.state"] == "none"
    assert FACT_DEFAULTS["disposition.notice_sent"] is True
    assert FACT_DEFAULTS["disposition.commercially_reasonable"] is True


def test_the_public_field_table_is_what_the_validator_enforces() -> None:
    assert [f.path for f in FIELDS] == list(FACT_FIELDS)
    assert all(FIELDS_BY_PATH[f.path] is f and f.kind in KINDS for f in FIELDS)
    assert {f.path for f in FIELDS if f.optional} == FACT_OPTIONAL
    assert FIELDS_BY_PATH["as_of"].default is facts_module.TODAY
    assert FIELDS_BY_PATH["negotiation.settlement_amount"].required_when == (
        "negotiation.state", "settlement_agreed")
    for f in FIELDS:
        if f.kind in ("money", "decimal"):
            assert (f.minimum, f.maximum, f.places) == (0, MAX_MONEY, 2)
            at = [str(f.maximum), "0", "0." + "1" * f.places]
            past = [str(f.maximum + Decimal("0.01")), "0." + "1" * (f.places + 1), "-1"]
            at_json = [Decimal(v) for v in at]
            past_json = [Decimal(v) for v in past]
        elif f.kind == "date":
            assert (f.minimum, f.maximum) == (MIN_DATE, MAX_DATE)
            day = datetime.timedelta(days=1)
            at = [f.minimum.isoformat(), f.maximum.isoformat()]
            past = [(f.minimum - day).isoformat(), (f.maximum + day).isoformat()]
            at_json, past_json = [], []
        elif f.kind == "int":
            at, past = [f.minimum, f.maximum], [f.minimum - 1, f.maximum + 1]
            at_json, past_json = [], []
        elif f.kind == "string":
            at = ["x" * f.min_length, "x" * f.max_length]
            past = ["x" * (f.min_length - 1), "x" * (f.max_length + 1)]
            at_json, past_json = [], []
        else:
            continue
        for value in [*at, *at_json]:
            doc = with_value(f.path, value)
            if f.path == "negotiation.settlement_amount":
                doc["negotiation"]["state"] = "settlement_agreed"
            validate_facts(doc, today=TODAY)
        for value in [*past, *past_json]:
            assert list(errors_of(with_value(f.path, value))) == [f.path], (f.path, value)
        if f.pattern is not None:
            assert all(re.fullmatch(f.pattern, v) for v in at if isinstance(v, str))


# --------------------------------------------------------------------------- jurisdiction


def test_jurisdictions() -> None:
    assert len(JURISDICTIONS) == 54
    assert FACT_ENUMS["jurisdiction"] == JURISDICTIONS
    assert {"CA", "TX", "DC", "PR", "GU", "VI", "WY", "AK"} <= set(JURISDICTIONS)
    for code in JURISDICTIONS:
        assert validate_facts(with_value("jurisdiction", code), today=TODAY)["jurisdiction"] == code


@pytest.mark.parametrize(
    "value", ["ca", "Ca", "XX", "AS", "MP", "UM", "CA ", " CA", "CAL", "", 6, True, ["CA"]]
)
def test_bad_jurisdiction(value: Any) -> None:
    errs = errors_of(with_value("jurisdiction", value))
    assert list(errs) == ["jurisdiction"]
    assert errs["jurisdiction"].startswith("must be the uppercase two-letter code")


def test_long_string_starting_with_a_code_rejected() -> None:
    # the engine compares strings on a 16-bit length: "CA" + 65534 chars would equal "CA"
    assert list(errors_of(with_value("jurisdiction", "CA" + "x" * 65534))) == ["jurisdiction"]


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize("length", [1, 2, 127, 128])
def test_loan_id_length_ok(length: int) -> None:
    out = validate_facts(with_value("loan.id", "x" * length), today=TODAY)
    assert out["loan"]["id"] == "x" * length


@pytest.mark.parametrize("length", [0, 129, 65536, 70000])
def test_loan_id_length_bad(length: int) -> None:
    assert errors_of(with_value("loan.id", "x" * length)) == {
        "loan.id": "must be 1 to 128 characters long"
    }


@pytest.mark.parametrize("value", [1, True, Decimal("1"), ["L"], {"id": "L"}])
def test_loan_id_must_be_string(value: Any) -> None:
    assert errors_of(with_value("loan.id", value)) == {"loan.id": "must be a string"}


@pytest.mark.parametrize("value", ["a\nb", "\x00", "tab\t", "\ud800", "x\u2028"])
def test_loan_id_printable(value: Any) -> None:
    assert errors_of(with_value("loan.id", value)) == {
        "loan.id": "must contain only printable characters"
    }


def test_loan_id_unicode_ok() -> None:
    assert validate_facts(with_value("loan.id", "Prêt-№ 7"), today=TODAY)["loan"]["id"] == (
        "Prêt-№ 7"
    )


def test_64k_loan_id_via_parse_json() -> None:
    doc = minimal()
    doc["loan"]["id"] = "CA" + "x" * 65536
    body = json.dumps(doc).encode()
    parsed = parse_json(body)
    with pytest.raises(FactsInvalid) as info:
        validate_facts(parsed)
    assert [e.path for e in info.value.errors] == ["loan.id"]


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "0.00"),
        ("0.1", "0.10"),
        ("0.10", "0.10"),
        ("8500", "8500.00"),
        ("8500.00", "8500.00"),
        ("007.5", "7.50"),
        ("999999999999.99", "999999999999.99"),
        (0, "0.00"),
        (8500, "8500.00"),
        (999999999999, "999999999999.00"),
        (Decimal("8500.5"), "8500.50"),
        (Decimal("0.10"), "0.10"),
        (Decimal("1E+2"), "100.00"),
        (Decimal("1.0E+2"), "100.00"),
        (Decimal("-0.0"), "0.00"),
        (Decimal("-0"), "0.00"),
        (Decimal("0E+5"), "0.00"),
        (Decimal("999999999999.99"), "999999999999.99"),
    ],
)
def test_money_accepted(value: Any, expected: str) -> None:
    for path in MONEY_PATHS + ["collateral.acres"]:
        out = validate_facts(with_value(path, value), today=TODAY)
        got = get_path(out, path)
        assert isinstance(got, Decimal)
        assert str(got) == expected, path
        assert to_json_facts(out)[path.split(".")[0]] is not None


FORMAT = (
    "must be an amount from 0 to 999999999999.99 with at most 2 decimal places, "
    'as a string like "8500.00" or a JSON number'
)
RANGE = "must be between 0 and 999999999999.99"
PLACES = "must have at most 2 decimal places"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", FORMAT),
        ("-0.00", FORMAT),
        ("1.234", FORMAT),
        ("1.", FORMAT),
        (".5", FORMAT),
        ("1e2", FORMAT),
        ("1E+2", FORMAT),
        (" 1", FORMAT),
        ("1 ", FORMAT),
        ("1\n", FORMAT),
        ("1,000.00", FORMAT),
        ("$5", FORMAT),
        ("", FORMAT),
        ("NaN", FORMAT),
        ("Infinity", FORMAT),
        ("1000000000000.00", FORMAT),
        ("1000000000000", FORMAT),
        ("\u0661\u0662", FORMAT),  # Arabic-Indic digits
        ("１２", FORMAT),  # fullwidth digits
        (-1, RANGE),
        (1000000000000, RANGE),
        (10**40, RANGE),
        (Decimal("-0.01"), RANGE),
        (Decimal("1000000000000.00"), RANGE),
        (Decimal("999999999999.995"), RANGE),
        (Decimal("1E+400"), RANGE),
        (Decimal("1E-5"), PLACES),
        (Decimal("1.100"), PLACES),
        (Decimal("0E-5"), PLACES),
        (Decimal("0.000"), PLACES),
        (Decimal("NaN"), "must be a finite number"),
        (Decimal("sNaN"), "must be a finite number"),
        (Decimal("Infinity"), "must be a finite number"),
        (Decimal("-Infinity"), "must be a finite number"),
        (1.5, "binary floating-point numbers are not accepted (parse with parse_json)"),
        (100.0, "binary floating-point numbers are not accepted (parse with parse_json)"),
        (float("nan"), "binary floating-point numbers are not accepted (parse with parse_json)"),
        (True, FORMAT),
        (False, FORMAT),
        ([], FORMAT),
        ({}, FORMAT),
        (b"1", FORMAT),
    ],
)
def test_money_rejected(value: Any, message: str) -> None:
    for path in MONEY_PATHS + ["collateral.acres"]:
        doc = with_value(path, value)
        if path == "negotiation.settlement_amount":
            doc["negotiation"]["state"] = "settlement_agreed"
        assert errors_of(doc) == {path: message}, path


def test_money_numbers_from_json_text_are_exact() -> None:
    doc = minimal()
    doc["loan"]["unpaid_balance"] = "__UB__"
    text = json.dumps(doc).replace('"__UB__"', "0.10")
    text = text.replace('"id": "L-1"', '"id": "L-1", "fees": 0.20')
    out = validate_facts(parse_json(text), today=TODAY)
    total = out["loan"]["unpaid_balance"] + out["loan"]["fees"]
    assert total == Decimal("0.30")
    assert str(total) == "0.30"


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("1E+2", "100.00"),
        ("1e2", "100.00"),
        ("100", "100.00"),
        ("999999999999.99", "999999999999.99"),
        ("-0.0", "0.00"),
        ("-0", "0.00"),
        ("12.5", "12.50"),
    ],
)
def test_json_number_literals_accepted(literal: str, expected: str) -> None:
    text = json.dumps(minimal()).replace('"8500.00"', literal)
    out = validate_facts(parse_json(text), today=TODAY)
    assert str(out["disposition"]["proceeds"]) == expected
    assert to_json_facts(out)["disposition"]["proceeds"] == expected


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("1e-05", PLACES),
        ("1E-5", PLACES),
        ("0.001", PLACES),
        ("1000000000000.00", RANGE),
        ("1000000000000", RANGE),
        ("1e13", RANGE),
        ("-1", RANGE),
        ("-0.01", RANGE),
        ("1e999999", RANGE),
    ],
)
def test_json_number_literals_rejected(literal: str, message: str) -> None:
    text = json.dumps(minimal()).replace('"8500.00"', literal)
    assert errors_of(parse_json(text)) == {"disposition.proceeds": message}


def test_stdlib_json_floats_rejected() -> None:
    text = json.dumps(minimal()).replace('"8500.00"', "8500.5")
    errs = errors_of(json.loads(text))
    assert list(errs) == ["disposition.proceeds"]
    assert "floating-point" in errs["disposition.proceeds"]


def test_acres_quantized() -> None:
    out = validate_facts(with_value("collateral.acres", "2.5"), today=TODAY)
    assert out["collateral"]["acres"] == Decimal("2.50")
    assert str(out["collateral"]["acres"]) == "2.50"


def test_results_do_not_depend_on_thread_decimal_context() -> None:
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.traps[decimal.Inexact] = True
        out = validate_facts(with_value("loan.unpaid_balance", "999999999999.99"), today=TODAY)
    assert str(out["loan"]["unpaid_balance"]) == "999999999999.99"


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize("path", ["as_of", "disposition.date"])
@pytest.mark.parametrize(
    "value", ["2024-02-29", "1900-01-01", "2199-12-31", "2024-03-01", "2000-02-29"]
)
def test_dates_accepted(path: str, value: str) -> None:
    out = validate_facts(with_value(path, value), today=TODAY)
    assert get_path(out, path) == datetime.date.fromisoformat(value)
    assert type(get_path(out, path)) is datetime.date


FORMAT_DATE = 'must be a date string "YYYY-MM-DD"'


@pytest.mark.parametrize("path", ["as_of", "disposition.date"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2023-02-29", "not a valid calendar date"),
        ("1900-02-29", "not a valid calendar date"),
        ("2024-04-31", "not a valid calendar date"),
        ("2024-13-01", "not a valid calendar date"),
        ("2024-00-10", "not a valid calendar date"),
        ("0000-01-01", "not a valid calendar date"),
        ("1899-12-31", "must be between 1900-01-01 and 2199-12-31"),
        ("2200-01-01", "must be between 1900-01-01 and 2199-12-31"),
        ("9999-12-31", "must be between 1900-01-01 and 2199-12-31"),
        ("2024-3-1", FORMAT_DATE),
        ("20240301", FORMAT_DATE),
        ("2024-03-01T00:00:00", FORMAT_DATE),
        ("2024-03-01Z", FORMAT_DATE),
        ("2024-W10-1", FORMAT_DATE),
        ("2024/03/01", FORMAT_DATE),
        (" 2024-03-01", FORMAT_DATE),
        ("2024-03-01\n", FORMAT_DATE),
        ("\u0662\u0660\u0662\u0664-03-01", FORMAT_DATE),
        ("", FORMAT_DATE),
        (20240301, FORMAT_DATE),
        (True, FORMAT_DATE),
        ({"y": 2024}, FORMAT_DATE),
    ],
)
def test_dates_rejected(path: str, value: Any, message: str) -> None:
    assert errors_of(with_value(path, value)) == {path: message}


def test_date_objects_are_not_accepted_as_input() -> None:
    # posted facts are JSON; a date object means the caller skipped parse_json
    errs = errors_of(with_value("disposition.date", datetime.date(2024, 3, 1)))
    assert errs == {"disposition.date": FORMAT_DATE}


# --------------------------------------------------------------------------- settlement


def test_settlement_amount_required_when_agreed() -> None:
    doc = with_value("negotiation.state", "settlement_agreed")
    assert errors_of(doc) == {
        "negotiation.settlement_amount": "required when negotiation.state is settlement_agreed"
    }
    doc["negotiation"]["settlement_amount"] = None
    assert list(errors_of(doc)) == ["negotiation.settlement_amount"]
    doc["negotiation"]["settlement_amount"] = "0"
    out = validate_facts(doc, today=TODAY)
    assert out["negotiation"]["settlement_amount"] == Decimal("0.00")


def test_settlement_amount_invalid_reported_once() -> None:
    doc = with_value("negotiation", {"state": "settlement_agreed", "settlement_amount": "x"})
    assert errors_of(doc) == {"negotiation.settlement_amount": FORMAT}


@pytest.mark.parametrize("state", [s for s in FACT_ENUMS["negotiation.state"]])
def test_settlement_amount_optional_otherwise(state: str) -> None:
    if state == "settlement_agreed":
        return
    out = validate_facts(with_value("negotiation.state", state), today=TODAY)
    assert "settlement_amount" not in out["negotiation"]
    out = validate_facts(
        with_value("negotiation", {"state": state, "settlement_amount": "10"}), today=TODAY
    )
    assert out["negotiation"]["settlement_amount"] == Decimal("10.00")


def test_settlement_rule_skipped_when_state_invalid() -> None:
    doc = with_value("negotiation.state", "Settlement_Agreed")
    assert list(errors_of(doc)) == ["negotiation.state"]


# --------------------------------------------------------------------------- to_json_facts


def test_to_json_facts() -> None:
    out = validate_facts(full(), today=TODAY)
    j = to_json_facts(out)
    assert j["as_of"] == "2024-06-01"
    assert j["disposition"]["date"] == "2024-03-01"
    assert j["loan"]["unpaid_balance"] == "250000.00"
    assert j["loan"]["fees"] == "35.00"
    assert j["collateral"]["acres"] == "0.25"
    assert j["collateral"]["dwelling_units"] == 1
    assert j["disposition"]["costs"]["repossession"] == "0.00"
    assert j["loan"]["consumer"] is True
    assert json.loads(json.dumps(j)) == j
    # the JSON form is itself valid facts and normalises to the same thing
    assert validate_facts(j, today=TODAY) == out
    assert validate_facts(parse_json(json.dumps(j)), today=TODAY) == out
    # the normalised facts are untouched
    assert out["loan"]["unpaid_balance"] == Decimal("250000.00")


# --------------------------------------------------------------------------- parse_json


def test_parse_json_exact_numbers() -> None:
    value = parse_json(b'{"a": 1, "b": 0.10, "c": 1E+2, "d": -0, "e": [1.5, 2]}')
    assert value == {
        "a": 1,
        "b": Decimal("0.10"),
        "c": Decimal("1E+2"),
        "d": 0,
        "e": [
            Decimal("1.5"),
            2,
        ],
    }
    assert type(value["a"]) is int and type(value["b"]) is Decimal
    assert str(value["b"]) == "0.10"
    assert parse_json("0.1") + parse_json("0.2") == Decimal("0.3")


@pytest.mark.parametrize("data", [b"{}", "{}", bytearray(b"{}"), memoryview(b"{}"), b" {} \n"])
def test_parse_json_input_types(data: Any) -> None:
    assert parse_json(data) == {}


def test_parse_json_unicode() -> None:
    assert parse_json('{"id": "Pr\u00eat"}'.encode()) == {"id": "Prêt"}
    assert parse_json(b'{"id": "\\u00e9"}') == {"id": "é"}


def one_error(data: Any, **kw: Any) -> FieldError:
    with pytest.raises(FactsInvalid) as info:
        parse_json(data, **kw)
    assert len(info.value.errors) == 1, info.value.errors
    return info.value.errors[0]


@pytest.mark.parametrize("name", ["NaN", "Infinity", "-Infinity"])
def test_parse_json_rejects_non_finite(name: str) -> None:
    err = one_error(f'{{"loan": {{"unpaid_balance": {name}}}}}'.encode())
    message = f"{name} is not allowed: numbers must be finite"
    assert err == FieldError("loan.unpaid_balance", message)


def test_non_finite_literals_are_each_named_by_their_path() -> None:
    with pytest.raises(FactsInvalid) as info:
        parse_json(b'{"loan": {"fees": Infinity, "id": "a", "id": "b"}, "items": [1, -Infinity],'
                   b' "disposition": {"costs": {"legal": NaN}}}')
    assert info.value.errors == [
        FieldError("loan.id", "duplicate key"),
        FieldError("loan.fees", "Infinity is not allowed: numbers must be finite"),
        FieldError("items[1]", "-Infinity is not allowed: numbers must be finite"),
        FieldError("disposition.costs.legal", "NaN is not allowed: numbers must be finite"),
    ]
    assert one_error(b"NaN") == FieldError("", "NaN is not allowed: numbers must be finite")
    assert one_error(rb'{"\u00e9 x": NaN}').path == r'["\u00e9 x"]'


def test_many_non_finite_literals_are_capped() -> None:
    with pytest.raises(FactsInvalid) as info:
        parse_json("[" + ", ".join(["NaN"] * 500) + "]")
    errs = info.value.errors
    assert len(errs) == MAX_ERRORS
    assert errs[0] == FieldError("[0]", "NaN is not allowed: numbers must be finite")
    assert errs[-1] == FieldError("", f"{500 - MAX_ERRORS + 1} more errors not listed")


def test_parse_json_rejects_duplicate_keys() -> None:
    err = one_error(b'{"jurisdiction": "CA", "jurisdiction": "OH"}')
    assert err == FieldError("jurisdiction", "duplicate key")
    err = one_error(b'{"loan": {"id": "a", "type": "auto", "id": "b"}}')
    assert err == FieldError("loan.id", "duplicate key")
    err = one_error(b'{"items": [{}, {"x": 1, "x": 1}]}')
    assert err == FieldError("items[1].x", "duplicate key")
    with pytest.raises(FactsInvalid) as info:
        parse_json(b'{"a": 1, "a": 2, "b": {"c": 1, "c": 1, "c": 2}, "a": 3}')
    assert info.value.errors == [
        FieldError("a", "duplicate key"),
        FieldError("b.c", "duplicate key"),
    ]


@pytest.mark.parametrize(
    "data", [b'{"id": "\xff"}', b'{"id": "\xc3"}', b"\xed\xa0\x80", b'{"a": "\xe9t\xe9"}']
)
def test_parse_json_rejects_invalid_utf8(data: bytes) -> None:
    err = one_error(data)
    assert err.path == "" and err.message.startswith("invalid UTF-8 at byte ")


def test_parse_json_rejects_bom() -> None:
    err = one_error(b"\xef\xbb\xbf{}")
    assert err.path == "" and "byte order mark" in err.message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"{",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": 01}',
        b'{"a": .5}',
        b'{"a": +1}',
        b'{"a": 1} x',
        b"[1, 2",
        b'{"a" 1}',
        b"nan",
        b"undefined",
        b'"\\x41"',
        b'{"a": "unterminated',
        b"\x00",
        b"{}\x00",
    ],
)
def test_parse_json_rejects_malformed(data: bytes) -> None:
    err = one_error(data)
    assert err.path == ""
    assert err.message.startswith("malformed JSON")


def test_malformed_json_has_line_and_column() -> None:
    err = one_error(b'{\n  "a": 1,\n  "b": }')
    assert err.message == "malformed JSON: Expecting value at line 3 column 8"


@pytest.mark.parametrize("depth", [100_000, 1_000_000])
def test_parse_json_rejects_deep_nesting_fast(depth: int) -> None:
    for data in (b"[" * depth, b"[" * depth + b"]" * depth, b'{"a":' * depth):
        start = time.perf_counter()
        err = one_error(data)
        assert time.perf_counter() - start < 0.5
        assert err == FieldError("", "JSON nested too deeply (more than 32 levels)")


def test_parse_json_depth_limit_exact() -> None:
    assert isinstance(parse_json("[" * 32 + "]" * 32), list)
    one_error("[" * 33 + "]" * 33)
    assert parse_json("[" * 5 + "]" * 5, max_depth=5)
    one_error("[" * 6 + "]" * 6, max_depth=5)
    nested_objects = '{"a":' * 32 + "1" + "}" * 32
    assert parse_json(nested_objects)
    one_error('{"a":' * 33 + "1" + "}" * 33)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 10_000 + '\\"{' * 100, "t": ["]]]", "\\"]})
    value = parse_json(text)
    assert value["s"].startswith("[[[")
    assert value["t"] == ["]]]", "\\"]


def test_parse_json_big_numbers() -> None:
    assert one_error(b"1" * 5000).message.startswith("number too long")
    assert one_error(b"0." + b"1" * 5000).message.startswith("number too long")
    assert one_error(b"1e9999999999999999999").message.startswith("number out of range")
    assert parse_json(b"1e999999") == Decimal("1e999999")  # rejected later as money


def test_parse_json_max_bytes() -> None:
    assert parse_json(b"[1]", max_bytes=3) == [1]
    assert one_error(b"[1] ", max_bytes=3).message == "document too large (more than 3 bytes)"
    assert one_error("[1] ", max_bytes=3).message == "document too large (more than 3 bytes)"
    assert one_error('"\u00e9\u00e9"', max_bytes=5).message.startswith("document too large")
    assert parse_json('"\u00e9\u00e9"', max_bytes=6) == "éé"


@pytest.mark.parametrize("data", [None, 1, {}, [], 1.5])
def test_parse_json_rejects_non_text(data: Any) -> None:
    assert one_error(data).path == ""


def test_parse_then_validate_the_car_example() -> None:
    body = json.dumps(minimal()).encode()
    out = validate_facts(parse_json(body), today=TODAY)
    assert out["disposition"]["costs"]["legal"] == Decimal("500.00")


# --------------------------------------------------------------------------- hypothesis

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["CA", "auto", "mortgage", "2024-03-01", "8500.00", "settlement_agreed"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["loan", "id", "type", "sid", "$x", "costs", "state"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_values_only_raise_facts_invalid(value: Any) -> None:
    try:
        out = validate_facts(value, today=TODAY)
    except FactsInvalid as exc:
        assert exc.errors
        assert str(exc)
        for e in exc.errors:
            e.path.encode("utf-8")
    else:
        assert isinstance(out, dict)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_documents_only_raise_facts_invalid(data: st.DataObject) -> None:
    doc = full()
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(sorted(FACT_FIELDS) + ["loan", "negotiation", "sid"]))
        value = data.draw(json_values)
        # (an earlier mutation may have replaced a parent object with a non-object)
        with contextlib.suppress(TypeError, AttributeError):
            set_path(doc, path, value)
    try:
        out = validate_facts(doc, today=TODAY)
    except FactsInvalid as exc:
        assert exc.errors
        assert len({e.path for e in exc.errors}) == len(exc.errors)
    else:
        assert json.loads(json.dumps(to_json_facts(out))) == to_json_facts(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_only_raise_facts_invalid(data: bytes) -> None:
    try:
        value = parse_json(data)
    except FactsInvalid as exc:
        assert len(exc.errors) >= 1
        return
    with contextlib.suppress(FactsInvalid):
        validate_facts(value, today=TODAY)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_parse_json_agrees_with_dumps(value: Any) -> None:
    try:
        text = json.dumps(value, default=str, allow_nan=True)
    except (TypeError, ValueError):
        return
    with contextlib.suppress(FactsInvalid):
        parse_json(text)


money_text = st.decimals(min_value=Decimal(0), max_value=Decimal("999999999999.99"), places=2).map(
    str
)


@st.composite
def valid_facts(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "jurisdiction": draw(st.sampled_from(JURISDICTIONS)),
        "loan": {
            "id": draw(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=128)),
            "type": draw(st.sampled_from(FACT_ENUMS["loan.type"])),
            "unpaid_balance": draw(money_text),
        },
        "collateral": {"kind": draw(st.sampled_from(FACT_ENUMS["collateral.kind"]))},
        "disposition": {
            "method": draw(st.sampled_from(FACT_ENUMS["disposition.method"])),
            "date": draw(
                st.dates(datetime.date(1900, 1, 1), datetime.date(2199, 12, 31))
            ).isoformat(),
            "proceeds": draw(money_text | st.integers(0, 999999999999)),
        },
    }
    for path, kind in FACT_FIELDS.items():
        if path in FACT_REQUIRED or not draw(st.booleans()):
            continue
        if kind == "money" or kind == "decimal":
            value: Any = draw(money_text)
        elif kind == "bool":
            value = draw(st.booleans())
        elif kind == "enum":
            value = draw(st.sampled_from(FACT_ENUMS[path]))
        elif kind == "int":
            value = draw(st.integers(1, 1000))
        elif kind == "date":
            value = draw(st.dates(datetime.date(1900, 1, 1), datetime.date(2199, 12, 31)))
            value = value.isoformat()
        else:  # pragma: no cover
            raise AssertionError(path)
        set_path(doc, path, value)
    if doc.get("negotiation", {}).get("state") == "settlement_agreed":
        doc["negotiation"].setdefault("settlement_amount", "1.00")
    return doc


@settings(max_examples=200, deadline=None)
@given(valid_facts())
def test_valid_facts_round_trip(doc: dict[str, Any]) -> None:
    out = validate_facts(parse_json(json.dumps(doc)), today=TODAY)
    j = to_json_facts(out)
    assert validate_facts(j, today=TODAY) == out
    assert set(out) == {
        "as_of",
        "jurisdiction",
        "loan",
        "collateral",
        "disposition",
        "negotiation",
        "borrower",
    }
    for path in FACT_FIELDS:
        if path in FACT_OPTIONAL:
            continue
        get_path(out, path)  # always present


# --------------------------------------------------------------------------- speed


def test_validation_is_fast() -> None:
    import timeit

    doc = parse_json(json.dumps(full(), default=str))
    number = 2000
    best = min(timeit.repeat(lambda: validate_facts(doc, today=TODAY), number=number, repeat=5))
    # generous bound for loaded CI machines; typically ~10-20 µs
    assert best / number < 200e-6


def test_many_duplicate_keys_fast_and_capped() -> None:
    body = "{" + ",".join(f'"k{i}": 1, "k{i}": 2' for i in range(50_000)) + "}"
    start = time.perf_counter()
    with pytest.raises(FactsInvalid) as info:
        parse_json(body)
    assert time.perf_counter() - start < 2
    errs = info.value.errors
    assert len(errs) == MAX_ERRORS
    assert errs[0] == FieldError("k0", "duplicate key")
    assert errs[-1] == FieldError("", f"{50_000 - MAX_ERRORS + 1} more errors not listed")


def test_many_unknown_keys_fast() -> None:
    doc = minimal()
    for i in range(100_000):
        doc[f"unknown-{i}"] = i
    start = time.perf_counter()
    with pytest.raises(FactsInvalid) as info:
        validate_facts(doc)
    assert time.perf_counter() - start < 1
    assert len(info.value.errors) == MAX_ERRORS


def _true_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\\\nab\u00e9\U0001f600 ', max_size=12)
nested = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(nested, st.booleans(), st.integers(0, 12))
def test_depth_scan_matches_real_depth(value: Any, ascii_only: bool, limit: int) -> None:
    from service.strictjson import _too_deep

    text = json.dumps(value, ensure_ascii=ascii_only)
    depth = _true_depth(value)
    assert _too_deep(text, limit) == (depth > limit)
    if depth <= limit:
        assert parse_json(text, max_depth=limit) == value
    else:
        with pytest.raises(FactsInvalid, match="nested too deeply"):
            parse_json(text, max_depth=limit)
