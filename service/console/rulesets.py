"""Rulesets: the active version and the archived ones; one ruleset's stages and rules by
priority with their basis, its YAML source with line numbers, what `deficiency check`
reports on it and (for the active one) its policy tests with coverage.

The check and the tests run once per ruleset per worker, in a process of their own
(`tooling.review`), and are kept (`present.Rulesets`)."""

from __future__ import annotations

import multiprocessing
from typing import Any

from flask import Blueprint, abort, render_template

from ..api.handle import service
from ..tooling.reproduce import rules_directory
from ..tooling.review import review_apart
from .present import rulesets as built_rulesets
from .session import user

bp = Blueprint("rulesets", __name__)
#: How long a ruleset's check and tests may take before the page says so.
REVIEW_SECONDS = 300.0


@bp.get("/rulesets")
def index() -> Any:
    svc = service()
    archived: list[dict[str, Any]] = []
    if "audit:read" in user().scopes:
        archived = svc.audit.store().archived_rulesets()
    return render_template("console/rulesets.html", active=svc.rulesets.info,
                           archived=archived, can_read_log="audit:read" in user().scopes)


def _review(sources: tuple[tuple[str, str], ...], active: bool) -> dict[str, Any]:
    try:
        if active:
            # The configured directory, with its tests; its sha256 says whether the
            # files there are still the active version.
            return review_apart(str(service().config.rules.dir), with_tests=True,
                                timeout=REVIEW_SECONDS)
        with rules_directory(dict(sources)) as tmp:
            review = review_apart(tmp, with_tests=False, timeout=REVIEW_SECONDS)
            review["check_text"] = review["check_text"].replace(tmp + "/", "")
            return review
    except multiprocessing.TimeoutError:
        return {"sha256": None, "check_ok": False, "tests": None,
                "check_text": f"The check did not finish in {REVIEW_SECONDS:.0f} s; run "
                              "`deficiency check` on the rules."}


@bp.get("/rulesets/<sha256>")
def one(sha256: str) -> Any:
    svc = service()
    active = svc.rulesets.ruleset
    is_active = sha256 == active.sha256
    if not is_active and "audit:read" not in user().scopes:
        return render_template(
            "console/error.html", status=403, title="Not allowed",
            message=f"The key {user().name!r} lacks the scope 'audit:read' that archived "
                    "rulesets need."), 403
    rs = built_rulesets().get(sha256) if len(sha256) == 64 else None
    if rs is None:
        abort(404, f"No ruleset {sha256} is active or archived.")
    stages = [(stage, sorted(rs.stage_rules(stage), key=lambda r: (-r.priority, r.order)))
              for stage in rs.stages]
    files = [(name, text.splitlines()) for name, text in rs.sources]
    review = built_rulesets().review(sha256, lambda: _review(rs.sources, is_active))
    return render_template("console/ruleset.html", rs=rs, stages=stages, files=files,
                           review=review, is_active=is_active,
                           stale=review["sha256"] not in (None, sha256))
