"""Amounts computed before any rule (SPEC §3, UCC §9-615 order), exact over Decimal.

- debt       = loan.unpaid_balance + loan.accrued_interest + loan.fees
- costs      = sum of disposition.costs
- credits    = disposition.credits
- claim      = debt + costs - credits   (negative when credits exceed debt + costs)
- proceeds   = disposition.proceeds
- deficiency = max(claim - proceeds, 0)
- surplus    = max(proceeds - claim, 0)

So ``deficiency - surplus == claim - proceeds`` and at most one of them is non-zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

__all__ = ["AMOUNT_KEYS", "COST_KEYS", "compute_amounts", "money_str"]

#: Keys of :func:`compute_amounts`' result, in order.
AMOUNT_KEYS: tuple[str, ...] = (
    "debt",
    "costs",
    "credits",
    "claim",
    "proceeds",
    "deficiency",
    "surplus",
)
#: The six cost categories of ``disposition.costs``.
COST_KEYS: tuple[str, ...] = ("repossession", "storage", "preparation", "sale", "legal", "admin")

#: Where each value of ``compute_amounts``' input list comes from (for error messages).
_PATHS: tuple[str, ...] = (
    "loan.unpaid_balance",
    "loan.accrued_interest",
    "loan.fees",
    *(f"disposition.costs.{key}" for key in COST_KEYS),
    "disposition.credits",
    "disposition.proceeds",
)

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
# Explicit context so results never depend on the calling thread's decimal context.
# 40 digits hold any sum of facts amounts (each at most 999,999,999,999.99) exactly.
_CTX = Context(prec=40, rounding=ROUND_HALF_UP, Emax=999_999, Emin=-999_999)


def _money(value: Any, what: str) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what}: amount must be finite")
        return value
    if type(value) is int:
        return Decimal(value)
    raise TypeError(f"{what}: amount must be a Decimal, got {type(value).__name__}")


def _q(value: Decimal) -> Decimal:
    d = value.quantize(_CENT, context=_CTX)
    return _ZERO if d.is_zero() else d  # normalise -0.00 to 0.00


def compute_amounts(facts: Mapping[str, Any]) -> dict[str, Decimal]:
    """The SPEC §3 amounts of normalised facts (from ``validate_facts``), each to 2 places.

    Defaulted fields (interest, fees, costs, credits) may be absent and count as 0.
    Amounts must be ``Decimal`` (or ``int``); anything else raises ``TypeError``.
    """
    loan = facts["loan"]
    disposition = facts["disposition"]
    cost_items: Mapping[str, Any] = disposition.get("costs") or {}
    values = [
        loan["unpaid_balance"],
        loan.get("accrued_interest", _ZERO),
        loan.get("fees", _ZERO),
        *(cost_items.get(key, _ZERO) for key in COST_KEYS),
        disposition.get("credits", _ZERO),
        disposition["proceeds"],
    ]
    for v in values:
        if type(v) is not Decimal or not v.is_finite():
            values = [_money(v, path) for v, path in zip(values, _PATHS, strict=True)]
            break
    ctx = _CTX
    add = ctx.add
    debt = add(add(values[0], values[1]), values[2])
    costs = values[3]
    for v in values[4:9]:
        costs = add(costs, v)
    credits = values[9]
    proceeds = values[10]
    claim = ctx.subtract(add(debt, costs), credits)
    difference = ctx.subtract(claim, proceeds)
    if difference > 0:
        deficiency, surplus = difference, _ZERO
    else:
        deficiency, surplus = _ZERO, ctx.minus(difference)
    return {
        "debt": _q(debt),
        "costs": _q(costs),
        "credits": _q(credits),
        "claim": _q(claim),
        "proceeds": _q(proceeds),
        "deficiency": _q(deficiency),
        "surplus": _q(surplus),
    }


def money_str(d: Decimal | int) -> str:
    """A money amount as a string with exactly two decimals (``"2000.00"``), half-up rounded."""
    if isinstance(d, bool) or not isinstance(d, (Decimal, int)):
        raise TypeError(f"money_str needs a Decimal, got {type(d).__name__}")
    value = Decimal(d) if isinstance(d, int) else d
    if not value.is_finite():
        raise ValueError("money_str needs a finite amount")
    return format(_q(value), "f")


def dollars(value: Decimal | str) -> str:
    """A money amount as people read it: ``$1,234.56``, half-up to the cent; ``-$5.00``
    below zero. The one spelling of money in explanations and `--explain`."""
    q = _q(Decimal(value))
    if q.is_signed():
        return "$0.00" if q.is_zero() else f"-${-q:,.2f}"
    return f"${q:,.2f}"
