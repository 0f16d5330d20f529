"""The active ruleset of one app, hot-swappable.

Requests borrow the current `Decider` with `use()`; a reload builds a new one
from the rules directory and swaps it in atomically. The old one is closed
(its durable-rules ruleset freed) only when the last request still inside it
has finished — a small reference count, because freeing an engine ruleset
under a running call would crash the process (ENGINE-NOTES).

Several worker processes serve the same app under `deficiency serve`; a reload
reaches one of them. It bumps a generation number shared by all workers
(`SharedGeneration`, created by the server before it forks), and every other
worker, on its next request, notices the new generation and loads the rules
directory itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..engine.decide import Decider
from ..policy.loader import PolicyError, load_ruleset
from ..policy.model import Ruleset
from .generation import Generation, LocalGeneration

log = logging.getLogger("deficiency.api")


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


class ActiveRuleset:
    """The Decider requests use; thread-safe. Raises PolicyError at construction when
    the rules directory does not hold a valid ruleset and there is no `fallback`."""

    def __init__(
        self,
        rules_dir: Path,
        generation: Generation | None = None,
        *,
        loader: Callable[[Path], Ruleset] = load_ruleset,
        matcher: str = "durable",
        fallback: Ruleset | None = None,
    ) -> None:
        self.rules_dir = rules_dir
        self._loader = loader
        self._matcher = matcher
        self._generation = generation or LocalGeneration()
        self._lock = threading.Lock()  # guards _slot and the reference counts
        self._reload_lock = threading.Lock()  # one load at a time
        try:
            ruleset = loader(rules_dir)
        except PolicyError as exc:
            # A worker restarted after someone broke the rule files: serving the ruleset
            # the server validated at start beats failing to boot (gunicorn would then
            # stop the whole server). The decisions name the version they used.
            if fallback is None:
                raise
            log.error("rules directory %s is invalid (%s); using ruleset %s %s from start-up",
                      rules_dir, exc.problems[0] if exc.problems else exc,
                      fallback.name, fallback.version)
            ruleset = fallback
        self._slot = _Slot(Decider(ruleset, matcher))
        self._seen = self._generation.current()

    @property
    def info(self) -> dict[str, str]:
        return dict(self._slot.decider.ruleset_info)

    @property
    def ruleset(self) -> Ruleset:
        return self._slot.decider.rs

    @contextmanager
    def use(self) -> Iterator[Decider]:
        """Borrow the current Decider for the duration of one request."""
        if self._generation.current() != self._seen:
            self._follow()
        with self._lock:
            slot = self._slot
            slot.users += 1
        try:
            yield slot.decider
        finally:
            self._release(slot)

    def reload(self) -> ReloadResult:
        """Load the rules directory again; raises PolicyError (the old ruleset stays)."""
        with self._reload_lock:
            ruleset = self._loader(self.rules_dir)
            previous = self.info
            if ruleset.sha256 == previous["sha256"]:
                return ReloadResult(False, previous, previous, len(ruleset.rules))
            self._swap(Decider(ruleset, self._matcher))
            self._seen = self._generation.bump()
            return ReloadResult(True, previous, self.info, len(ruleset.rules))

    def close(self) -> None:
        """Retire the current Decider; it is freed once no request uses it."""
        with self._lock:
            slot = self._slot
            slot.retired = True
            free = slot.users == 0 and not slot.closed
            slot.closed = slot.closed or free
        if free:
            slot.decider.close()

    def _follow(self) -> None:
        """Another worker reloaded: load the rules directory here too (best effort)."""
        if not self._reload_lock.acquire(blocking=False):
            return  # someone in this process is loading already; use the current one
        try:
            target = self._generation.current()
            if target == self._seen:
                return
            try:
                ruleset = self._loader(self.rules_dir)
            except PolicyError as exc:
                log.warning("ruleset reload by another worker not followed: %s",
                            exc.problems[0] if exc.problems else exc)
            else:
                if ruleset.sha256 != self.info["sha256"]:
                    self._swap(Decider(ruleset, self._matcher))
            self._seen = target
        finally:
            self._reload_lock.release()

    def _swap(self, decider: Decider) -> None:
        new = _Slot(decider)
        with self._lock:
            old, self._slot = self._slot, new
            old.retired = True
            free = old.users == 0 and not old.closed
            old.closed = old.closed or free
        if free:
            old.decider.close()

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            free = slot.retired and slot.users == 0 and not slot.closed
            slot.closed = slot.closed or free
        if free:
            slot.decider.close()
