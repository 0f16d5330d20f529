"""One decision: facts -> validate -> amounts -> stages (engine) -> resolve -> decision JSON."""

from __future__ import annotations

import datetime
import os
import threading
import time
from decimal import Decimal
from typing import Any

from .. import amounts as amounts_mod
from .. import facts as facts_mod
from ..policy.model import Rule, Ruleset
from ..policy.schema import OUTPUT_DEFAULTS
from .reference import ReferenceMatcher
from .resolver import Resolution, json_value, plan_rules, resolve_stage
from .runtime import DurableMatcher

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two Crockford base-32 characters.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_SHIFTS = tuple(range(120, -1, -10))
_id_lock = threading.Lock()
_last_id = [0]
#: Random bytes for decision ids, drawn from the OS in blocks: `os.urandom` for each id
#: is a system call that lets go of the interpreter lock (a thread switch under load).
_RANDOM_BLOCK = 10 * 256
_random = bytearray()


def _forget_random() -> None:
    """A forked child must not hand out its parent's random bits again."""
    _random.clear()


os.register_at_fork(after_in_child=_forget_random)


def new_decision_id() -> str:
    """A ULID: 48-bit milliseconds + 80 random bits, Crockford base32; sorts by time.
    Strictly increasing within the process."""
    with _id_lock:
        if not _random:
            _random.extend(os.urandom(_RANDOM_BLOCK))
        value = ((time.time_ns() // 1_000_000) << 80) | int.from_bytes(_random[-10:], "big")
        del _random[-10:]
        if value <= _last_id[0]:
            value = _last_id[0] + 1
        _last_id[0] = value
    # 130 bits as 13 pairs of 5-bit digits; the ULID's top 2 bits are zero.
    return "".join([_PAIRS[(value >> s) & 1023] for s in _SHIFTS])


class _Paths(dict):
    """"section" + "key" -> "section.key", made once per key (no string building per decision)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, key: str) -> str:
        path = self[key] = f"{self.prefix}.{key}"
        return path


class _SubPaths(dict):
    """"section.key" -> its `_Paths`, for the objects nested in a section."""

    def __missing__(self, prefix: str) -> _Paths:
        paths = self[prefix] = _Paths(prefix)
        return paths


_SECTIONS = tuple((s, _Paths(s)) for s in ("loan", "collateral", "disposition", "negotiation",
                                           "borrower"))
_SUB_PATHS = _SubPaths()
_AMOUNT_PATHS = _Paths("amounts")


def context(facts: dict, amounts: dict[str, Decimal]) -> dict:
    """The flat path -> value view rules read: facts, then `amounts.*`."""
    ctx = {"as_of": facts["as_of"], "jurisdiction": facts["jurisdiction"]}
    for section, paths in _SECTIONS:
        for k, v in facts[section].items():
            if type(v) is dict:
                sub = _SUB_PATHS[paths[k]]
                for k2, v2 in v.items():
                    ctx[sub[k2]] = v2
            else:
                ctx[paths[k]] = v
    for name, value in amounts.items():
        ctx[_AMOUNT_PATHS[name]] = value
    return ctx


class Decider:
    """Decides with one loaded ruleset. Thread-safe; `matcher` is "durable" or "reference"."""

    def __init__(self, rs: Ruleset, matcher: str = "durable") -> None:
        self.rs = rs
        self.matcher = DurableMatcher(rs) if matcher == "durable" else ReferenceMatcher(rs)
        self._plans = plan_rules(rs)
        self.ruleset_info = {"name": rs.name, "version": rs.version, "sha256": rs.sha256}

    def close(self) -> None:
        close = getattr(self.matcher, "close", None)
        if close:
            close()

    def decide(self, raw: Any, *, today: datetime.date | None = None) -> dict:
        """Validate raw JSON-decoded facts and decide; raises facts.FactsInvalid."""
        return self.decide_facts(facts_mod.validate_facts(raw, today=today))

    def evaluate(self, facts: dict) -> tuple[dict[str, Decimal], Resolution]:
        """The matching and hit policy, without building the response."""
        amounts = amounts_mod.compute_amounts(facts)
        res = Resolution(context(facts, amounts))
        rs, plans = self.rs, self._plans

        def on_stage(stage: str, matched: list[Rule]) -> dict:
            resolve_stage(rs, stage, matched, res, plans)
            return res.ctx

        self.matcher.run(res.ctx, on_stage)
        return amounts, res

    def decide_facts(self, facts: dict) -> dict:
        started = time.perf_counter()
        amounts, res = self.evaluate(facts)
        decision = self.build(facts, amounts, res)
        decision["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return decision

    def build(self, facts: dict, amounts: dict[str, Decimal], res: Resolution) -> dict:
        ctx = res.ctx
        get = ctx.get
        defaults = OUTPUT_DEFAULTS

        def out(path: str) -> Any:
            value = get(path)
            return json_value(defaults.get(path) if value is None else value)

        return {
            "decision_id": new_decision_id(),
            "loan_id": facts["loan"]["id"],
            "as_of": facts["as_of"].isoformat(),
            "amounts": {k: str(v) for k, v in amounts.items()},  # already to the cent
            "outcome": {
                "bearer": out("outcome.bearer"),
                "action": out("outcome.action"),
                "borrower_owes": out("outcome.borrower_owes"),
                "lender_absorbs": out("outcome.lender_absorbs"),
                "surplus_to_borrower": out("outcome.surplus_to_borrower"),
                "deadline": out("outcome.deadline"),
                "basis": out("outcome.basis"),
            },
            "credit_reporting": {
                "category": out("credit_reporting.category"),
                "balance": out("credit_reporting.balance"),
            },
            "tax": {
                "form": out("tax.form"),
                "canceled_debt": out("tax.canceled_debt"),
                "event_code": out("tax.event_code"),
                "notes": res.lists["tax.notes"],
            },
            "explanation": res.lists["explanation"],
            "ruleset": dict(self.ruleset_info),
            "trace": res.trace,
            "evaluated_at": _utc_now_text(),
            "duration_ms": 0.0,
        }


def _utc_now_text() -> str:
    """Now, UTC, to the microsecond: `2026-11-24T03:01:04.909552Z`."""
    return datetime.datetime.now(datetime.UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
