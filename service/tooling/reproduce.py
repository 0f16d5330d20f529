"""Deciding a recorded decision again with the ruleset that made it, as archived.

The archive keeps each ruleset's files' exact text, so the ruleset is rebuilt from
them (its sha256 recomputed and compared), and the stored facts — `as_of`
included, so the answer does not drift with the date — are decided again. Every
field of the decision is compared except the ones that differ by nature: its id,
when it was evaluated and how long it took, and the trace (how it was reached).
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..engine.decide import Decider
from ..facts import validate_facts
from ..policy.loader import load_ruleset, sources_digest
from ..policy.model import Ruleset

#: Decision fields that are not the outcome: never compared. The trace says how the
#: outcome was reached, and its shape may grow between releases (the constants a rule
#: read were added to it): what the rules decided is in the other fields.
NOT_COMPARED = frozenset({"decision_id", "evaluated_at", "duration_ms", "receipt", "trace"})


class ArchiveError(ValueError):
    """An archived ruleset that cannot be rebuilt as it was (missing, altered)."""


def ruleset_from_files(files: Mapping[str, str], sha256: str) -> Decider:
    """A decider for the archived files, whose sha256 must be `sha256`."""
    return Decider(archived_ruleset(files, sha256))


def archived_ruleset(files: Mapping[str, str], sha256: str) -> Ruleset:
    """The ruleset the archived files make, whose sha256 must be `sha256`."""
    if not isinstance(files, Mapping) or not files:
        raise ArchiveError("the archived ruleset has no files")
    sources = sorted((name, text.encode("utf-8")) for name, text in files.items())
    if sources_digest(sources) != sha256:
        raise ArchiveError(f"the archived files' sha256 is {sources_digest(sources)}, "
                           f"not {sha256} (archive altered)")
    with rules_directory(files) as tmp:
        ruleset = load_ruleset(tmp)
    if ruleset.sha256 != sha256:  # pragma: no cover - the digest was checked above
        raise ArchiveError("the rebuilt ruleset's sha256 differs")
    return ruleset


@contextlib.contextmanager
def rules_directory(files: Mapping[str, str]) -> Iterator[str]:
    """A temporary directory holding the rule files (name → exact text), removed after;
    ArchiveError for a name that is not a rule file's."""
    with tempfile.TemporaryDirectory(prefix="deficiency-archive-") as tmp:
        for name, text in sorted(files.items()):
            if "/" in name or name.startswith(".") or not name.endswith((".yaml", ".yml")):
                raise ArchiveError(f"archived file name {name!r} is not a rule file name")
            (Path(tmp) / name).write_bytes(text.encode("utf-8"))
        yield tmp


def decide_again(decider: Decider, record: Mapping[str, Any]) -> dict[str, Any]:
    """The decision the record's stored facts get from `decider` today."""
    stored = record["facts"]
    as_of = record["decision"].get("as_of") if isinstance(record.get("decision"), dict) else None
    day = datetime.date.fromisoformat(as_of) if isinstance(as_of, str) else None
    return decider.decide_facts(validate_facts(stored, today=day))


def differences(record: Mapping[str, Any], again: Mapping[str, Any]) -> list[str]:
    """The decision fields (dotted, one level down) where `again` differs from the
    recorded decision, in a stable order."""
    recorded = dict(record["decision"])
    names = sorted((set(recorded) | set(again)) - NOT_COMPARED)
    changed: list[str] = []
    for name in names:
        old, new = recorded.get(name), _plain(again.get(name))
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(f"{name}.{key}" for key in sorted(set(old) | set(new))
                           if old.get(key) != new.get(key))
        else:
            changed.append(name)
    return changed


def _plain(value: Any) -> Any:
    """A decision value as the log stores it (JSON: money as strings already)."""
    import json

    return json.loads(json.dumps(value, default=str))
