"""What rules can read and write: every path with its type.

Facts come from `service.facts` (one declarative table), amounts are SPEC §3,
outputs are the decision fields of SPEC §4. `vars.*` are policy-defined working
values (typed by what rules set them to); `decided_by.<stage>` is the id of the
rule that decided an earlier stage.
"""

from __future__ import annotations

from decimal import Decimal

from .. import facts as facts_mod
from .expr import AMOUNT, DATE, INT

AMOUNT_FIELDS = ("debt", "costs", "credits", "claim", "proceeds", "deficiency", "surplus")

BEARERS = ("borrower", "lender", "shared", "none", "pending", "review")
ACTIONS = (
    "pursue_deficiency", "collect_judgment", "accept_settlement", "write_off",
    "refund_surplus", "close", "hold_collection", "refer",
)
CREDIT_CATEGORIES = (
    "paid_in_full", "open_until_paid", "settled", "charged_off", "deed_in_lieu",
    "foreclosure", "no_change",
)
TAX_FORMS = ("1099-C", "1099-A")
EVENT_CODES = tuple("ABCDEFGH")

# path -> (type name, enum values or None, nullable)
OUTPUT_FIELDS: dict[str, tuple[str, tuple | None, bool]] = {
    "outcome.bearer": ("enum", BEARERS, False),
    "outcome.action": ("enum", ACTIONS, False),
    "outcome.borrower_owes": ("money", None, False),
    "outcome.lender_absorbs": ("money", None, False),
    "outcome.surplus_to_borrower": ("money", None, False),
    "outcome.deadline": ("date", None, True),
    "outcome.basis": ("string", None, False),
    "credit_reporting.category": ("enum", CREDIT_CATEGORIES, False),
    "credit_reporting.balance": ("money", None, False),
    "tax.form": ("enum", TAX_FORMS, True),
    "tax.canceled_debt": ("money", None, False),
    "tax.event_code": ("enum", EVENT_CODES, True),
}
LIST_OUTPUTS = ("tax.notes", "explanation")

ZERO = Decimal("0.00")
# Values an output has until a rule sets it.
OUTPUT_DEFAULTS = {
    "outcome.surplus_to_borrower": ZERO,
    "outcome.deadline": None,
    "credit_reporting.category": "no_change",
    "credit_reporting.balance": ZERO,
    "tax.form": None,
    "tax.canceled_debt": ZERO,
    "tax.event_code": None,
}

NO_RULE_DECIDED = "no rule decided"

# Kinds of the expression language for each numeric type name.
EXPR_KIND = {"money": AMOUNT, "decimal": AMOUNT, "int": INT, "date": DATE}

def fact_type(path: str) -> tuple[str, tuple | None] | None:
    kind = facts_mod.FACT_FIELDS.get(path)
    if kind is None:
        return None
    return kind, facts_mod.FACT_ENUMS.get(path)


def input_type(path: str) -> tuple[str, tuple | None] | None:
    """Type of a fact or amount path (what every stage can read)."""
    if path.startswith("amounts."):
        return ("money", None) if path[len("amounts."):] in AMOUNT_FIELDS else None
    return fact_type(path)


def all_input_paths() -> list[str]:
    return list(facts_mod.FACT_FIELDS) + [f"amounts.{a}" for a in AMOUNT_FIELDS]
