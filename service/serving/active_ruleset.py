"""The active ruleset of one app, hot-swappable, and how a new one gets in.

Requests borrow the current `Decider` with `use()`; a reload swaps in a new one
atomically. The old one is closed (its durable-rules ruleset freed) only when the
last request still inside it has finished — a small reference count, because
freeing an engine ruleset under a running call would crash the process
(ENGINE-NOTES). So a decision always finishes on the ruleset it started with, and
names it (`decision["ruleset"]`).

A new content of the rules directory gets in only after `check_ruleset` found no
error in it (load errors, engine limits, gaps, conflicts; warnings are logged).
Otherwise it is rejected, the active ruleset stays, and the verdict stays visible
(`/readyz`, `/metrics`, the 422 of the reload) until another content is examined.
A worker examines the rules directory:
- on `POST /v1/ruleset/reload` (`reload()`);
- when the files change (`watch_interval`: a daemon thread compares their sha256
  every interval and acts once a new content has stayed the same for a moment);
- when it starts.

Several worker processes serve one app under `deficiency serve`. They agree
through a `Generation` record (generation.py, created by the master before it
forks): the accepted content, with a copy of its files, and the last verdict. A
content is checked by one worker while the others wait (`exclusive()`); they
reuse its verdict, and every worker follows the accepted ruleset on its next
request or watcher turn, whichever worker accepted it.

SIGHUP: the HTTP server's own handling — it starts new workers and stops the old
ones gracefully (their in-flight requests finish on the old ruleset); each new
worker reads the configuration file again (`rules.dir` too). Each new worker
examines the rules directory against the record: the accepted content is loaded as
it is; a content rejected before stays rejected; a new content is checked (by one of
them) and then accepted, or rejected — and then the workers load the accepted copy
from the record, never the broken files. So SIGHUP needs no code of ours in the
master. Only at the very first start, with nothing accepted yet, does a rejected
directory stop the worker: there is no checked ruleset to serve.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..engine.decide import Decider
from ..engine.runtime import EngineError
from ..policy.loader import PolicyError, Problem, load_ruleset, rule_files, ruleset_digest
from ..policy.model import Ruleset
from ..policy.yamlsafe import Pos
from ..tooling.check import check_ruleset
from .generation import (
    ACCEPTED,
    MAX_KEPT_PROBLEMS,
    REJECTED,
    UNCHANGED,
    ContentChanged,
    Generation,
    LocalGeneration,
    RulesetState,
    Verdict,
)

log = logging.getLogger("deficiency.api")

TRIGGER_API, TRIGGER_WATCHER, TRIGGER_BOOT = "api", "watcher", "boot"
_ATTEMPTS = 3  # examinations of a directory whose files change under the check
_SETTLE = 0.2  # seconds a new content must stay the same before the watcher acts
_RULESETS_KEPT = 4  # loaded rulesets kept per app, by sha256 (switching back is cheap)
_FOLLOW_RETRY = 1.0  # seconds before trying again to load another worker's ruleset

Checker = Callable[[Path], tuple[list[Problem], str | None]]


def full_check(directory: Path) -> tuple[list[Problem], str | None]:
    """Every problem `deficiency check` reports, and the sha256 of what it checked. The
    analysis runs in a process of its own: decisions go on meanwhile at full speed."""
    problems, summary, _findings = check_ruleset(str(directory), isolated=True)
    return problems, (summary or {}).get("sha256")


class _CheckedDigests:
    """Contents (sha256 of the rule files) that passed the full check in this process.

    The check is a function of the files' bytes alone, so a content that passed once
    is not analysed again (apps built by tests, switching back to a version)."""

    def __init__(self, size: int = 64) -> None:
        self._digests: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def add(self, digest: str) -> None:
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self._size:
                self._digests.popitem(last=False)


_checked = _CheckedDigests()


class RulesetRejected(PolicyError):
    """A candidate ruleset with errors; the active ruleset stays."""

    def __init__(self, problems: list[Problem], verdict: Verdict) -> None:
        super().__init__(problems)
        self.verdict = verdict


class ReloadObserver(Protocol):
    """What the metrics need to know."""

    def ruleset_examined(self, result: str, trigger: str) -> None: ...

    def ruleset_active(self, previous: dict[str, str] | None,
                       current: dict[str, str]) -> None: ...

    def ruleset_status(self, last: Verdict | None) -> None: ...


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    previous: dict[str, str]
    current: dict[str, str]
    rules: int


class _Slot:
    __slots__ = ("decider", "users", "retired", "closed")

    def __init__(self, decider: Decider) -> None:
        self.decider = decider
        self.users = 0
        self.retired = False
        self.closed = False


def problem_doc(p: Problem) -> dict[str, Any]:
    return {"file": p.pos.file, "line": p.pos.line, "column": p.pos.column,
            "severity": p.severity, "message": p.message, "hint": p.hint}


def verdict_problems(verdict: Verdict) -> list[Problem]:
    return [Problem(Pos(d["file"], d["line"], d["column"]), d["message"], d.get("hint", ""),
                    d.get("severity", "error")) for d in verdict.problems]


class ActiveRuleset:
    """The Decider requests use; thread-safe. Raises PolicyError at construction when
    the rules directory is rejected and no ruleset was accepted before (see the module
    docstring)."""

    def __init__(
        self,
        rules_dir: Path,
        generation: Generation | None = None,
        *,
        checker: Checker | None = None,
        matcher: str = "durable",
        observer: ReloadObserver | None = None,
        watch_interval: float | None = None,
    ) -> None:
        self.rules_dir = Path(rules_dir)
        self._checker = checker or full_check
        self._matcher = matcher
        self._generation: Generation = generation or LocalGeneration()
        self._observer = observer
        self._lock = threading.Lock()  # guards _slot and the reference counts
        self._reload_lock = threading.Lock()  # one examination at a time
        self._follow_lock = threading.Lock()  # one follow at a time (never behind a check)
        self._rulesets: OrderedDict[str, Ruleset] = OrderedDict()  # accepted, by sha256
        self._slot: _Slot | None = None
        self._seen = -1  # the generation this app has caught up with
        self._retry_at = 0.0
        self._last: Verdict | None = None
        self._closed = False
        self._stop = threading.Event()
        with self._reload_lock:
            self._boot()
        self._watcher: threading.Thread | None = None
        if watch_interval:
            self._watcher = threading.Thread(
                target=self._watch, args=(watch_interval,), daemon=True,
                name=f"ruleset-watcher:{self.rules_dir}")
            self._watcher.start()

    # ------------------------------------------------------------------ requests

    @property
    def info(self) -> dict[str, str]:
        return dict(self._current().decider.ruleset_info)

    @property
    def ruleset(self) -> Ruleset:
        return self._current().decider.rs

    @property
    def generation(self) -> Generation:
        return self._generation

    @contextmanager
    def use(self) -> Iterator[Decider]:
        """Borrow the current Decider for the duration of one request."""
        if self._generation.current() != self._seen:
            self._follow()
        with self._lock:
            slot = self._current()
            slot.users += 1
        try:
            yield slot.decider
        finally:
            self._release(slot)

    def last_verdict(self) -> Verdict | None:
        """The latest examination of the rules directory by any worker (REJECTED: the
        files hold a content that was refused; the active ruleset is older)."""
        if self._generation.current() != self._seen:
            self._follow()
        return self._last

    # ------------------------------------------------------------------ reloading

    def reload(self) -> ReloadResult:
        """Examine the rules directory now; raises RulesetRejected (the old ruleset stays)."""
        with self._reload_lock:
            return self._examine(TRIGGER_API)

    def close(self) -> None:
        """Stop watching; retire the current Decider (freed once no request uses it)."""
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(10)
        with self._reload_lock:  # an examination in progress finishes first
            self._closed = True
            with self._lock:
                slot = self._current()
                slot.retired = True
                free = slot.users == 0 and not slot.closed
                slot.closed = slot.closed or free
        if free:
            slot.decider.close()

    def _boot(self) -> None:
        try:
            self._examine(TRIGGER_BOOT)
            return
        except RulesetRejected as exc:
            rejected = exc
        target = self._generation.current()
        ruleset = self._generation.accepted_ruleset()
        if ruleset is None:
            log.error("rules directory %s rejected and no ruleset accepted before: %s",
                      self.rules_dir, rejected.verdict.reason)
            raise rejected
        log.error("rules directory %s rejected (%s); using ruleset %s %s, accepted before",
                  self.rules_dir, rejected.verdict.reason, ruleset.name, ruleset.version)
        self._install(Decider(ruleset, self._matcher))
        self._seen = target

    def _examine(self, trigger: str) -> ReloadResult:
        """Examine the rules directory (holding _reload_lock)."""
        for _ in range(_ATTEMPTS):
            try:
                return self._examine_once(trigger)
            except ContentChanged:
                continue
        problem = Problem(Pos(str(self.rules_dir), 0, 0),
                          "the rule files kept changing while they were being checked",
                          "reload once they are written")
        self._count(REJECTED, trigger)
        raise RulesetRejected([problem], Verdict(REJECTED, None, trigger,
                                                 reason=problem.message))

    def _examine_once(self, trigger: str) -> ReloadResult:
        previous = self.info if self._slot is not None else None
        digest = self._digest()
        generation = self._generation
        with generation.exclusive():
            state = generation.state()
            self._set_status(state.last)
            try:
                return self._judge(digest, previous, state, trigger)
            finally:
                # Caught up only when deciding with the accepted ruleset; otherwise the
                # next request or watcher turn follows it.
                accepted = generation.state().accepted
                if self._slot is not None and (accepted is None
                                               or accepted.sha256 == self.info["sha256"]):
                    self._seen = generation.current()

    def _judge(self, digest: str | None, previous: dict[str, str] | None,
               state: RulesetState, trigger: str) -> ReloadResult:
        """Accept the rules directory's content, or reject it (inside exclusive())."""
        accepted, last = state.accepted, state.last
        if digest is not None:
            if (previous is not None and digest == previous["sha256"]
                    and (accepted is None or accepted.sha256 == digest)):
                if last is not None and last.result == REJECTED:
                    # The files went back to the active ruleset: nothing is wrong now.
                    self._publish(Verdict(UNCHANGED, digest, trigger, name=previous["name"],
                                          version=previous["version"]))
                self._count(UNCHANGED, trigger, examined=False)
                return ReloadResult(False, previous, previous, len(self.ruleset.rules))
            if accepted is not None and digest == accepted.sha256:
                # Another worker accepted this content: load it, no second check.
                self._count(ACCEPTED, trigger, examined=False)
                result = self._switch(self._load(digest), previous)
                log.info("ruleset %s %s accepted by another worker (%s): following",
                         accepted.name, accepted.version, accepted.trigger)
                return result
            if last is not None and last.result == REJECTED and last.sha256 == digest:
                self._count(REJECTED, trigger, examined=False)
                raise RulesetRejected(verdict_problems(last), last)
        ruleset = self._candidate(digest, trigger)
        # Already deciding with it: unchanged, unless the record names another ruleset
        # (the files went back to this one): then it is accepted again, for every worker.
        same = previous is not None and ruleset.sha256 == previous["sha256"]
        if same and (accepted is None or accepted.sha256 == ruleset.sha256):
            assert previous is not None
            self._count(UNCHANGED, trigger, examined=False)
            return ReloadResult(False, previous, previous, len(ruleset.rules))
        decider = None
        if not same:
            try:
                decider = Decider(ruleset, self._matcher)
            except EngineError as exc:
                raise self._reject([Problem(Pos(str(self.rules_dir), 0, 0),
                                            f"engine: {exc}")], digest, trigger) from None
        try:
            self._publish(Verdict(ACCEPTED, ruleset.sha256, trigger, name=ruleset.name,
                                  version=ruleset.version), ruleset)
        except BaseException:
            if decider is not None:
                decider.close()
            raise
        self._count(ACCEPTED, trigger)
        log.info("ruleset %s %s accepted (%s, sha256 %s)", ruleset.name, ruleset.version,
                 trigger, ruleset.sha256[:12])
        if decider is None:
            assert previous is not None
            return ReloadResult(False, previous, previous, len(ruleset.rules))
        return self._switch(ruleset, previous, decider)

    def _candidate(self, digest: str | None, trigger: str) -> Ruleset:
        """The rules directory's ruleset once it passed the full check (inside exclusive())."""
        if digest is not None:
            known = self._rulesets.get(digest)
            if known is not None:
                return known
            if digest not in _checked:
                try:
                    problems, checked = self._checker(self.rules_dir)
                except OSError as exc:  # a file went away between listing and reading
                    if self._digest() != digest:
                        raise ContentChanged(str(self.rules_dir)) from None
                    # Not a verdict on the content (sha256 None): the next look reads again.
                    raise self._reject([self._unreadable(exc)], None, trigger) from None
                if self._digest() != digest or checked not in (None, digest):
                    raise ContentChanged(str(self.rules_dir))
                if any(p.severity == "error" for p in problems):
                    raise self._reject(problems, digest, trigger)
                for p in problems:
                    log.warning("ruleset check: %s", p)
                _checked.add(digest)
        try:
            ruleset = load_ruleset(self.rules_dir)
        except (PolicyError, OSError) as exc:
            if digest is not None and self._digest() != digest:
                raise ContentChanged(str(self.rules_dir)) from None
            if isinstance(exc, OSError):
                raise self._reject([self._unreadable(exc)], None, trigger) from None
            raise self._reject(exc.problems, digest, trigger) from None
        if digest is not None and ruleset.sha256 != digest:
            raise ContentChanged(str(self.rules_dir))
        return ruleset

    def _unreadable(self, exc: OSError) -> Problem:
        return Problem(Pos(str(exc.filename or self.rules_dir), 0, 0),
                       f"cannot read the rule files: {exc.strerror or exc}")

    def _reject(self, problems: list[Problem], digest: str | None,
                trigger: str) -> RulesetRejected:
        """Record the verdict for every worker (inside exclusive()) and build the error."""
        ordered = sorted(problems, key=lambda p: p.severity != "error")
        errors = [p for p in ordered if p.severity == "error"] or ordered
        reason = (f"{len(errors)} error{'s' if len(errors) != 1 else ''} in the rules "
                  f"directory {self.rules_dir}" + (f"; the first: {errors[0]}" if errors else ""))
        verdict = Verdict(REJECTED, digest, trigger, reason=reason,
                          problems=tuple(problem_doc(p) for p in ordered[:MAX_KEPT_PROBLEMS]))
        self._publish(verdict)
        self._count(REJECTED, trigger)
        log.warning("ruleset rejected (%s): %s", trigger, reason)
        return RulesetRejected(ordered, verdict)

    def _publish(self, verdict: Verdict, ruleset: Ruleset | None = None) -> None:
        self._generation.publish(verdict, ruleset, self.rules_dir)
        self._set_status(verdict)

    def _load(self, digest: str) -> Ruleset:
        """The rules directory's ruleset, known to be `digest` (accepted already)."""
        known = self._rulesets.get(digest)
        if known is not None:
            return known
        try:
            ruleset = load_ruleset(self.rules_dir)
        except (PolicyError, OSError):
            raise ContentChanged(str(self.rules_dir)) from None
        if ruleset.sha256 != digest:
            raise ContentChanged(str(self.rules_dir))
        return ruleset

    def _switch(self, ruleset: Ruleset, previous: dict[str, str] | None,
                decider: Decider | None = None) -> ReloadResult:
        self._install(decider or Decider(ruleset, self._matcher))
        current = self.info
        return ReloadResult(previous is None or previous["sha256"] != current["sha256"],
                            previous or current, current, len(ruleset.rules))

    # ------------------------------------------------------------------ following

    def _follow(self) -> None:
        """Catch up with the record: the last verdict, and the accepted ruleset when
        another worker accepted one. The first request after a reload elsewhere loads it
        (the others of this worker wait for it): an answer after a reload's answer never
        names the old ruleset."""
        with self._follow_lock:
            target = self._generation.current()
            if self._closed or target == self._seen or time.monotonic() < self._retry_at:
                return
            state = self._generation.state()
            self._set_status(state.last)
            accepted = state.accepted
            if accepted is not None and accepted.sha256 != self.info["sha256"]:
                try:
                    ruleset = self._accepted(accepted.sha256)
                    decider = Decider(ruleset, self._matcher)
                except (PolicyError, EngineError, OSError) as exc:
                    self._retry_at = time.monotonic() + _FOLLOW_RETRY
                    log.warning("ruleset %s accepted by another worker not loaded yet: %s",
                                accepted.version, exc)
                    return
                if not self._install(decider, unless_past=target):
                    decider.close()  # this worker accepted a newer one meanwhile
                    return
                log.info("ruleset %s %s accepted by another worker (%s): following",
                         ruleset.name, ruleset.version, accepted.trigger)
            self._seen = target

    def _accepted(self, digest: str) -> Ruleset:
        """The accepted ruleset: from the rules directory while it holds that content,
        else from the copy the record keeps."""
        known = self._rulesets.get(digest)
        if known is not None:
            return known
        if self._digest() == digest:
            try:
                return self._load(digest)
            except ContentChanged:
                pass
        ruleset = self._generation.accepted_ruleset()
        if ruleset is None or ruleset.sha256 != digest:
            raise PolicyError([Problem(Pos(str(self.rules_dir), 0, 0),
                                       "the accepted ruleset is not available yet")])
        return ruleset

    def _watch(self, interval: float) -> None:
        """Every `interval`: follow the other workers (this worker may get no requests)
        and examine the files when their content changed."""
        seen = self._digest()
        while not self._stop.wait(interval):
            try:
                if self._generation.current() != self._seen:
                    self._follow()
                digest = self._digest()
                if digest == seen:
                    continue
                if self._stop.wait(_SETTLE) or self._digest() != digest:
                    continue  # still being written: look again next turn
                seen = digest
                with self._reload_lock:
                    if self._closed:
                        return
                    with contextlib.suppress(RulesetRejected):  # recorded, logged, counted
                        self._examine(TRIGGER_WATCHER)
            except Exception:
                log.exception("watching the rules directory %s failed; still watching",
                              self.rules_dir)

    # ------------------------------------------------------------------ bookkeeping

    def _digest(self) -> str | None:
        """sha256 of the rule files as they are now (the loader's own digest)."""
        try:
            return ruleset_digest(self.rules_dir, rule_files(self.rules_dir))
        except OSError:
            return None

    def _count(self, result: str, trigger: str, *, examined: bool = True) -> None:
        # A verdict is counted by the worker that reached it, and every API call once.
        if self._observer is not None and (examined or trigger == TRIGGER_API):
            self._observer.ruleset_examined(result, trigger)

    def _set_status(self, last: Verdict | None) -> None:
        if last != self._last:
            self._last = last
            if self._observer is not None:
                self._observer.ruleset_status(last)

    def _current(self) -> _Slot:
        slot = self._slot
        assert slot is not None, "no ruleset installed"
        return slot

    def _install(self, decider: Decider, *, unless_past: int | None = None) -> bool:
        """Swap `decider` in; with `unless_past`, only while the record has not moved
        past that generation (False: a newer ruleset may be active already)."""
        ruleset = decider.rs
        new = _Slot(decider)
        with self._lock:
            if unless_past is not None and self._generation.current() != unless_past:
                return False
            self._rulesets[ruleset.sha256] = ruleset
            self._rulesets.move_to_end(ruleset.sha256)
            while len(self._rulesets) > _RULESETS_KEPT:
                self._rulesets.popitem(last=False)
            previous = self._slot.decider.ruleset_info if self._slot is not None else None
            if self._closed:
                retired = new  # a reload after close(): nothing will use it
            else:
                retired, self._slot = self._slot, new
            free = False
            if retired is not None:
                retired.retired = True
                free = retired.users == 0 and not retired.closed
                retired.closed = retired.closed or free
        if free:
            assert retired is not None
            retired.decider.close()
        if self._observer is not None and not self._closed:
            self._observer.ruleset_active(previous and dict(previous), decider.ruleset_info)
        return True

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            free = slot.retired and slot.users == 0 and not slot.closed
            slot.closed = slot.closed or free
        if free:
            slot.decider.close()
