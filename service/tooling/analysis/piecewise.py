"""Piecewise-linear functions of one number, exact (Fractions): what a comparison of
amounts and facts is as a function of one fact path, the others fixed.

A function is a list of pieces `(start, slope, intercept)` in increasing order of
start; the first piece starts at None (minus infinity). Dates are day numbers.
"""

from __future__ import annotations

import datetime
from fractions import Fraction
from typing import Any


def to_num(value: Any) -> Fraction:
    """A number or a date (its day number) as a Fraction; a boolean is refused."""
    if isinstance(value, datetime.date):
        return Fraction(value.toordinal())
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return Fraction(value)


def pl_const(c: Fraction) -> list:
    return [(None, Fraction(0), c)]


def pl_var() -> list:
    return [(None, Fraction(1), Fraction(0))]


def _piece_at(f: list, x: Fraction | None) -> tuple:
    piece = f[0]
    if x is None:
        return piece
    for p in f:
        if p[0] is None or p[0] <= x:
            piece = p
        else:
            break
    return piece


def _pl_merge(f: list, g: list) -> list:
    starts = sorted({p[0] for p in f if p[0] is not None} | {p[0] for p in g if p[0] is not None})
    out = []
    for s in [None, *starts]:
        pf, pg = _piece_at(f, s), _piece_at(g, s)
        out.append((s, pf[1], pf[2], pg[1], pg[2]))
    return out


def pl_add(f: list, g: list, sign: int = 1) -> list:
    return [(s, a1 + sign * a2, b1 + sign * b2) for s, a1, b1, a2, b2 in _pl_merge(f, g)]


def pl_scale(f: list, k: Fraction) -> list:
    return [(s, a * k, b * k) for s, a, b in f]


def _inside(lo: Fraction | None, hi: Fraction | None) -> Fraction:
    if lo is None and hi is None:
        return Fraction(0)
    if lo is None:
        return hi - 1
    if hi is None:
        return lo + 1
    return (lo + hi) / 2


def pl_minmax(f: list, g: list, is_max: bool) -> list:
    merged = _pl_merge(f, g)
    out = []
    for i, (s, a1, b1, a2, b2) in enumerate(merged):
        e = merged[i + 1][0] if i + 1 < len(merged) else None
        cuts = [s]
        if a1 != a2:
            xc = (b2 - b1) / (a1 - a2)
            if (s is None or xc > s) and (e is None or xc < e):
                cuts.append(xc)
        for j, c in enumerate(cuts):
            ce = cuts[j + 1] if j + 1 < len(cuts) else e
            x = _inside(c, ce)
            first = (a1 * x + b1 >= a2 * x + b2) == is_max
            out.append((c, a1, b1) if first else (c, a2, b2))
    return out


def pl_roots(f: list) -> list[Fraction]:
    """The breakpoints and the roots of f: where a comparison of it with 0 can change."""
    points = [p[0] for p in f if p[0] is not None]
    for i, (s, a, b) in enumerate(f):
        if a == 0:
            continue
        e = f[i + 1][0] if i + 1 < len(f) else None
        r = -b / a
        if (s is None or r >= s) and (e is None or r < e):
            points.append(r)
    return points
