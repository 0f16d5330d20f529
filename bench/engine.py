"""Benchmark of the in-process decision path on one core.

Prints, side by side in one run, decisions/s and µs per decision for
  (a) the full path with durable-rules: parse JSON -> validate -> amounts ->
      engine (both stages) -> resolve -> decision JSON bytes (orjson, as the API);
  (b) the same path with the plain-Python reference evaluator instead of the engine;
then the RSS before and after N decisions on path (a).

    python bench/engine.py [--decisions 200000] [--repeat 5] [--sample 20000]

Facts are the policy's own test cases (rules/tests), cycled, so every rule of
the default policy is exercised.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from service import facts as facts_mod  # noqa: E402
from service import strictjson  # noqa: E402
from service.engine.decide import Decider  # noqa: E402
from service.policy.loader import load_ruleset  # noqa: E402
from service.tooling.testing import load_cases  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bodies() -> list[bytes]:
    cases, _ = load_cases(ROOT / "rules" / "tests")

    def default(v):
        return str(v)

    out = []
    for c in cases:
        body = json.dumps(c.facts, default=default).encode()
        try:
            facts_mod.validate_facts(strictjson.parse_json(body))
        except facts_mod.FactsInvalid:
            continue
        out.append(body)
    return out


def run(decider: Decider, payloads: list[bytes], n: int) -> float:
    """CPU seconds of this process for n decisions over the full path (CPU time, not wall
    time, so other work on a shared machine does not count against us)."""
    parse, validate, decide, dumps = (strictjson.parse_json, facts_mod.validate_facts,
                                      decider.decide_facts, orjson.dumps)
    k = len(payloads)
    started = time.process_time()
    for i in range(n):
        dumps(decide(validate(parse(payloads[i % k]))))
    return time.process_time() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=200_000, help="for the RSS run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sample", type=int, default=20_000, help="decisions per timed repeat")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rs = load_ruleset(ROOT / "rules")
    payloads = bodies()
    engine, reference = Decider(rs, "durable"), Decider(rs, "reference")
    run(engine, payloads, 2000)
    run(reference, payloads, 2000)
    times = {"durable": [], "reference": []}
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        times["durable"].append(run(engine, payloads, args.sample))
        times["reference"].append(run(reference, payloads, args.sample))
    print(f"ruleset {rs.name} {rs.version}: {len(rs.rules)} rules, {len(payloads)} distinct "
          f"fact sets; median of {args.repeat} x {args.sample} decisions, one core, CPU time")
    print(f"{'path':<44}{'decisions/s':>14}{'µs/decision':>14}")
    for name, label in (("durable", "(a) full path, durable-rules engine"),
                        ("reference", "(b) full path, reference evaluator")):
        t = statistics.median(times[name])
        print(f"{label:<44}{args.sample / t:>14,.0f}{t / args.sample * 1e6:>14.1f}")
    ratio = statistics.median(times["durable"]) / statistics.median(times["reference"])
    print(f"engine path / reference path time: {ratio:.2f}x")
    before = rss_mb()
    t = run(engine, payloads, args.decisions)
    after = rss_mb()
    print(f"RSS before {before:.1f} MB, after {args.decisions:,} decisions {after:.1f} MB "
          f"(growth {after - before:+.1f} MB; {args.decisions / t:,.0f} decisions/s)")
    engine.close()


if __name__ == "__main__":
    main()
