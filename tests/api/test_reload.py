"""Hot reload in one process: only fully checked rulesets get in, a request finishes on
the ruleset it started with, the old engine ruleset is freed after it, memory stays
bounded over hundreds of reloads, and workers share one record of what was accepted."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from service.engine import decide as decide_mod
from service.facts import validate_facts
from service.policy.loader import rule_files, ruleset_digest
from service.serving.active_ruleset import ActiveRuleset, RulesetRejected
from service.serving.generation import REJECTED, SharedGeneration

from .conftest import CAR, RULES, ConformingClient, api_keys, bearer, make_config, post_json


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def replace_file(path: Path, text: str) -> None:
    """Write the way editors and deploy tools do: a whole new file, renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_version(rules_dir: Path, version: str) -> None:
    header = rules_dir / "ruleset.yaml"
    replace_file(header, re.sub(r'(?m)^version: .*$', f'version: "{version}"',
                                header.read_text()))


def break_enum(rules_dir: Path) -> None:
    """A typo'd enum value (`mortgag`), a load error at a known file:line:col."""
    path = rules_dir / "bearer.yaml"
    replace_file(path, path.read_text().replace("loan.type: mortgage", "loan.type: mortgag", 1))


def remove_rule(rules_dir: Path, rule_id: str) -> None:
    """Loads fine; the static analysis finds the gap it leaves."""
    path = rules_dir / "bearer.yaml"
    text = path.read_text()
    start = text.index(f"  - id: {rule_id}\n")
    end = text.find("\n  - id: ", start + 1)
    replace_file(path, text[:start] + (text[end + 1:] if end != -1 else ""))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in a Prometheus text exposition, as (labels, value)."""
    found = []
    for m in re.finditer(rf"(?m)^{name}(?:{{(.*)}})? (\S+)$", metrics):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        found.append((labels, float(m.group(2))))
    return found


def make_client(make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path,
                **kwargs: object) -> ConformingClient:
    return ConformingClient(make_app(make_config(tmp_path, keys=api_keys(),
                                                 rules_dir=rules_dir), **kwargs))


# ------------------------------------------------------------------ the full check


def test_a_typo_is_refused_with_file_line_column_and_stays_visible(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path) -> None:
    client = make_client(make_app, tmp_path, rules_dir)
    before = client.get("/readyz").json
    assert before["ruleset_error"] is None
    break_enum(rules_dir)
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 422
    assert r.json["active"]["sha256"] == before["ruleset"]["sha256"]
    assert r.json["errors"][0]["path"] == f"{rules_dir / 'bearer.yaml'}:31:18"
    assert "mortgag" in r.json["errors"][0]["message"]
    assert r.json["problems"][0]["line"] == 31 and r.json["problems"][0]["column"] == 18

    ready = client.get("/readyz")
    assert ready.status_code == 200  # still serving, with the ruleset it had
    assert ready.json["ruleset"] == before["ruleset"]
    error = ready.json["ruleset_error"]
    assert error["rejected_sha256"] == r.json["rejected_sha256"]
    assert error["problems"][0].startswith(f"{rules_dir / 'bearer.yaml'}:31:18: error: ")
    decision = post_json(client, "/v1/decisions", CAR)
    assert decision.status_code == 201
    assert decision.json["ruleset"] == before["ruleset"]

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'deficiency_ruleset_reload_total{result="rejected",trigger="api"} 1.0' in metrics
    assert "deficiency_ruleset_reload_failed 1.0" in metrics
    assert samples(metrics, "deficiency_ruleset_info") == [({**before["ruleset"]}, 1.0)]

    # The files go back to the active ruleset: nothing is wrong any more.
    shutil.rmtree(rules_dir)
    shutil.copytree(RULES, rules_dir)
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 200 and r.json["changed"] is False
    assert client.get("/readyz").json["ruleset_error"] is None
    assert "deficiency_ruleset_reload_failed 0.0" in client.get("/metrics").get_data(
        as_text=True)


def test_a_gap_found_by_the_analysis_is_refused(make_app: Callable[..., Flask],
                                                tmp_path: Path, rules_dir: Path) -> None:
    client = make_client(make_app, tmp_path, rules_dir)
    before = client.get("/v1/ruleset", headers=bearer("admin")).json
    remove_rule(rules_dir, "consumer-goods-default")
    set_version(rules_dir, "2099.1.0")
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 422, r.json
    assert any("gap" in e["message"] for e in r.json["errors"])
    assert client.get("/v1/ruleset", headers=bearer("admin")).json["sha256"] == before["sha256"]
    assert client.get("/readyz").json["ruleset_error"]["problem_count"] >= 1


def test_a_new_app_refuses_to_start_on_a_rejected_directory(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path) -> None:
    break_enum(rules_dir)
    with pytest.raises(RulesetRejected) as caught:
        make_app(make_config(tmp_path, rules_dir=rules_dir))
    assert str(rules_dir / "bearer.yaml") + ":31:18" in str(caught.value)


# ------------------------------------------------------------------ in-flight requests, memory


def test_a_request_inside_the_old_ruleset_finishes_on_it(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path) -> None:
    app = make_app(make_config(tmp_path, rules_dir=rules_dir))
    rulesets: ActiveRuleset = app.extensions["deficiency"].rulesets
    old_version = rulesets.info["version"]
    facts = validate_facts(CAR)
    inside, reloaded = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def request() -> None:
        with rulesets.use() as decider:
            inside.set()
            reloaded.wait(30)
            seen["decision"] = decider.decide_facts(facts)
            seen["handle_open"] = decider.matcher._handle is not None
        seen["handle_after"] = decider.matcher._handle

    thread = threading.Thread(target=request)
    thread.start()
    assert inside.wait(30)
    set_version(rules_dir, "2099.2.0")
    assert rulesets.reload().changed
    with rulesets.use() as decider:  # new requests get the new ruleset at once
        assert decider.decide_facts(facts)["ruleset"]["version"] == "2099.2.0"
    reloaded.set()
    thread.join(30)
    decision = seen["decision"]
    assert isinstance(decision, dict) and decision["ruleset"]["version"] == old_version
    assert seen["handle_open"] is True  # not freed under the running request
    assert seen["handle_after"] is None  # freed by the last request leaving it


def test_500_reloads_keep_memory_bounded(make_app: Callable[..., Flask], tmp_path: Path,
                                         rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    real_close = decide_mod.Decider.close

    def counting_close(self: decide_mod.Decider) -> None:
        closed.append(self.rs.version)
        real_close(self)

    monkeypatch.setattr(decide_mod.Decider, "close", counting_close)
    client = make_client(make_app, tmp_path, rules_dir)
    rulesets: ActiveRuleset = client.app.extensions["deficiency"].rulesets
    facts = validate_facts(CAR)

    def reload_to(version: str) -> None:
        set_version(rules_dir, version)
        assert rulesets.reload().changed
        with rulesets.use() as decider:
            assert decider.decide_facts(facts)["ruleset"]["version"] == version

    for i in range(20):  # warm up: both versions checked, caches and allocator settled
        reload_to(f"2099.{i % 2}.0")
    before, closed_before = rss_bytes(), len(closed)
    started = time.perf_counter()
    for i in range(500):
        reload_to(f"2099.{i % 2}.0")
        if i % 100 == 0:  # now and then through HTTP too
            assert post_json(client, "/v1/decisions", CAR).json["ruleset"]["version"] == \
                f"2099.{i % 2}.0"
    growth = rss_bytes() - before
    elapsed = time.perf_counter() - started
    print(f"500 reloads in {elapsed:.1f} s; RSS {before / 2**20:.1f} MiB -> "
          f"{(before + growth) / 2**20:.1f} MiB ({growth / 2**20:+.1f} MiB)")
    assert len(closed) - closed_before == 500  # every replaced engine ruleset was freed
    assert growth < 20 * 2**20


# ------------------------------------------------------------------ the file watcher


def test_the_watcher_follows_edits_and_reports_broken_ones(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path) -> None:
    client = make_client(make_app, tmp_path, rules_dir, watch_interval=0.05)

    def wait_for(predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    set_version(rules_dir, "2099.3.0")
    wait_for(lambda: client.get("/readyz").json["ruleset"]["version"] == "2099.3.0")
    assert post_json(client, "/v1/decisions", CAR).json["ruleset"]["version"] == "2099.3.0"

    break_enum(rules_dir)
    wait_for(lambda: client.get("/readyz").json["ruleset_error"] is not None)
    ready = client.get("/readyz").json
    assert ready["ruleset"]["version"] == "2099.3.0"
    assert ready["ruleset_error"]["trigger"] == "watcher"
    assert 'deficiency_ruleset_reload_total{result="rejected",trigger="watcher"} 1.0' in \
        client.get("/metrics").get_data(as_text=True)


# ------------------------------------------------------------------ workers share one record


def test_workers_check_once_and_follow_the_accepted_copy(
        tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serving import active_ruleset as rulesets_mod

    shared = SharedGeneration(str(tmp_path / "state"))
    checked: list[str] = []

    def checker(directory: Path) -> tuple[list, str | None]:
        checked.append(ruleset_digest(directory, rule_files(directory)))
        return rulesets_mod.full_check(directory)

    def worker() -> ActiveRuleset:
        # Each worker process has its own memory of checked contents: start empty.
        monkeypatch.setattr(rulesets_mod, "_checked", rulesets_mod._CheckedDigests())
        return ActiveRuleset(rules_dir, shared, checker=checker)

    a, b = worker(), worker()
    try:
        assert len(checked) == 1  # b started on the content a had checked
        set_version(rules_dir, "2099.4.0")
        assert a.reload().changed
        monkeypatch.setattr(rulesets_mod, "_checked", rulesets_mod._CheckedDigests())
        assert b.reload().changed  # b loads what a accepted without checking it again
        assert len(checked) == 2
        # The files break before a third worker starts: nobody decides with them.
        break_enum(rules_dir)
        with pytest.raises(RulesetRejected):
            a.reload()
        c = worker()  # starts on the accepted copy, the rejection visible, no new check
        assert len(checked) == 3
        assert c.info["version"] == "2099.4.0"
        last = c.last_verdict()
        assert last is not None and last.result == REJECTED
        with b.use() as decider:
            assert decider.rs.version == "2099.4.0"
        assert b.last_verdict() == last
        # A fix accepted by c; before a and b decide again, the files break once more:
        # their reloads are refused, and they still catch up with the accepted fix.
        set_version(rules_dir, "2099.5.0")
        shutil.copy(RULES / "bearer.yaml", rules_dir / "bearer.yaml")
        assert c.reload().current["version"] == "2099.5.0"
        break_enum(rules_dir)
        for other in (a, b):
            with pytest.raises(RulesetRejected):
                other.reload()
            with other.use() as decider:
                assert decider.rs.version == "2099.5.0"
        assert len(checked) == 5  # the fix and the second breakage, once each
        c.close()
    finally:
        a.close()
        b.close()


def test_files_going_back_to_a_lagging_workers_ruleset_are_accepted_again(
        tmp_path: Path, rules_dir: Path) -> None:
    shared = SharedGeneration(str(tmp_path / "state"))
    a, b = ActiveRuleset(rules_dir, shared), ActiveRuleset(rules_dir, shared)
    try:
        original = (rules_dir / "ruleset.yaml").read_text()
        set_version(rules_dir, "2099.11.0")
        assert a.reload().changed
        replace_file(rules_dir / "ruleset.yaml", original)  # before b ever looked
        result = b.reload()  # b still decides with the original: it is accepted again
        assert not result.changed and result.current["version"] == b.info["version"]
        for worker in (a, b):
            with worker.use() as decider:
                assert decider.rs.sha256 == b.info["sha256"]
                assert decider.rs.version != "2099.11.0"
    finally:
        a.close()
        b.close()


def test_a_rule_file_vanishing_while_it_is_read_is_a_rejection_not_a_crash(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from service.policy import loader

    client = make_client(make_app, tmp_path, rules_dir)
    real = loader.rule_files

    def listed_then_gone(directory: Path) -> list[Path]:
        return real(directory) + [Path(directory) / "zz-gone.yaml"]

    monkeypatch.setattr(loader, "rule_files", listed_then_gone)
    set_version(rules_dir, "2099.12.0")
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 422
    assert r.json["errors"][0]["path"].startswith(str(rules_dir / "zz-gone.yaml"))
    assert "cannot read" in r.json["errors"][0]["message"]
    monkeypatch.undo()
    assert client.post("/v1/ruleset/reload", headers=bearer("admin")).json["ruleset"][
        "version"] == "2099.12.0"
