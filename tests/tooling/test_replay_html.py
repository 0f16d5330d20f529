"""`deficiency replay --format html --out FILE`: the impact report as one page.

The log is filled through the real path (as in test_replay.py); the candidate takes
NV and FL out of the fair-value states, so money moves in two jurisdictions and
not in the others. The page is parsed with the standard library's html.parser and
compared with the JSON report of the same replay and with sums worked out here,
in Decimal, from the generated cases.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from service.audit import NewRecord, open_store
from service.tooling import replay as replay_mod
from service.tooling import replay_html
from tests.tooling.test_replay import (
    CASES,
    FAIR_VALUE_LINE,
    RULES,
    T0,
    Case,
    copy_rules,
    foreclosure,
    record_cases,
    run_cli,
)

SCRIPT_LOAN = "NV-<script>alert(1)</script>"
#: The cases of test_replay.py plus one whose loan id is markup; all decided for real.
HTML_CASES = [*CASES, Case(foreclosure(SCRIPT_LOAN, "NV", 150_000, 100_000,
                                       fair_value=110_000),
                           T0 + timedelta(days=len(CASES)), "shared", "borrower",
                           Decimal(10_000))]
#: FL's fair-value cases go from shared to borrower too: the cushion of each moves.
FL_DELTAS = {f"FL-FV-{i}": Decimal(20_000 + i) for i in (0, 2)}


# --------------------------------------------------------------------------- the page


VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "area", "base", "col",
                  "embed", "source", "track", "wbr"})


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all(self, tag: str, css: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and (css is None or css in child.classes) and all(
                        child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.all(tag, css, **attrs)
        return found

    def one(self, tag: str, css: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, css, **attrs)
        assert len(found) == 1, (tag, css, attrs, len(found))
        return found[0]


class Tree(HTMLParser):
    """A small element tree; every start tag seen is also kept in `tags`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.tags.append((tag, node.attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.tags.append((tag, node.attrs))
        self.stack[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert tag in [n.tag for n in self.stack], f"</{tag}> closes nothing"
        while self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(text: str) -> Tree:
    tree = Tree()
    tree.feed(text)
    tree.close()
    assert tree.stack == [tree.root], "unclosed elements"
    return tree


def number(text: str) -> int:
    return int(text.replace(",", "")) if text.strip() else 0


def amount(text: str) -> Decimal:
    return Decimal(text.strip().replace(",", ""))


# --------------------------------------------------------------------------- the log


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_rules(tmp_path_factory.mktemp("html") / "no-nv-fl", (
        FAIR_VALUE_LINE, FAIR_VALUE_LINE.replace("FL, ", "").replace("NV, ", "")))


@pytest.fixture(scope="module")
def log_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("html-log")
    old = copy_rules(base / "old-rules", ('version: "2026.12.0"', 'version: "2026.10.0"'))
    url = f"sqlite:///{base / 'audit.db'}"
    store = open_store(url)
    try:
        record_cases(store, HTML_CASES, {"2026.12.0": RULES, "2026.10.0": old})
    finally:
        store.close()
    return url


def replay_html_file(url: str, candidate: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code, printed = run_cli("--candidate", str(candidate), "--url", url, "--workers", "1",
                            "--format", "html", "--out", str(out), *extra)
    return code, printed, out.read_text("utf-8")


def replay_json(url: str, candidate: Path, *extra: str) -> dict[str, Any]:
    code, text = run_cli("--candidate", str(candidate), "--url", url, "--workers", "1",
                         "--format", "json", *extra)
    assert code == 0, text
    return json.loads(text)


@pytest.fixture(scope="module")
def page(log_url: str, candidate: Path,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tree, dict[str, Any]]:
    """The page with every change listed, and the JSON report of the same replay."""
    out = tmp_path_factory.mktemp("report") / "impact.html"
    code, printed, text = replay_html_file(log_url, candidate, out, "--all")
    assert code == 0, printed
    assert printed == f"wrote {out}: html replay report, 23 changed of 50 replayed, 0 failed\n"
    return text, parse(text), replay_json(log_url, candidate, "--all")


def expected_owes_by_jurisdiction() -> dict[str, Decimal]:
    """new - old borrower_owes per jurisdiction, summed in Decimal from the cases."""
    sums: Counter[str] = Counter()
    for case in HTML_CASES:
        delta = FL_DELTAS.get(case.raw["loan"]["id"], case.owes_delta)
        if delta:
            sums[case.jurisdiction] += delta
    return dict(sums)


# --------------------------------------------------------------------------- the report


def test_counts_equal_the_json_report(page: tuple[str, Tree, dict[str, Any]]) -> None:
    _, tree, doc = page
    root = tree.root
    counts = {name: number(root.one("td", id=f"count-{name}").children[0])
              for name in ("scanned", "evaluated", "changed", "unchanged", "failed")}
    assert counts == {"scanned": doc["scanned"], "evaluated": doc["evaluated"],
                      "changed": doc["changed"], "failed": doc["failed"],
                      "unchanged": doc["evaluated"] - doc["changed"]}
    assert (doc["evaluated"], doc["changed"]) == (50, 23)
    held = {"jurisdictions": [], "loan_types": []}
    for key, table, name in (("jurisdictions", "held-jurisdictions", "jurisdiction"),
                             ("loan_types", "held-loan-types", "loan_type")):
        for row in root.one("table", id=table).one("tbody").all("tr"):
            cell, records = row.all("td")
            held[key].append({name: cell.text, "records": number(records.text)})
    assert held == doc["held"]
    warnings = [li.text for li in root.one("ul", "warnings").all("li")]
    assert warnings == doc["warnings"] and len(warnings) == 2


def test_transition_matrix_equals_the_json_report(
        page: tuple[str, Tree, dict[str, Any]]) -> None:
    _, tree, doc = page
    table = tree.root.one("table", "matrix")
    columns = [th.text for th in table.one("thead").all("th")[1:]]
    assert columns == ["borrower", "lender", "shared"]
    cells = {}
    for row in table.one("tbody").all("tr"):
        old = row.one("th").text
        for td, new in zip(row.all("td"), columns, strict=True):
            assert (td.attrs["data-from"], td.attrs["data-to"]) == (old, new)
            assert ("diagonal" in td.classes) == (old == new)  # visibly distinct
            cells[(old, new)] = number(td.text)
    assert [row.one("th").text for row in table.one("tbody").all("tr")] == columns
    from_json = {(t["from"], t["to"]): t["count"] for t in doc["transitions"]}
    assert {k: n for k, n in cells.items() if n} == from_json \
        == {("shared", "borrower"): 18, ("lender", "borrower"): 5}


def test_money_chart_has_a_bar_per_jurisdiction_with_exact_amounts(
        page: tuple[str, Tree, dict[str, Any]]) -> None:
    _, tree, doc = page
    svg = tree.root.one("svg")
    groups = svg.all("g", "jurisdiction")
    want = expected_owes_by_jurisdiction()
    assert [g.attrs["data-jurisdiction"] for g in groups] == sorted(want) == ["FL", "NV"]
    by_json = {j["jurisdiction"]: j for j in doc["money"]["by_jurisdiction"]}
    axis = Decimal(svg.one("line", "axis").attrs["x1"])
    widths = {}
    for g in groups:
        code = g.attrs["data-jurisdiction"]
        assert g.one("text", "label").text == code
        shown = {t.attrs["data-measure"]: amount(t.text) for t in g.all("text", "amount")}
        assert shown == {"borrower_owes": want[code], "lender_absorbs": -want[code]}
        assert shown == {"borrower_owes": Decimal(by_json[code]["borrower_owes_delta"]),
                         "lender_absorbs": Decimal(by_json[code]["lender_absorbs_delta"])}
        for bar in g.all("rect", "bar"):
            x, width = Decimal(bar.attrs["x"]), Decimal(bar.attrs["width"])
            # More to the right of the axis, less to the left.
            assert (x == axis) if shown[bar.attrs["data-measure"]] > 0 else (x + width == axis)
            widths[(code, bar.attrs["data-measure"])] = width
    largest = max(want.values())
    for (code, _), width in widths.items():
        assert abs(width - want[code] * 220 / largest) <= Decimal("0.05")
    # The money table holds the same exact amounts, and the total.
    total = tree.root.one("table", "money").one("tr", "total").all("td")
    assert amount(total[2].text) == sum(want.values()) \
        == Decimal(doc["money"]["borrower_owes_delta"])
    assert amount(total[3].text) == -sum(want.values())


def test_every_changed_loan_links_to_its_console_page(
        page: tuple[str, Tree, dict[str, Any]]) -> None:
    _, tree, doc = page
    rows = tree.root.one("table", "changes").all("tr", "change")
    assert len(rows) == len(doc["changes"]) == doc["changed"] == 23
    for row, change in zip(rows, doc["changes"], strict=True):
        assert row.one("td", "loan").text == change["loan_id"]
        link = row.one("a")
        assert link.attrs["href"] == f"/console/decisions/{change['decision_id']}"
        assert link.text == change["decision_id"]
        bearers = [td.text for td in row.all("td", "bearer")]
        assert bearers == [change["old"]["bearer"], change["new"]["bearer"]]
        rules = [td.text for td in row.all("td", "rule")]
        assert rules == [change["rule"]["old"], change["rule"]["new"]]
        cells = [td.text for td in row.all("td")]
        assert change["old"]["borrower_owes"] in cells and change["old"]["action"] in cells
        assert change["new"]["borrower_owes"] in cells and change["new"]["action"] in cells
    assert rows[0].one("td", "loan").text == "NV-SHARED-0"
    assert [td.text for td in rows[0].all("td", "rule")] == ["fair-value-limit",
                                                             "mortgage-recourse-default"]


def test_markup_in_a_loan_id_is_escaped(page: tuple[str, Tree, dict[str, Any]]) -> None:
    text, tree, doc = page
    assert SCRIPT_LOAN in [c["loan_id"] for c in doc["changes"]]
    assert "NV-&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text.lower()
    assert "script" not in [tag for tag, _ in tree.tags]
    assert SCRIPT_LOAN in [td.text for td in tree.root.all("td", "loan")]


def test_the_page_needs_no_network(page: tuple[str, Tree, dict[str, Any]]) -> None:
    text, tree, _ = page
    assert "http://" not in text and "https://" not in text
    tags = [tag for tag, _ in tree.tags]
    assert not {"script", "link", "img", "iframe", "object", "embed", "base"} & set(tags)
    assert tags.count("style") == 1 and tags.count("svg") == 1
    for _, attrs in tree.tags:
        assert "src" not in attrs
        assert not any(name.startswith("on") for name in attrs)  # no event handlers
        href = attrs.get("href")
        assert href is None or re.fullmatch(r"/console/decisions/[0-9A-Z]{26}", href)
    assert "url(" not in text and "@import" not in text


def test_console_url_makes_absolute_links(log_url: str, candidate: Path,
                                          tmp_path: Path) -> None:
    code, _, text = replay_html_file(log_url, candidate, tmp_path / "r.html", "--limit", "4",
                                     "--console-url", "https://deficiency.example.com/")
    assert code == 0
    hrefs = [attrs["href"] for tag, attrs in parse(text).tags if tag == "a"]
    assert len(hrefs) == 4
    assert all(re.fullmatch(r"https://deficiency\.example\.com/console/decisions/[0-9A-Z]{26}",
                            h or "") for h in hrefs)
    assert text.count("https://") == 4 and "http://" not in text


def test_limit_caps_the_listed_changes_not_the_sums(log_url: str, candidate: Path,
                                                    tmp_path: Path) -> None:
    code, _, text = replay_html_file(log_url, candidate, tmp_path / "r.html", "--limit", "3")
    assert code == 0
    tree = parse(text)
    assert len(tree.root.one("table", "changes").all("tr", "change")) == 3
    assert "20 more not listed" in tree.root.one("p", "not-shown").text
    total = tree.root.one("table", "money").one("tr", "total").all("td")
    assert amount(total[2].text) == sum(expected_owes_by_jurisdiction().values())
    code, _, text = replay_html_file(log_url, candidate, tmp_path / "r.html", "--limit", "0")
    tree = parse(text)
    assert tree.root.all("table", "changes") == []
    assert "23 not listed" in tree.root.one("p", "not-shown").text


def test_failures_are_listed_and_exit_1(tmp_path: Path, candidate: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    try:
        record_cases(store, CASES[:2], {"2026.12.0": RULES})
        good = next(store.iter_records())
        store.append([NewRecord(
            decision_id="broken-<b>1</b>", recorded_at=T0, loan_id="BROKEN<i>",
            ruleset_name="deficiency-default", ruleset_version="2026.12.0",
            ruleset_sha256="0" * 64, facts={**good["facts"], "jurisdiction": "XX"},
            decision=good["decision"], trace=good["trace"], duration_ms=1.0)])
    finally:
        store.close()
    code, printed, text = replay_html_file(url, candidate, tmp_path / "r.html")
    assert code == 1 and printed.endswith(", 1 failed\n")
    tree = parse(text)
    assert number(tree.root.one("td", id="count-failed").text) == 1
    row = tree.root.one("table", "failures").one("tbody").one("tr")
    assert row.all("td")[0].text == "BROKEN<i>"
    assert row.one("a").attrs["href"] == "/console/decisions/broken-%3Cb%3E1%3C%2Fb%3E"
    assert "<i>" not in text and "<b>" not in text


# --------------------------------------------------------------------------- the file


def test_out_replaces_the_file_whole(log_url: str, candidate: Path, tmp_path: Path) -> None:
    out = tmp_path / "impact.html"
    out.write_text("old report")
    code, _, text = replay_html_file(log_url, candidate, out, "--limit", "1")
    assert code == 0 and text.startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["impact.html"]  # no temp left


def test_out_with_json_writes_the_json_report(log_url: str, candidate: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "impact.json"
    code, printed = run_cli("--candidate", str(candidate), "--url", log_url, "--workers", "1",
                            "--format", "json", "--out", str(out))
    assert code == 0 and printed.startswith(f"wrote {out}: json replay report")
    assert json.loads(out.read_text()) == replay_json(log_url, candidate)


@pytest.mark.parametrize("argv, message", [
    (["--format", "html"], "--format html writes a file: give --out FILE"),
    (["--format", "json", "--console-url", "https://x.example"],
     "--console-url: only with --format html"),
    (["--format", "html", "--out", "{tmp}/r.html", "--console-url", "javascript:alert(1)"],
     "--console-url: 'javascript:alert(1)' is not an http:// or https:// base URL"),
    (["--format", "html", "--out", "{tmp}/r.html", "--console-url", "https://x.example/?a=1"],
     "is not an http:// or https:// base URL"),
    (["--format", "html", "--out", "{tmp}/nowhere/r.html"], "--out: no directory"),
    (["--format", "html", "--out", "{tmp}"], "is a directory"),
])
def test_bad_output_options_exit_2(log_url: str, candidate: Path, tmp_path: Path,
                                   argv: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out = run_cli("--candidate", str(candidate), "--url", log_url, *argv)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


# --------------------------------------------------------------------------- the parts


def test_diagonal_cells_count_changes_that_kept_their_bearer() -> None:
    bearers, rows = replay_html.transition_matrix([
        {"from": "shared", "to": "shared", "count": 2},
        {"from": "lender", "to": "review", "count": 1}])
    assert bearers == ["lender", "shared", "review"]  # the rule language's order
    cells = {(c.old, c.new): c for row in rows for c in row}
    assert cells[("shared", "shared")].css == "diagonal moved"
    assert cells[("lender", "review")].css == "moved"
    assert cells[("review", "lender")].css == ""


def test_chart_bars_scale_from_the_axis() -> None:
    chart = replay_html.money_chart([
        {"jurisdiction": "AZ", "borrower_owes_delta": "-0.01", "lender_absorbs_delta": "0.01"},
        {"jurisdiction": "CA", "borrower_owes_delta": "0.00", "lender_absorbs_delta": "0.00"},
        {"jurisdiction": "NV", "borrower_owes_delta": "1000000.00",
         "lender_absorbs_delta": "-500000.00"}])
    assert [r.jurisdiction for r in chart.rows] == ["AZ", "NV"]  # CA: no money moved
    az, nv = chart.rows
    assert [b.text for b in az.bars] == ["-0.01", "+0.01"]
    assert [b.width for b in nv.bars] == [Decimal("220.0"), Decimal("110.0")]
    assert nv.bars[1].x + nv.bars[1].width == chart.axis_x and nv.bars[1].anchor == "end"
    assert [b.text for b in nv.bars] == ["+1,000,000.00", "-500,000.00"]


def test_page_from_a_hand_made_report() -> None:
    change = {"loan_id": "L&1", "decision_id": "D/1", "jurisdiction": "NV",
              "old": {"bearer": "shared", "action": "a", "borrower_owes": "1.00"},
              "new": {"bearer": "shared", "action": "b", "borrower_owes": "1.00"},
              "rule": {"old": None, "new": "r"}, "fields": ["action"]}
    tally = replay_mod.Tally(evaluated=1, changes=[change])
    tally.transitions[("shared", "shared")] = 1
    tally.by_jurisdiction["NV"] = replay_mod.JurisdictionTally(evaluated=1, changed=1)
    report = replay_mod.ReplayReport("c", {"name": "n", "version": "v", "sha256": "0" * 64},
                                     "s", replay_mod.Filters(), tally)
    tree = parse(replay_html.render_html(report, "https://c.example/base/"))
    assert tree.root.one("a").attrs["href"] == "https://c.example/base/console/decisions/D%2F1"
    assert tree.root.one("td", "loan").text == "L&1"
    assert [td.text for td in tree.root.all("td", "rule")] == ["(none)", "r"]
    assert tree.root.one("td", "diagonal").text == "1"
    assert tree.root.all("svg") == [] and "No money moved." in tree.root.text
