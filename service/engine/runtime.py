"""Running compiled rules in durable-rules, the way ENGINE-NOTES says is safe.

- A `Host` whose dispatcher timer threads never start (they steal actions
  across request threads and crash the process).
- One uniquely named engine ruleset per loaded ruleset version, on its own Host
  (names cannot be re-registered; hot reload builds a new one).
- Per decision a fresh session id, deleted in `finally`; every stage has a
  catch-all rule on the marker each stage fact carries, so at least one action
  always runs before `delete_state` (deleting a session in which no action ran
  crashes).
- Matches are recorded from the action callbacks (the call returns state, not
  fired rules); the engine's agenda order is never trusted for the hit policy.
- The catch-all has the lowest engine priority (fires last in its stage): it
  resolves the stage and asserts the next stage's fact from inside the action,
  so the stages chain forward within one engine call.
- Action code is wrapped: errors are kept and re-raised after the call (the
  engine would otherwise swallow them into the state).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
from typing import Any

import durable_rules_engine
from durable import engine as dr_engine

from ..policy.model import Rule, Ruleset
from .compiler import STAGE_KEY, Compiler, encode, key, simultaneous_tests_bound

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


class _QuietHost(dr_engine.Host):
    """A Host without the background dispatcher threads (no timers are needed)."""

    def _run(self) -> None:
        return None


class _Call:
    """The state of one engine call: matches so far and the stage callback."""

    __slots__ = ("matches", "on_stage", "actions", "error")

    def __init__(self, on_stage: Any) -> None:
        self.matches: list[Rule] = []
        self.on_stage = on_stage
        self.actions = 0
        self.error: BaseException | None = None


class DurableMatcher:
    """Finds matching rules with durable-rules, stage after stage in one call."""

    name = "durable-rules"

    def __init__(self, rs: Ruleset) -> None:
        tune_malloc()
        self.rs = rs
        compiler = Compiler(rs)
        self.engine_name = f"{rs.name}-{rs.version}-{rs.sha256[:12]}-{next(_names)}"
        self._stage_paths = {s: compiler.stage_paths(s) for s in rs.stages}
        self._kinds = {p: _kind(p, rs) for s in rs.stages for p in self._stage_paths[s]}
        self._stage_lookups = {s: [(key(f), t, k, scale) for f, (t, k, scale)
                                   in compiler.stage_lookups(s).items()] for s in rs.stages}
        self._calls: dict[str, _Call] = {}
        self._leaked = 0
        definition: dict[str, Any] = {}
        for i, rule in enumerate(rs.rules):
            definition[f"r{i}"] = {
                "all": [{"m": compiler.rule_condition(rule.stage, rule.when)}],
                "pri": 1,
                "run": self._recorder(rule),
            }
        for i, stage in enumerate(rs.stages):
            nxt = rs.stages[i + 1] if i + 1 < len(rs.stages) else None
            definition[f"stage{i}"] = {
                "all": [{"m": {STAGE_KEY: stage}}],
                "pri": 2,  # after every rule of the stage (lower fires first)
                "run": self._stage_end(stage, nxt),
            }
        bound = simultaneous_tests_bound([d["all"][0]["m"] for d in definition.values()])
        if bound > MAX_SIMULTANEOUS_TESTS:
            raise EngineLimit(
                f"the rules hold {bound} distinct tests that could be true for one fact; the "
                f"engine fails above {MAX_SIMULTANEOUS_TESTS} (error 303): share or simplify tests")
        self.definition = definition
        self._host = _QuietHost()
        try:
            self._host.register_rulesets({self.engine_name: definition})
        except durable_rules_engine.error as exc:
            raise EngineLimit(_explain_engine_error(rs, compiler, exc)) from None
        self._ruleset = self._host.get_ruleset(self.engine_name)

    def stage_fact(self, stage: str, ctx: dict, sid: str) -> dict:
        fact: dict[str, Any] = {"sid": sid, STAGE_KEY: stage}
        kinds = self._kinds
        for path in self._stage_paths[stage]:
            value = ctx.get(path)
            if value is not None:
                fact[key(path)] = encode(value, kinds[path])
        for field, table, key_path, scale in self._stage_lookups[stage]:
            entry = self.rs.tables[table].get(ctx.get(key_path))
            if entry is not None:
                fact[field] = int(entry * scale)
        return fact

    def _recorder(self, rule: Rule):
        def action(c: Any) -> None:
            call = self._calls.get(c.s.sid)
            if call is not None:
                call.actions += 1
                call.matches.append(rule)

        return action

    def _stage_end(self, stage: str, nxt: str | None):
        def action(c: Any) -> None:
            sid = c.s.sid
            call = self._calls.get(sid)
            if call is None:
                return
            call.actions += 1
            try:
                matches, call.matches = call.matches, []
                ctx = call.on_stage(stage, matches)
                if nxt is not None:
                    c.assert_fact(self.stage_fact(nxt, ctx, sid))
            except BaseException as exc:  # the engine would swallow it
                if call.error is None:
                    call.error = exc

        return action

    def run(self, ctx: dict, on_stage) -> None:
        """`on_stage(stage, rules)` resolves a stage and returns the updated context."""
        sid = f"d{next(_sids)}"
        call = _Call(on_stage)
        self._calls[sid] = call
        try:
            handle = self._ruleset.assert_fact(self.stage_fact(self.rs.stages[0], ctx, sid))
            self._do_actions(handle)
        finally:
            self._calls.pop(sid, None)
            if call.actions:
                self._ruleset.delete_state(sid)
            else:
                # Deleting a session in which no action ran crashes the engine;
                # it cannot happen with the catch-all rules, but never risk it.
                self._leaked += 1
        if call.error is not None:
            raise EngineError(f"rule action failed: {call.error!r}") from call.error

    def _do_actions(self, state_handle: Any) -> None:
        errors: list[Any] = []

        def complete(error: Any, _state: Any) -> None:
            if error:
                errors.append(error)

        # What Host.assert_fact does, without its lookup of the ruleset by name.
        self._ruleset.do_actions(state_handle, complete)
        if errors:
            raise EngineError(f"engine: {errors[0]}")

    def close(self) -> None:
        """Free the engine's memory for this ruleset (only when no call can be inside it)."""
        handle = getattr(self._ruleset, "_handle", None)
        if handle is not None:
            durable_rules_engine.delete_ruleset(handle)
            self._ruleset._handle = None


_ENGINE_ERRORS = {
    "106": "more rules than the engine supports",
    "113": "the condition is too complex for the engine (at most 32 expressions in one "
           "comparison sequence); split it into simpler rules or compare fewer paths",
}


def _explain_engine_error(rs: Ruleset, compiler: Compiler, exc: Exception) -> str:
    """Which rules the engine refuses, and why, with their file positions."""
    import json

    bad = []
    for i, rule in enumerate(rs.rules):
        single = {"r": {"all": [{"m": compiler.rule_condition(rule.stage, rule.when)}]}}
        try:
            handle = durable_rules_engine.create_ruleset(f"probe-{next(_names)}-{i}",
                                                         json.dumps(single))
        except durable_rules_engine.error as rule_exc:
            code = str(rule_exc).rsplit(" ", 1)[-1]
            bad.append(f"{rule.pos}: rule {rule.id}: {_ENGINE_ERRORS.get(code, rule_exc)}")
        else:
            durable_rules_engine.delete_ruleset(handle)
    return "; ".join(bad) if bad else f"the engine refused the ruleset: {exc}"


def _kind(path: str, rs: Ruleset) -> str:
    from ..policy.schema import OUTPUT_FIELDS, input_type

    t = input_type(path)
    if t is not None:
        return t[0]
    if path in OUTPUT_FIELDS:
        return OUTPUT_FIELDS[path][0]
    return rs.var_kinds.get(path, "string")
