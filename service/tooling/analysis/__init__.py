"""Static analysis of a loaded ruleset: gaps, equal-priority conflicts, shadowed rules.

The questions (for `deficiency check`):

* GAP (error): facts for which no rule of the deciding stage sets
  `outcome.bearer`, so the service answers "review / refer: no rule decided".
* CONFLICT (error): two rules of equal priority in one stage that both match and
  set one scalar output to different values, with no higher-priority rule
  setting that output (so the tie really decides it).
* SHADOWED (warning): a rule without list outputs that never applies, because
  for each scalar output it sets, rules resolved before it (higher priority, or
  equal and earlier in the files) set that output wherever it matches;
  UNREACHABLE (warning) when its condition can never hold at all.

How: a depth-first search over partial assignments of the concrete fact paths,
with three-valued evaluation of the conditions (true / false / unknown, and
"unknown" names the path to split on next). A path gets a finite list of
representative values when it is split:

* enums, booleans, jurisdictions, text: every value a rule names, plus one value
  no rule names (it stands for all of them; the field's default when it is one),
  plus "absent" when optional;
* numbers and dates: the values around the critical points of every comparison
  that involves the path. Each comparison (conditions, conditional outputs,
  outputs of earlier stages replaced by every expression that can set them,
  amounts expanded into facts, "an amount output is not negative") is turned
  into a piecewise-linear function of the path, the assigned paths fixed; its
  breakpoints and roots c give c - 1 unit, c, c + 1 unit (0.01 for money, 1
  for whole numbers and days). Comparisons that still involve unassigned
  numbers are anticipated by substituting those numbers' own constant critical
  values (their floor 0 included), and then a value inside each cell and one
  well above are added, so that numbers placed later have room.

Amounts are computed from the facts once the amount facts are assigned (the
balance first, then the proceeds relative to it); the amount facts no rule
reads individually are held at their default 0. What a later stage reads of an
earlier one is either exact (every rule that could still matter is decided: the
real resolver runs on the partial facts) or a set of possible values, numbers
bounded by intervals (a settled `borrower_owes` is within [0, deficiency]).
When a condition cannot tell from such a set, the search splits on the rule
that decides the deciding stage (`decided_by`: that rule matched, every rule
before it did not, and its outputs are the outcome) or on the output's own few
values; these assumptions are checked against the stages at every step, and a
finding under assumptions counts only once they are confirmed.

Every reported gap and conflict is confirmed by the reference evaluator on one
concrete, validated fact set before it is reported; a shadowing or
unreachability claim is a proof over the representative values (no single fact
set can confirm it). The search is bounded by a node budget per question and a
time budget overall; a question that runs out is reported as an "analysis
incomplete" warning, never as a finding.

Scaling: rules that require different values of one enumerated fact (one rule per
state × method, say) never match the same facts. `partition` reads those
requirements off the conditions, and each question only ever evaluates the rules that
can still match at a node of its search (and skips pairs of rules that never match
together), so a policy of a few hundred such rules costs about linearly more than a
small one. Only rules whose conditions are false where they are dropped are dropped,
so the findings are those of asking every rule everywhere (`exhaustive=True`,
compared by the tests).

Parts: `domain` (the fact paths, amounts), `representatives` (with `piecewise`),
`conditions` (three-valued evaluation, `values`), `stages` (views of earlier
stages, assumptions), `search` (the Analyzer), `regions` (concrete facts, text),
the questions `gaps`, `conflicts`, `shadowed`, `partition` (which rules can matter
where); `limits` holds the budgets.
"""

from __future__ import annotations

import time

from ...policy.model import Ruleset
from .conflicts import find_conflicts
from .finding import Finding
from .gaps import find_gaps
from .limits import NODE_BUDGET, TIME_BUDGET
from .search import Analyzer
from .shadowed import find_shadowed

__all__ = ["NODE_BUDGET", "TIME_BUDGET", "Analyzer", "Finding", "analyse"]


def analyse(rs: Ruleset, *, time_budget: float = TIME_BUDGET, node_budget: int = NODE_BUDGET,
            exhaustive: bool = False) -> tuple[list[Finding], dict]:
    """Gaps, conflicts and shadowed rules of a loaded ruleset, and run statistics.
    `exhaustive`: ask about every rule everywhere, without the partition by enumerated
    values (slower; the same findings)."""
    started = time.monotonic()
    an = Analyzer(rs, node_budget=node_budget, time_budget=time_budget,
                  exhaustive=exhaustive)
    try:
        findings = find_gaps(an) + find_conflicts(an) + find_shadowed(an)
    finally:
        an.decider.close()
    if an.skipped:
        shown = ", ".join(an.skipped[:6]) + (f" and {len(an.skipped) - 6} more"
                                             if len(an.skipped) > 6 else "")
        findings.append(Finding(
            "incomplete", "warning", "",
            f"analysis incomplete: the time budget ({an.time_budget:g} s) ran out before "
            f"{len(an.skipped)} question(s) were examined: {shown}"))
    stats = {"seconds": round(time.monotonic() - started, 3), "nodes": an.stats["nodes"],
             "questions": an.stats["questions"]}
    return findings, stats
