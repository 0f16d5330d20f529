"""Running compiled rules in durable-rules, the way ENGINE-NOTES says is safe.

We drive the engine's C API (`durable_rules_engine`) directly rather than its
Python `Host`/`Ruleset` wrapper: the wrapper's action loop re-encodes the
session state as JSON around every action (about 90% of the time per
decision) and starts dispatcher timer threads that steal actions across
request threads and crash the process. Driving the C API ourselves:
- no `Host`, so no background threads at all;
- one uniquely named engine ruleset per loaded ruleset version (names cannot
  be re-registered; hot reload builds a new one and frees the old one);
- per decision a session of its own: taken from a bounded pool of idle
  sessions (emptied by retracting exactly the facts the decision asserted:
  a session's first fact costs about twice what later ones do) or a fresh
  sid; a decision that fails in any way deletes its session in `finally`, so
  a half-decided session is never reused; live sessions stay far below the
  engine's 1024. Every stage has a catch-all rule on the marker each stage
  fact carries, so at least one action always runs before `delete_state`
  (deleting a session in which no action ran crashes);
- stage facts are JSON with non-ASCII text \\u-escaped (raw UTF-8 never
  equals the same text in a compiled rule);
- matches are recorded from the actions the engine hands out (the call
  returns the session, not the fired rules); the engine's agenda order is
  never trusted for the hit policy;
- the catch-all has the lowest engine priority (fires last in its stage): it
  resolves the stage and asserts the next stage's fact into the same session,
  so the stages chain forward inside the engine;
- an error in our action code propagates (the wrapper would have swallowed it
  into the state); the action is abandoned and the session still deleted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import itertools
import json
import re
from decimal import Decimal
from typing import Any

import durable_rules_engine as dre
import orjson

from ..policy.model import Rule, Ruleset
from .compiler import STAGE_KEY, Compiler, encode, simultaneous_tests_bound

_names = itertools.count(1)
_sids = itertools.count(1)
_malloc_tuned = False


def tune_malloc() -> None:
    """Stop glibc giving the heap back to the OS after every decision (4-5x slower).

    Each engine session node is a few hundred KB; with the default thresholds
    glibc trims and re-maps them on every decision.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


class EngineError(Exception):
    pass


class EngineLimit(EngineError):
    """The ruleset exceeds a limit of the engine (ENGINE-NOTES)."""


# More than 64 distinct tests true for one fact makes the engine fail (error 303).
MAX_SIMULTANEOUS_TESTS = 64
# Emptied sessions kept for reuse per loaded ruleset (the engine allows 1024 live ones).
MAX_IDLE_SESSIONS = 64


class DurableMatcher:
    """Finds matching rules with durable-rules, stage after stage in one call."""

    name = "durable-rules"

    def __init__(self, rs: Ruleset) -> None:
        tune_malloc()
        self.rs = rs
        compiler = Compiler(rs)
        self.engine_name = f"{rs.name}-{rs.version}-{rs.sha256[:12]}-{next(_names)}"
        self._leaked = 0
        # Idle engine sessions, each emptied by retraction after a successful decision
        # (a session's first fact costs about twice what the next ones do). Bounded:
        # live sessions stay far below the engine's 1024.
        self._idle: list[str] = []
        definition: dict[str, Any] = {}
        self._by_name: dict[str, Rule] = {}
        for i, rule in enumerate(rs.rules):
            definition[f"r{i}"] = {
                "all": [{"m": compiler.rule_condition(rule.stage, rule.when)}],
                "pri": 1,
            }
            self._by_name[f"r{i}"] = rule
        # A catch-all per stage ends it: it resolves the stage and asserts the next
        # stage's fact. The last stage needs none (it ends when the engine has no
        # more actions) unless it is the only one: some action must always run.
        self._stage_end: dict[str, tuple[str, str | None]] = {}
        self._last = rs.stages[-1] if len(rs.stages) > 1 else None
        for i, stage in enumerate(rs.stages):
            if stage == self._last:
                break
            nxt = rs.stages[i + 1] if i + 1 < len(rs.stages) else None
            definition[f"stage{i}"] = {
                "all": [{"m": {STAGE_KEY: stage}}],
                "pri": 2,  # after every rule of the stage (lower fires first)
            }
            self._stage_end[f"stage{i}"] = (stage, nxt)
        bound = simultaneous_tests_bound([d["all"][0]["m"] for d in definition.values()])
        if bound > MAX_SIMULTANEOUS_TESTS:
            raise EngineLimit(
                f"the rules hold {bound} distinct tests that could be true for one fact; the "
                f"engine fails above {MAX_SIMULTANEOUS_TESTS} (error 303): share or simplify tests")
        self.definition = definition
        self.keys = compiler.keys  # path -> engine key, for tests and debugging
        # Per stage: how to build its fact from the context - only the paths its
        # rules read, each as the engine compares it (cents, day ordinals, ...).
        self._plain: dict[str, tuple[tuple[str, str], ...]] = {}  # sent as they are
        self._encoded: dict[str, tuple[tuple[str, str, Any], ...]] = {}
        self._lookups: dict[str, list[tuple[str, dict, str, int]]] = {}
        for stage in rs.stages:
            plan = [(p, compiler.key(p), _encoder(_kind(p, rs)))
                    for p in compiler.stage_paths(stage)]
            self._plain[stage] = tuple((p, k) for p, k, enc in plan if enc is None)
            self._encoded[stage] = tuple((p, k, enc) for p, k, enc in plan if enc is not None)
            self._lookups[stage] = [(compiler.key(f), rs.tables[t], k, scale) for f, (t, k, scale)
                                    in compiler.stage_lookups(stage).items()]
        try:
            self._handle = dre.create_ruleset(self.engine_name, json.dumps(definition))
        except dre.error as exc:
            raise EngineLimit(_explain_engine_error(rs, compiler, exc)) from None

    def stage_fact(self, stage: str, ctx: dict, sid: str) -> dict:
        fact: dict[str, Any] = {"sid": sid, STAGE_KEY: stage}
        get = ctx.get
        for path, k in self._plain[stage]:
            value = get(path)
            if value is not None:
                fact[k] = value
        for path, k, enc in self._encoded[stage]:
            value = get(path)
            if value is not None:
                fact[k] = enc(value)
        for k, table, key_path, scale in self._lookups[stage]:
            entry = table.get(get(key_path))
            if entry is not None:
                fact[k] = int(entry * scale)
        return fact

    def run(self, ctx: dict, on_stage) -> None:
        """Match stage after stage; `on_stage(stage, rules)` resolves a stage into `ctx`
        and returns it, so the next stage's fact carries the earlier outputs."""
        handle = self._handle
        if handle is None:
            raise EngineError("this ruleset's engine has been closed")
        idle = self._idle
        try:
            sid = idle.pop()  # atomic under the GIL: no two calls share a session
            reused = True
        except IndexError:
            sid = f"d{next(_sids)}"
            reused = False
        by_name, stage_end = self._by_name, self._stage_end
        matches: list[Rule] = []
        asserted: list[str] = []
        actions = 0
        in_action = False
        done = False
        state = None
        try:
            text = _dumps(self.stage_fact(self.rs.stages[0], ctx, sid))
            asserted.append(text)
            state = dre.assert_fact(handle, text)[1]
            started = dre.start_action_for_state(handle, state)
            message = started[1] if started else None
            while message:
                in_action = True
                actions += 1
                # The message is {"<rule name>": {...}}: only the name is needed.
                name = message[2:message.index('"', 2)]
                rule = by_name.get(name)
                if rule is not None:
                    matches.append(rule)
                else:
                    stage, nxt = stage_end[name]
                    resolved, matches = matches, []
                    ctx = on_stage(stage, resolved)
                    if nxt is not None:
                        text = _dumps(self.stage_fact(nxt, ctx, sid))
                        asserted.append(text)
                        dre.assert_fact(handle, text)
                message = dre.complete_and_start_action(handle, state)
                in_action = False
            if self._last is not None:
                on_stage(self._last, matches)
            done = actions > 0
        except dre.error as exc:
            raise EngineError(f"engine: {exc}") from exc
        finally:
            if in_action and state is not None:
                dre.abandon_action(handle, state)
            if done:
                self._release(handle, sid, asserted)
            elif actions or reused:
                dre.delete_state(handle, sid)
            else:
                # Deleting a session in which no action ran crashes the engine; the
                # catch-all rules make that impossible, but never risk the process.
                self._leaked += 1

    def _release(self, handle: Any, sid: str, asserted: list[str]) -> None:
        """Empty a session that decided cleanly and keep it for the next decision."""
        try:
            for text in asserted:
                dre.retract_fact(handle, text)
        except dre.error:
            dre.delete_state(handle, sid)
            return
        if len(self._idle) < MAX_IDLE_SESSIONS:
            self._idle.append(sid)
        else:
            dre.delete_state(handle, sid)

    def close(self) -> None:
        """Free the engine's memory for this ruleset (only when no call can be inside it)."""
        if self._handle is not None:
            while self._idle:
                dre.delete_state(self._handle, self._idle.pop())
            dre.delete_ruleset(self._handle)
            self._handle = None


_ENGINE_ERRORS = {
    "106": "more rules than the engine supports",
    "113": "the condition is too complex for the engine (at most 32 expressions in one "
           "comparison sequence); split it into simpler rules or compare fewer paths",
}


def _explain_engine_error(rs: Ruleset, compiler: Compiler, exc: Exception) -> str:
    """Which rules the engine refuses, and why, with their file positions."""
    bad = []
    for i, rule in enumerate(rs.rules):
        single = {"r": {"all": [{"m": compiler.rule_condition(rule.stage, rule.when)}]}}
        try:
            handle = dre.create_ruleset(f"probe-{next(_names)}-{i}", json.dumps(single))
        except dre.error as rule_exc:
            code = str(rule_exc).rsplit(" ", 1)[-1]
            bad.append(f"{rule.pos}: rule {rule.id}: {_ENGINE_ERRORS.get(code, rule_exc)}")
        else:
            dre.delete_ruleset(handle)
    return "; ".join(bad) if bad else f"the engine refused the ruleset: {exc}"


def _dumps(fact: dict) -> str:
    """A stage fact as the JSON text the engine reads (ints, bools and strings only).

    Non-ASCII text must reach the engine \\u-escaped, as its rules were compiled: raw
    UTF-8 in a fact never equals the same text in a rule (measured). orjson writes
    UTF-8; in JSON text non-ASCII characters can only be inside strings, so each is
    replaced by its escape, as `json.dumps` would write it."""
    try:
        text = orjson.dumps(fact).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate: json.dumps escapes it
        return json.dumps(fact, separators=(",", ":"))
    if text.isascii() and "\x7f" not in text:
        return text
    return _NON_ASCII.sub(_escape, text)


_NON_ASCII = re.compile(r"[^\x00-\x7e]")  # and DEL, which json.dumps escapes too


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a UTF-16 surrogate pair, as JSON requires
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def _cents(value: Any) -> Any:
    """Money as integer cents (`compiler.encode` for money, without its dispatch)."""
    return int(value * 100) if type(value) is Decimal else encode(value, "money")


def _encoder(kind: str) -> Any:
    """How a value of this type travels to the engine (None: as it is)."""
    if kind in ("money", "decimal"):
        return _cents
    if kind == "date":
        return datetime.date.toordinal
    if kind == "int":
        return int
    return None


def _kind(path: str, rs: Ruleset) -> str:
    from ..policy.schema import OUTPUT_FIELDS, input_type

    t = input_type(path)
    if t is not None:
        return t[0]
    if path in OUTPUT_FIELDS:
        return OUTPUT_FIELDS[path][0]
    return rs.var_kinds.get(path, "string")
