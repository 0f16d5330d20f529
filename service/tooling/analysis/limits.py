"""The budgets of the static analysis: how far each question may search."""

from __future__ import annotations

#: Nodes (partial assignments) one question may explore.
NODE_BUDGET = 25_000
#: Seconds the whole analysis may take.
TIME_BUDGET = 10.0
#: Gap regions collected before the gap search stops (the first ones are shown), and
#: seconds spent listing more of them once one is found.
MAX_GAP_REGIONS = 2000
GAP_LISTING_SECONDS = 3.0
GAP_REGIONS_SHOWN = 8
#: Candidate findings the reference evaluator did not confirm before a question gives up.
MAX_UNCONFIRMED = 20
#: Most possible values of an earlier stage's output the search splits on.
MAX_OUTPUT_SPLIT = 12
#: Most rules the search splits on as "the rule that decides the deciding stage".
MAX_WINNER_SPLIT = 64
#: Substitutions tried when anticipating a comparison with unassigned numbers.
MAX_SUBSTITUTIONS = 64
#: Alternatives one comparison expands into (outputs replaced by what sets them).
MAX_ALTERNATIVES = 64
