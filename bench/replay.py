"""Benchmark of `deficiency replay`: re-deciding a large audit log with a candidate.

Fills a SQLite audit log with N recorded decisions (default 100,000), then times
`replay` of all of them against a changed candidate ruleset (Nevada out of the
fair-value states, the 1099-C threshold raised to 25,000.00) with the default
worker count (one per CPU). Prints records, seconds, records/s and the number
of changed decisions.

    python bench/replay.py [--records 100000] [--workers N] [--db PATH]

The log is filled quickly but honestly: a few thousand varied facts documents
(every jurisdiction, loan type, disposition method and negotiation state) are
decided with the real Decider and the default rules; the records are those
decisions stamped with fresh loan ids and decision ids, appended through
`store.append` in batches of 1,000. `--db PATH` keeps the filled log and reuses
it on the next run when it already holds the requested number of records.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import facts as facts_mod  # noqa: E402
from service.audit import NewRecord, open_store  # noqa: E402
from service.config import cpu_count  # noqa: E402
from service.engine.decide import Decider, new_decision_id  # noqa: E402
from service.policy.loader import load_ruleset  # noqa: E402
from service.tooling import replay as replay_mod  # noqa: E402

TEMPLATES = 4000
BATCH = 1000
FAIR_VALUE_LINE = "fair_value_states: [AZ, CA, FL, NC, NV, NY, TX]"
THRESHOLD_LINE = "cod_reporting_threshold: 600.00"
# Where the default policy has something to say, weighted up.
STATES = ["NV"] * 8 + ["CA", "AZ", "TX", "FL", "NY", "NC", "OR", "WA", "MN"] * 2 \
    + list(facts_mod.JURISDICTIONS)


def random_facts(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choice(["mortgage"] * 5 + ["auto"] * 3 + ["other_secured"])
    balance = rng.randrange(3_000, 60_000) if kind != "mortgage" \
        else rng.randrange(60_000, 900_000)
    proceeds = int(balance * rng.uniform(0.3, 1.05))
    sale = datetime(2025, 1, 1) + timedelta(days=rng.randrange(0, 540))
    as_of = sale + timedelta(days=rng.randrange(1, 800))
    if kind == "mortgage":
        method = rng.choice(["judicial_foreclosure", "non_judicial_foreclosure",
                             "short_sale", "deed_in_lieu", "judicial_foreclosure"])
        collateral: dict[str, Any] = {"kind": "dwelling",
                                      "dwelling_units": rng.choice([1, 1, 2, 4, 6]),
                                      "owner_occupied": rng.random() < 0.6}
        if rng.random() < 0.5:
            collateral["acres"] = f"{rng.uniform(0.1, 5):.2f}"
        if rng.random() < 0.6:
            collateral["fair_value"] = f"{int(proceeds * rng.uniform(0.9, 1.6))}.00"
    else:
        method = rng.choice(["auction", "private_sale"])
        collateral = {"kind": "vehicle" if kind == "auto" else "other"}
    state = rng.choice(["none"] * 6 + ["in_progress", "short_sale_approved",
                                       "deed_in_lieu_agreed", "settlement_agreed",
                                       "judgment_sought", "judgment_obtained"])
    negotiation: dict[str, Any] = {"state": state,
                                   "deficiency_waived": rng.random() < 0.15,
                                   "borrower_contribution": f"{rng.choice([0, 0, 500, 5000])}.00"}
    if state == "settlement_agreed":
        negotiation["settlement_amount"] = f"{rng.randrange(0, balance // 3)}.00"
    return {
        "as_of": as_of.date().isoformat(),
        "jurisdiction": rng.choice(STATES),
        "loan": {"id": f"T{n}", "type": kind, "unpaid_balance": f"{balance}.00",
                 "accrued_interest": f"{rng.randrange(0, 5000)}.{rng.randrange(100):02d}",
                 "purchase_money": rng.random() < 0.4, "home_equity": rng.random() < 0.1,
                 "investor": rng.choice(["portfolio"] * 4 + ["fannie_mae", "freddie_mac",
                                                             "fha", "va"])},
        "collateral": collateral,
        "disposition": {"method": method, "date": sale.date().isoformat(),
                        "proceeds": f"{proceeds}.00",
                        "costs": {"legal": f"{rng.randrange(0, 4000)}.00",
                                  "sale": f"{rng.randrange(0, 2000)}.50"},
                        "notice_sent": rng.random() < 0.95,
                        "commercially_reasonable": rng.random() < 0.97},
        "negotiation": negotiation,
        "borrower": {"in_bankruptcy": rng.random() < 0.05, "insolvent": rng.random() < 0.1},
    }


def fill(url: str, records: int, seed: int = 7) -> float:
    """Append `records` recorded decisions; returns the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(seed)
    decider = Decider(load_ruleset(ROOT / "rules"))
    templates: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for n in range(TEMPLATES):
            facts = facts_mod.validate_facts(random_facts(rng, n))
            templates.append((facts_mod.to_json_facts(facts), decider.decide_facts(facts)))
    finally:
        decider.close()
    store = open_store(url)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        for start in range(0, records, BATCH):
            batch = []
            for n in range(start, min(start + BATCH, records)):
                facts, decision = templates[n % TEMPLATES]
                loan_id = f"LN-{n:07d}"
                facts = {**facts, "loan": {**facts["loan"], "id": loan_id}}
                decision = copy.copy(decision)
                decision["decision_id"] = new_decision_id()
                decision["loan_id"] = loan_id
                ruleset = decision["ruleset"]
                batch.append(NewRecord(
                    decision_id=decision["decision_id"],
                    recorded_at=at + timedelta(seconds=37 * n),
                    loan_id=loan_id, ruleset_name=ruleset["name"],
                    ruleset_version=ruleset["version"], ruleset_sha256=ruleset["sha256"],
                    facts=facts, decision={k: v for k, v in decision.items() if k != "trace"},
                    trace=decision["trace"], duration_ms=decision["duration_ms"]))
            store.append(batch)
    finally:
        store.close()
    return time.perf_counter() - started


def candidate(directory: Path) -> Path:
    shutil.copytree(ROOT / "rules", directory, ignore=shutil.ignore_patterns("tests"))
    path = directory / "ruleset.yaml"
    text = path.read_text()
    assert FAIR_VALUE_LINE in text and THRESHOLD_LINE in text
    path.write_text(text.replace(FAIR_VALUE_LINE, FAIR_VALUE_LINE.replace("NV, ", ""))
                    .replace(THRESHOLD_LINE, "cod_reporting_threshold: 25000.00"))
    return directory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    ap.add_argument("--db", type=Path, default=None, help="keep (and reuse) the log here")
    args = ap.parse_args()
    workers = args.workers or cpu_count()
    work = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    try:
        db = args.db or work / "audit.db"
        url = f"sqlite:///{db.resolve()}"
        existing = 0
        if db.exists():
            store = open_store(url)
            existing = store.count()
            store.close()
        if existing != args.records:
            if existing:
                sys.exit(f"{db} holds {existing} records, not {args.records}; remove it first")
            print(f"filling {db} with {args.records:,} decisions ...", flush=True)
            print(f"filled in {fill(url, args.records):.1f} s", flush=True)
        cand = candidate(work / "candidate")
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
              f"({cpu_count()} CPUs); workers {workers}", flush=True)
        store = open_store(url)
        try:
            started = time.perf_counter()
            tally = replay_mod.replay(store, cand, workers=workers)
            seconds = time.perf_counter() - started
        finally:
            store.close()
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"records   {tally.evaluated:,}")
        print(f"seconds   {seconds:.2f}")
        print(f"records/s {tally.evaluated / seconds:,.0f}")
        print(f"changed   {tally.changed:,}  (failed {len(tally.failures)}; borrower_owes "
              f"{tally.borrower_owes_delta:+,.2f}, lender_absorbs "
              f"{tally.lender_absorbs_delta:+,.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
