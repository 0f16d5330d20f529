"""The audit log's Merkle tree: verifying a large log, proofs and receipts, timed.

    .venv/bin/python bench/audit_log.py [--records 100000] [--url URL] [--batch 1000]
        [--proofs 1000] [--group 4] [--receipt-groups 250] [--no-cli] [--seed N]

Builds a fresh log of `--records` records (the shape of tests/audit/records.py's
make_record), appended through `service.audit.open_store(url, signer=...)` with
`store.append()` in batches of `--batch` (one transaction and one signed checkpoint
per batch), the Ed25519 key written by `service.audit.notes.write_new_key` into a
temporary directory. Then it times, one after the other:

- `store.verify(verifier=signer.verifier())`: the chain walk, the tree rebuilt from
  every record and checked against every kept checkpoint and its signature (wall time,
  records/s);
- `deficiency audit --url URL verify --key VKEY` as a process of its own (what an
  operator runs: start-up included; skip with --no-cli);
- `store.inclusion_proof(decision_id)` for `--proofs` random recorded decisions
  (against the latest checkpoint) and `store.consistency_proof(m, n)` for `--proofs`
  random pairs 1 <= m <= n <= records: wall time per call, median and p99;
- what a 201 answer's receipt costs the server: CPU time of one
  `TreeGroup.receipt(id).to_json()` (each receipt of a commit group of `--group`
  records made once, as the service does; the groups committed with
  `store.commit_receipted` after the records above, so the log ends with
  records + group x receipt-groups), and of signing one checkpoint (one per group).

`--url`: `sqlite:///PATH` (default: a file in a temporary directory, removed at the
end) or a PostgreSQL server's database URL such as
`postgresql+psycopg://postgres@127.0.0.1:5432/test`: a fresh database
`bench_audit_<random>` is created on that server (through an AUTOCOMMIT connection to
the given database, which is otherwise left alone), used, and dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from service.audit import NewRecord, open_store  # noqa: E402
from service.audit.notes import Signer, write_new_key  # noqa: E402
from service.audit.receipts import Receipt  # noqa: E402
from service.audit.records import prepare  # noqa: E402

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_record(n: int) -> NewRecord:
    """The shape of tests/audit/records.py's make_record (copied: bench/ does not
    import the tests)."""
    loan_id = f"loan-{n % 3}"
    return NewRecord(
        decision_id=f"dec-{n:06d}-{uuid.uuid4().hex[:8]}",
        recorded_at=T0 + timedelta(seconds=n),
        loan_id=loan_id,
        ruleset_name="default",
        ruleset_version="2024.03",
        ruleset_sha256="ab" * 32,
        facts={"loan": {"id": loan_id, "debt": "12500.00"}, "n": n, "note": "señor ✓"},
        decision={"outcome": {"bearer": "borrower", "borrower_owes": "1250.00"},
                  "amounts": {"deficiency": "1250.00"}, "flags": [True, None, 3]},
        trace=[{"stage": "bearer", "rule": "consumer_default", "applied": True,
                "overridden_by": None}],
        duration_ms=1.25 + n,
    )


@contextlib.contextmanager
def fresh_database(url: str, tmp: Path) -> Iterator[str]:
    """The store URL to use: a file in `tmp` (no --url), the given SQLite URL, or a new
    PostgreSQL database on --url's server, dropped afterwards."""
    if not url:
        yield f"sqlite:///{tmp / 'audit.db'}"
        return
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        yield url
        return
    name = f"bench_audit_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def cli_verify(url: str, vkey: str, tmp: Path) -> tuple[float, int, str]:
    """`deficiency audit verify` in a process of its own: (wall s, exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFICIENCY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "service.cli", "audit", "--url", url, "verify",
               "--key", vkey]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    return wall, done.returncode, output[0] if output else ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--url", default="", help="sqlite:///PATH or a PostgreSQL server's "
                   "database URL (default: SQLite in a temporary directory)")
    p.add_argument("--batch", type=int, default=1000, help="records per append")
    p.add_argument("--proofs", type=int, default=1000,
                   help="inclusion and consistency proofs timed")
    p.add_argument("--group", type=int, default=4, help="records per receipted commit group")
    p.add_argument("--receipt-groups", type=int, default=250)
    p.add_argument("--no-cli", action="store_true", help="skip `deficiency audit verify`")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.records < 1 or args.batch < 1 or args.proofs < 1 or args.group < 1:
        p.error("--records, --batch, --proofs and --group must be at least 1")
    rng = random.Random(args.seed)
    rows: list[tuple[str, str]] = []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"  {what}: {value}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="deficiency-bench-audit-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "signing-key.pem"
        write_new_key(key)
        signer = Signer.from_file(key)
        with fresh_database(args.url, tmp) as url:
            shown = sa.make_url(url).render_as_string(hide_password=True)
            print(f"log: {shown}", file=sys.stderr, flush=True)
            store = open_store(url, signer=signer, checkpoint_file=tmp / "checkpoints.jsonl")
            try:
                # -- build
                ids: list[str] = []
                started = time.perf_counter()
                for first in range(0, args.records, args.batch):
                    batch = [make_record(n) for n in
                             range(first, min(first + args.batch, args.records))]
                    store.append(batch)
                    ids.extend(r.decision_id for r in batch)
                built = time.perf_counter() - started
                row(f"build: append {args.records:,} records, {args.batch} per transaction",
                    f"{built:.1f} s ({args.records / built:,.0f} records/s)")

                # -- verify, in process
                started = time.perf_counter()
                result = store.verify(verifier=signer.verifier())
                took = time.perf_counter() - started
                state = ("OK" if result.ok else f"FAILED at seq {result.first_bad_seq}: "
                         f"{result.reason}")
                row(f"store.verify(verifier=...) of {result.checked:,} records",
                    f"{took:.2f} s ({result.checked / took:,.0f} records/s); {state}; "
                    f"tree {result.tree_size:,} leaves, {result.checkpoints_checked} signed "
                    "checkpoints checked")

                # -- verify, the command
                if not args.no_cli:
                    wall, code, line = cli_verify(url, signer.verifier_key, tmp)
                    row("`deficiency audit verify --key VKEY` (own process)",
                        f"{wall:.2f} s, exit {code}: {line[:110]}")

                # -- proofs
                times: list[float] = []
                for decision_id in rng.choices(ids, k=args.proofs):
                    started = time.perf_counter()
                    proof = store.inclusion_proof(decision_id)
                    times.append(time.perf_counter() - started)
                    assert proof is not None and proof["inclusion_proof"] is not None
                row(f"store.inclusion_proof(id), {args.proofs} random ids (tree "
                    f"{proof['tree_size']:,})",
                    f"median {statistics.median(times) * 1000:.3f} ms, "
                    f"p99 {percentile(times, 0.99) * 1000:.3f} ms, "
                    f"{len(proof['inclusion_proof'])} hashes")
                times = []
                for _ in range(args.proofs):
                    m, n = sorted(rng.randint(1, args.records) for _ in range(2))
                    started = time.perf_counter()
                    store.consistency_proof(m, n)
                    times.append(time.perf_counter() - started)
                row(f"store.consistency_proof(m, n), {args.proofs} random 1<=m<=n<=N",
                    f"median {statistics.median(times) * 1000:.3f} ms, "
                    f"p99 {percentile(times, 0.99) * 1000:.3f} ms")

                # -- receipts: the server's side
                cpu: list[float] = []
                receipts = 0
                n = args.records
                for _ in range(args.receipt_groups):
                    prepared = [prepare(make_record(n + i)) for i in range(args.group)]
                    n += args.group
                    outcomes = store.commit_receipted(prepared)
                    for outcome in outcomes:
                        if not isinstance(outcome, Receipt):
                            raise SystemExit(f"commit_receipted: {outcome!r}")
                        started = time.thread_time()
                        outcome.to_json()
                        cpu.append(time.thread_time() - started)
                        receipts += 1
                row(f"one receipt: TreeGroup.receipt(id).to_json(), {receipts} receipts in "
                    f"groups of {args.group}",
                    f"CPU median {statistics.median(cpu) * 1e6:.1f} us, "
                    f"mean {statistics.fmean(cpu) * 1e6:.1f} us, "
                    f"p99 {percentile(cpu, 0.99) * 1e6:.1f} us")
                size, root = store.tree_head()
                rounds = 2000
                started = time.thread_time()
                for _ in range(rounds):
                    note = signer.checkpoint(size, root)
                signed = (time.thread_time() - started) / rounds
                verifier = signer.verifier()
                started = time.thread_time()
                for _ in range(rounds):
                    verifier.checkpoint(note)
                checked = (time.thread_time() - started) / rounds
                row("sign one checkpoint (Ed25519; one per commit group)",
                    f"CPU {signed * 1e6:.1f} us; checking one: {checked * 1e6:.1f} us")
            finally:
                store.close()

    backend = sa.make_url(args.url).get_backend_name() if args.url else "sqlite"
    print()
    print(f"$ {shlex.join(sys.orig_argv)}")
    print(f"{backend}, {args.records:,} records, {os.cpu_count()} CPUs, "
          f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    width = max(len(what) for what, _ in rows)
    print(f"{'measure':<{width}}  figure")
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
