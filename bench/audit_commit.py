"""CPU and wall time of one audit commit per record, by commit group size, with and
without checkpoint signing (SQLite, in process: no HTTP, no engine).

    .venv/bin/python bench/audit_commit.py [--records 2000] [--groups 1,8] [--tree DIR]

`--tree DIR` measures another checkout (e.g. /tmp/deficiency-baseline-58f44a8, the
store before the Merkle tree), imported from DIR; its store has no signer, so only the
"unsigned" rows are printed for it. Prints one row per (tree, signing, group size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--groups", default="1,8")
    parser.add_argument("--tree", default=str(HERE))
    args = parser.parse_args()
    sys.path.insert(0, args.tree)
    sys.path.append(str(HERE))  # tests.audit.records, when the tree is another checkout
    from service.audit import open_store
    from service.audit.records import prepare
    from tests.audit.records import make_record

    try:
        from service.audit.notes import Signer, write_new_key
    except ImportError:  # a store before signed checkpoints
        Signer = None  # noqa: N806
    print(f"$ {' '.join(sys.argv)}")
    print(f"{'tree':<40} {'signing':<9} {'group':>5} {'cpu µs/record':>14} {'wall µs/record':>15}")
    for signing in ("unsigned", "signed"):
        if signing == "signed" and Signer is None:
            continue
        for group in (int(g) for g in args.groups.split(",")):
            tmp = tempfile.mkdtemp(prefix="bench-commit-")
            extra = {}
            if signing == "signed":
                write_new_key(f"{tmp}/key.pem")
                extra = {"signer": Signer.from_file(f"{tmp}/key.pem"),
                         "checkpoint_file": f"{tmp}/checkpoints.jsonl"}
            store = open_store(f"sqlite:///{tmp}/audit.db", **extra)
            records = [prepare(make_record(n)) for n in range(args.records)]
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, args.records, group):
                store.commit_each(records[start:start + group])
            cpu = (time.process_time() - cpu) / args.records * 1e6
            wall = (time.perf_counter() - wall) / args.records * 1e6
            store.close()
            print(f"{args.tree:<40} {signing:<9} {group:>5} {cpu:>14.1f} {wall:>15.1f}")


if __name__ == "__main__":
    main()
