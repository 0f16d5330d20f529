"""What an earlier stage's output can be during the search: a set of plain values,
`ANY` (not enumerable), or numbers bounded by a `Range`."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ...engine.reference import COMPARE
from ...policy.model import EQ, EXISTS, MISSING, NE
from .piecewise import to_num

CENT = Decimal("0.01")


class _AnySet:
    """Any value at all (an output whose possible values are not enumerable)."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _AnySet()


def union(a: Any, b: Any) -> Any:
    if a is ANY or b is ANY:
        return ANY
    return a | b


@dataclass(frozen=True)
class Range:
    """Some number from lo to hi (Fractions; dates as day numbers): a bound on an output."""

    lo: Fraction
    hi: Fraction

    def test(self, op: str, other: Any) -> bool | None:
        """The comparison for every value of the range: True, False or None (it depends)."""
        if op == EXISTS:
            return True
        if op == MISSING or other is None:
            return False
        if op not in COMPARE:
            return None
        try:
            x = to_num(other)
        except (TypeError, ValueError):
            return None
        at_lo, at_hi = COMPARE[op](self.lo, x), COMPARE[op](self.hi, x)
        if op in (EQ, NE):
            if self.lo == self.hi:
                return at_lo
            inside = self.lo <= x <= self.hi
            return None if inside else op == NE
        return at_lo if at_lo == at_hi else None
