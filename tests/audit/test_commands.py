"""`deficiency audit verify` and `deficiency audit show ID` (spec §9)."""

from __future__ import annotations

import io
import json

import sqlalchemy as sa

from service.commands.audit import show_command, verify_command
from tests.audit.records import make_record


def run(command, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = command(*args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_verify_reports_an_intact_chain(store, store_url):
    store.append([make_record(n) for n in range(3)])
    # A store opened without a key signs nothing: the tree is checked, and the
    # missing signatures said.
    assert run(verify_command, store_url) == (
        0, "OK: 3 records, chain intact; Merkle tree of 3 leaves\n"
           "warning: the log's latest signed checkpoint covers 0 of 3 records: records "
           "after it are vouched for by no signature\n", "")


def test_verify_names_the_first_tampered_record(store, store_url, raw):
    records = [make_record(n) for n in range(3)]
    store.append(records)
    with raw.begin() as connection:
        connection.execute(sa.text("UPDATE audit_records SET facts = '{}' WHERE seq = 2"))
    code, out, err = run(verify_command, store_url)
    assert code == 1 and err == ""
    assert out == (f"TAMPERED: record seq=2 decision_id={records[1].decision_id} :"
                   " hash mismatch (content altered)\n")


def test_show_prints_the_record_as_json(store, store_url):
    record = make_record(1)
    store.append([record])
    code, out, err = run(show_command, store_url, record.decision_id)
    assert code == 0 and err == ""
    assert json.loads(out) == store.get(record.decision_id)
    assert out.startswith("{\n  ")


def test_show_an_unknown_id_is_one_line(store, store_url):
    assert run(show_command, store_url, "dec-missing") == (1, "", "not found: dec-missing\n")


def test_a_missing_sqlite_file_is_an_error_not_an_empty_log(tmp_path):
    path = tmp_path / "typo.db"
    code, out, err = run(verify_command, f"sqlite:///{path}")
    assert (code, out) == (2, "")
    assert err == f"error: no audit log at {path}\n"
    assert not path.exists()


def test_an_unreachable_store_is_one_line_with_exit_2():
    for command, args in ((verify_command, ()), (show_command, ("x",))):
        code, out, err = run(command, "postgresql://postgres@127.0.0.1:1/a?connect_timeout=2",
                             *args)
        assert (code, out) == (2, "")
        assert err.startswith("error: audit store unavailable:") and err.count("\n") == 1


def test_a_bad_url_is_one_line_with_exit_2():
    code, out, err = run(verify_command, "mysql://x/y")
    assert (code, out) == (2, "")
    assert err == "error: unsupported audit store URL scheme: mysql\n"


def test_streams_default_to_the_current_stdout_and_stderr(store, store_url, capsys):
    assert verify_command(store_url) == 0
    assert show_command(store_url, "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == "OK: 0 records, chain intact; Merkle tree of 0 leaves\n"
    assert captured.err == "not found: nope\n"
