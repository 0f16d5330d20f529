"""A log written by the release before the Merkle tree (schema 0001) is brought up to
it by the migration: the tree over its 83 records, and a checkpoint signed for it
when the store is next opened with a key."""

from __future__ import annotations

import base64
import shutil
import sqlite3
from pathlib import Path

from service.audit import merkle, open_store
from service.audit.notes import Signer, write_new_key
from tests.audit.records import make_record

RELEASE_LOG = Path(__file__).parent / "fixtures" / "release-0001.db"


def test_a_log_of_the_previous_release_gets_its_tree_and_a_signed_checkpoint(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    shutil.copyfile(RELEASE_LOG, path)
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT version_num FROM audit_schema_version").fetchall() == [("0001",)]
        hashes = [h for (h,) in c.execute("SELECT hash FROM audit_records ORDER BY seq")]
    assert len(hashes) == 83
    write_new_key(tmp_path / "key.pem")
    signer = Signer.from_file(tmp_path / "key.pem")
    store = open_store(f"sqlite:///{path}", signer=signer,
                       checkpoint_file=tmp_path / "checkpoints.jsonl")
    try:
        leaves = [merkle.record_leaf(h) for h in hashes]
        _, frontier = merkle.append(0, [], leaves)
        assert store.tree_head() == (83, merkle.root_from_frontier(frontier))
        checkpoint = signer.verifier().checkpoint(store.latest_checkpoint())
        assert (checkpoint.size, checkpoint.root) == (83, merkle.root_from_frontier(frontier))
        assert (tmp_path / "checkpoints.jsonl").read_text().count("\n") == 1
        result = store.verify(verifier=signer.verifier())
        assert result.ok and result.checked == 83 and result.checkpoints_checked == 1
        # Every old record is provably in the signed tree.
        for record in store.iter_records():
            proof = store.inclusion_proof(record["decision_id"])
            assert proof is not None and proof["tree_size"] == 83
            merkle.verify_inclusion(record["seq"] - 1, 83, merkle.record_leaf(record["hash"]),
                                    [base64.b64decode(p) for p in proof["inclusion_proof"]],
                                    checkpoint.root)
        # And the log goes on growing from there, consistently.
        store.append([make_record(1)])
        after = signer.verifier().checkpoint(store.latest_checkpoint())
        assert after.size == 84
        merkle.verify_consistency(83, 84, checkpoint.root, after.root,
                                  [base64.b64decode(p) for p in store.consistency_proof(83, 84)])
        assert store.verify(verifier=signer.verifier()).ok
    finally:
        store.close()
    # Opened again, nothing is migrated or signed twice.
    with open_store(f"sqlite:///{path}", signer=signer) as again:
        assert again.latest_checkpoint().split("\n")[1] == "84"
    assert (tmp_path / "checkpoints.jsonl").read_text().count("\n") == 2


def test_a_postgresql_log_of_the_previous_release_gets_its_tree(
        pg_url: str, tmp_path: Path) -> None:
    """The same 83 records, written into a PostgreSQL log at revision 0001 (as the
    previous release left it), then opened by this release."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from service.audit.migrate import MIGRATIONS

    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
                              if pg_url.startswith("postgresql://") else pg_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    columns = ("seq, decision_id, recorded_at, loan_id, ruleset_name, ruleset_version, "
               "ruleset_sha256, facts, decision, trace, duration_ms, idempotency_key, "
               "request_hash, prev_hash, hash")
    with sqlite3.connect(RELEASE_LOG) as old:
        rows = old.execute(f"SELECT {columns} FROM audit_records ORDER BY seq").fetchall()
        head = old.execute("SELECT seq, hash FROM audit_chain_head").fetchone()
    names = [c.strip() for c in columns.split(",")]
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"INSERT INTO audit_records ({columns}) VALUES "
                    f"({', '.join(':' + n for n in names)})"),
            [dict(zip(names, (*row[:2], row[2] + "+00:00", *row[3:]), strict=True))
             for row in rows])
        connection.execute(sa.text("UPDATE audit_chain_head SET seq = :s, hash = :h"),
                           {"s": head[0], "h": head[1]})
    engine.dispose()
    write_new_key(tmp_path / "key.pem")
    signer = Signer.from_file(tmp_path / "key.pem")
    with open_store(pg_url, signer=signer) as store:
        _, frontier = merkle.append(0, [], [merkle.record_leaf(row[-1]) for row in rows])
        assert store.tree_head() == (83, merkle.root_from_frontier(frontier))
        result = store.verify(verifier=signer.verifier())
        assert result.ok and result.checked == 83 and result.checkpoints_checked == 1
