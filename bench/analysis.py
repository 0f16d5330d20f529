"""Static analysis at scale, in one sitting: how long `deficiency check`'s analysis takes
on generated policies of 100, 300, 600 and 900 rules beside the default policy's, and
whether it completes within its budget; then what a worker's decisions see while it
analyses a 900-rule candidate on reload.

    .venv/bin/python bench/analysis.py [--sizes 100,300,600,900] [--threads 4]
                                       [--seconds 3] [--skip-reload]

The policies are `bench/large_policy.py`'s: the default rules plus one bearer rule per
state × disposition method × dwelling-unit bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its http.py would hide the standard library's

from bench.large_policy import write_policy  # noqa: E402
from service.tooling.analysis.limits import TIME_BUDGET  # noqa: E402
from service.tooling.check import check_ruleset  # noqa: E402

CAR = {"as_of": "2026-02-01", "jurisdiction": "OH",
       "loan": {"id": "bench-car", "type": "auto", "unpaid_balance": "10000.00"},
       "collateral": {"kind": "vehicle"},
       "disposition": {"method": "auction", "date": "2026-01-10", "proceeds": "8500.00",
                       "costs": {"legal": "500.00"}}}


def analysis_times(sizes: list[int], tmp: Path) -> None:
    print(f"analysis, default budget {TIME_BUDGET:g} s (what `deficiency check` and a reload run)")
    print(f"{'policy':<16} {'rules':>6} {'seconds':>8} {'questions':>10} {'nodes':>8}  result")
    for size in [0, *sizes]:
        directory = ROOT / "rules" if size == 0 else tmp / f"policy-{size}"
        if size:
            write_policy(size, directory, ROOT / "rules")
        started = time.monotonic()
        problems, summary, findings = check_ruleset(str(directory))
        seconds = time.monotonic() - started
        stats = summary.get("analysis", {})
        incomplete = [f for f in findings if f.kind == "incomplete"]
        kinds: dict[str, int] = {}
        for f in findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        result = ("INCOMPLETE: " + incomplete[0].message[:80]) if incomplete else \
            "complete; " + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "clean")
        name = "default" if size == 0 else f"generated {size}"
        print(f"{name:<16} {summary.get('rules', 0):>6} {seconds:>8.2f} "
              f"{stats.get('questions', 0):>10} {stats.get('nodes', 0):>8}  {result}")


def reload_stall(size: int, threads: int, seconds: float, tmp: Path, apart: bool) -> None:
    """Decisions on `threads` threads of one app, before and during a reload whose
    candidate is analysed apart (as the service does) or in the worker's process."""
    import logging

    from service.api import create_app
    from service.config import AuditConfig, Config, RulesConfig, ServerConfig
    from service.serving import active_ruleset

    logging.getLogger("deficiency").setLevel(logging.ERROR)  # the candidate's warnings
    original = active_ruleset.full_check
    if not apart:
        active_ruleset.full_check = _in_process
    mode = "apart" if apart else "here"
    rules = tmp / f"serving-rules-{mode}"
    write_policy(size, rules, ROOT / "rules")
    generated = rules / "generated.yaml"  # a content of its own: never checked before
    generated.write_text(f"# {mode}\n" + generated.read_text())
    config = Config(server=ServerConfig(access_log=False), rules=RulesConfig(rules),
                    audit=AuditConfig(f"sqlite:///{rules}-audit/audit.db"))
    started = time.monotonic()
    try:
        app = create_app(config, watch_interval=0)
    finally:
        active_ruleset.full_check = original  # (bound by the app already)
    print(f"\nreload under load, candidate analysed {'apart' if apart else 'in the worker'}: "
          f"app with the default rules and {size} generated ones built in "
          f"{time.monotonic() - started:.1f} s; {threads} threads deciding")
    svc = app.extensions["deficiency"]
    body = json.dumps(CAR)
    latencies: list[tuple[float, float]] = []  # (finished at, seconds)
    stop = threading.Event()

    def decide() -> None:
        client = app.test_client()
        while not stop.is_set():
            t0 = time.perf_counter()
            r = client.post("/v1/decisions", data=body, content_type="application/json")
            assert r.status_code == 201, r.data
            latencies.append((time.monotonic(), time.perf_counter() - t0))

    workers = [threading.Thread(target=decide, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # warm-up
    quiet_from = time.monotonic()
    time.sleep(seconds)
    quiet_to = time.monotonic()
    # A new content: the same rules, one description changed (a new sha256: checked again).
    generated.write_text(generated.read_text().replace("generated rule 0\n",
                                                       "generated rule zero\n", 1))
    reload_from = time.monotonic()
    result = svc.rulesets.reload()
    reload_to = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join()
    svc.close()

    def window(lo: float, hi: float) -> str:
        xs = sorted(d for at, d in latencies if lo <= at < hi)
        if not xs:
            return "no decision finished"
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        return (f"{len(xs) / (hi - lo):7.0f} decisions/s, p50 {statistics.median(xs) * 1000:6.1f}"
                f" ms, p99 {p99 * 1000:7.1f} ms, max {xs[-1] * 1000:7.1f} ms")

    print(f"  quiet  ({quiet_to - quiet_from:4.1f} s): {window(quiet_from, quiet_to)}")
    buckets = [sum(1 for at, _d in latencies if reload_from + i * 0.5 <= at
                   < reload_from + (i + 1) * 0.5)
               for i in range(int((reload_to - reload_from) / 0.5) + 1)]
    print(f"  decisions per 0.5 s during the reload: {buckets}")
    print(f"  reload ({reload_to - reload_from:4.1f} s): {window(reload_from, reload_to)}"
          f"  -> {'switched' if result.changed else 'unchanged'}")


def _in_process(directory: Path) -> tuple[list, str | None]:
    problems, summary, _findings = check_ruleset(str(directory))
    return problems, (summary or {}).get("sha256")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,600,900")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-reload", action="store_true")
    args = parser.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        analysis_times(sizes, Path(tmp))
        if not args.skip_reload:
            for apart in (False, True):
                reload_stall(max(sizes, default=900), args.threads, args.seconds, Path(tmp),
                             apart)


if __name__ == "__main__":
    main()
