"""A large synthetic policy for scaling tests and benchmarks: the project's rules/ plus N
generated bearer rules, one per state × disposition method × dwelling-unit bound, at
distinct priorities above 2000 (the shape of ../shared/tools/large_policy.py).

    .venv/bin/python bench/large_policy.py N OUT_DIR [RULES_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL",
    "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT",
    "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI",
    "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
)
METHODS = ("auction", "private_sale", "short_sale", "deed_in_lieu", "judicial_foreclosure",
           "non_judicial_foreclosure")


def write_policy(n: int, out: Path, rules: Path) -> int:
    """Copy `rules` to `out` and add `generated.yaml` with n rules; returns n (at most
    the 900 combinations)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(rules, out)
    lines = ["rules:"]
    k = 0
    for state in STATES:
        for method in METHODS:
            for units in (1, 2, 4):
                if k >= n:
                    break
                lines += [f"  - id: gen-{state.lower()}-{method.replace('_', '-')}-{units}",
                          f"    description: generated rule {k}", "    stage: bearer",
                          f"    priority: {2001 + k}", f'    basis: "generated {k}"',
                          "    when:", "      loan.type: mortgage", f"      jurisdiction: {state}",
                          f"      disposition.method: {method}",
                          f"      collateral.dwelling_units: {{lte: {units}}}",
                          "    then:", "      preset: borrower_owes_all",
                          "      outcome.action: pursue_deficiency", ""]
                k += 1
    (out / "generated.yaml").write_text("\n".join(lines) + "\n")
    return k


if __name__ == "__main__":
    rules_dir = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("rules")
    print(sys.argv[2], write_policy(int(sys.argv[1]), Path(sys.argv[2]), rules_dir))
