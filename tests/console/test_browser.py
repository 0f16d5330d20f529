"""The console driven in a real headless Chromium against the real server: what an
examiner and a policy author do, and what must not work (a forged CSRF token, an
expired session, a key without the scope, a loan id carrying a script)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from tests.api.servers import ROOT

from .conftest import (
    CA_TRUSTEE_SALE,
    IDLE_MINUTES,
    SCRIPT_LOAN_ID,
    Chromium,
    Console,
    bearer,
    screenshot,
    sign_in,
)

WATERFALL_STEPS = ("debt", "costs", "credits", "claim", "proceeds", "deficiency")


def _watch_for_trouble(page: Any) -> list[str]:
    """Every dialog (a script ran) and every console error (e.g. a CSP violation), but
    the status of a page the test means to get (a form refused with 400)."""
    seen: list[str] = []
    page.on("dialog", lambda d: (seen.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None)
    return seen


def test_an_examiner_signs_in_searches_and_reads_a_decisions_amounts(
        console: Console, browser: Any) -> None:
    page = browser.new_page()
    trouble = _watch_for_trouble(page)
    sign_in(page, console.base, "examiner")
    assert page.url.endswith("/console/decisions")
    assert page.locator("header .who strong").inner_text() == "examiner"
    assert page.locator("table.results tbody tr").count() == len(console.decisions)
    screenshot(page, "decisions")

    page.fill("input[name=loan_id]", "CAR-OH-2")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table.results tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("a.loan").inner_text() == "CAR-OH-2"

    rows.first.locator("a.loan").click()
    page.wait_for_load_state()
    car = console.decisions["car"]
    assert page.url.endswith(f"/console/decisions/{car['decision_id']}")
    api = requests.get(f"{console.base}/v1/decisions/{car['decision_id']}",
                       headers=bearer("examiner"), timeout=10).json()
    # The waterfall's numbers, as drawn, are the API's amounts.
    for step in WATERFALL_STEPS:
        bar = page.locator(f"figure.waterfall g[data-step={step}]")
        assert bar.get_attribute("data-amount") == api["amounts"][step], step
        shown = bar.locator("text.amount").text_content() or ""
        assert Decimal(shown.lstrip("+−$").replace(",", "")) == Decimal(api["amounts"][step])
    owes = page.locator("figure.waterfall g[data-step=borrower_owes] text.amount"
                        ).text_content() or ""
    assert Decimal(owes.lstrip("$").replace(",", "")) == Decimal(api["outcome"]["borrower_owes"])
    assert page.locator("#bearer").inner_text() == api["outcome"]["bearer"]
    assert page.locator("ul.explanation li").count() == len(api["explanation"])
    assert page.locator("#receipt-check").inner_text().startswith("✓ leaf")
    screenshot(page, "decision")
    assert trouble == []


def test_the_overridden_rule_and_why_another_rule_did_not_apply(
        console: Console, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "examiner",
            then=f"/console/decisions/{console.decisions['ca']['decision_id']}")
    overridden = page.locator("table.trace tr.overridden[data-rule=mortgage-recourse-default]")
    assert "overridden by non-judicial-bar" in overridden.inner_text()
    applied = page.locator("table.trace tr.applied[data-rule=non-judicial-bar]")
    assert applied.count() == 1
    why = page.locator("table.why-not tr[data-rule=ca-580b-purchase-money] td.why").inner_text()
    assert why == ("ca-580b-purchase-money: collateral.owner_occupied is false, "
                   "the rule needs true")
    # The ruleset link leads to its page: rules, source with line numbers, check, tests.
    page.click("text=" + console.decisions["ca"]["ruleset"]["version"])
    page.wait_for_load_state()
    assert page.locator("#rule-non-judicial-bar").count() == 1
    assert "passes" in page.locator("#check + p, #check ~ p.ok").first.inner_text()
    assert "passed, 0 failed" in page.locator("#tests-summary").inner_text()
    page.locator("#rule-non-judicial-bar a").click()
    assert "non-judicial-bar" in page.locator("pre.source .line:target").inner_text()
    screenshot(page, "ruleset")


def test_a_policy_author_decides_in_the_playground_without_recording(
        console: Console, browser: Any) -> None:
    page = browser.new_page()
    trouble = _watch_for_trouble(page)
    sign_in(page, console.base, "author", then="/console/playground")
    size_before = console.tree_size()
    form = page.locator("form.facts-form")
    form.locator("select[name=jurisdiction]").select_option("CA")
    form.locator("input[name='loan.id']").fill("TRY-1")
    form.locator("select[name='loan.type']").select_option("mortgage")
    form.locator("input[name='loan.unpaid_balance']").fill("300000.00")
    form.locator("select[name='loan.purchase_money']").select_option("true")
    form.locator("select[name='collateral.kind']").select_option("dwelling")
    form.locator("input[name='collateral.dwelling_units']").fill("1")
    form.locator("select[name='collateral.owner_occupied']").select_option("true")
    form.locator("select[name='disposition.method']").select_option("judicial_foreclosure")
    form.locator("input[name='disposition.date']").fill("2026-06-01")
    form.locator("input[name='disposition.proceeds']").fill("260000.00")
    page.click("#decide-form")
    page.wait_for_load_state()
    assert page.locator("#bearer").inner_text() == "lender"
    assert "ca-580b-purchase-money" in page.locator("dl.facts-grid").first.inner_text()
    assert page.locator("figure.waterfall g[data-step=deficiency]").get_attribute(
        "data-amount") == "40000.00"
    assert page.locator("table.why-not tr").count() > 5
    # Never recorded.
    assert console.tree_size() == size_before
    screenshot(page, "playground")

    # The same facts as JSON, with a mistake: the error names the field.
    facts = json.loads(page.locator("#facts_json").input_value())
    facts["loan"]["unpaid_balance"] = "lots"
    page.fill("#facts_json", json.dumps(facts))
    page.click("#decide-json")
    page.wait_for_load_state()
    assert "loan.unpaid_balance" in page.locator("#playground-errors").inner_text()
    assert console.tree_size() == size_before
    assert trouble == []


def test_an_examiner_downloads_a_bundle_that_checks_anywhere(
        console: Console, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "examiner",
            then=f"/console/decisions/{console.decisions['short_sale']['decision_id']}")
    with page.expect_download() as info:
        page.click("#bundle-link")
    target = tmp_path / "bundle.json"
    info.value.save_as(target)
    checked = subprocess.run([sys.executable, "-m", "service.cli", "audit", "check-bundle",
                              str(target)], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "BUNDLE HOLDS" in checked.stdout


def test_the_log_page_verifies_the_log_on_request(console: Console, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "examiner", then="/console/log")
    assert int(page.locator("#tree-size").inner_text()) == console.tree_size()
    assert page.locator("#verifier-key").inner_text().startswith("deficiency-service/audit+")
    assert page.locator("#checkpoint").inner_text().startswith("deficiency-service/audit\n")
    screenshot(page, "log")
    page.click("#verify")
    page.wait_for_load_state()
    assert page.locator("#verify-result").inner_text().startswith("✓ The log holds")


def test_sign_out_ends_the_session(console: Console, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "examiner")
    page.click("header .who button")
    page.wait_for_load_state()
    assert "/console/sign-in" in page.url
    assert "signed out" in page.locator("p.notice").inner_text()
    page.goto(console.base + "/console/decisions")
    assert "/console/sign-in" in page.url


def test_a_forged_csrf_token_is_refused(console: Console, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "author", then="/console/playground")
    size_before = console.tree_size()
    page.locator("form.json-form input[name=csrf_token]").evaluate(
        "input => { input.value = 'forged-' + input.value.slice(7); }")
    page.fill("#facts_json", json.dumps(CA_TRUSTEE_SALE))
    page.click("#decide-json")
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Form not accepted"
    assert "CSRF token" in page.locator("p.error").inner_text()
    assert page.locator("#bearer").count() == 0
    # Signing out with a forged token does not sign out either.
    page.goto(console.base + "/console/decisions")
    page.locator("header .who input[name=csrf_token]").evaluate("i => { i.value = 'x'; }")
    page.click("header .who button")
    page.goto(console.base + "/console/decisions")
    assert page.url.endswith("/console/decisions")
    assert console.tree_size() == size_before


def test_an_expired_session_asks_for_the_key_again(console: Console, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "examiner")
    cookie = next(c for c in browser.cookies() if c["name"] == "deficiency_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The same session, last used longer ago than the idle limit (signed with the
    # server's own secret, as a browser that kept the cookie would still hold it).
    app = Flask("forger")
    app.secret_key = (console.data / "console-session-key").read_bytes().strip()
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    session = serializer.loads(cookie["value"])
    assert session["key"] == "examiner" and "api" not in json.dumps(session).lower()
    session["seen"] = int(time.time()) - IDLE_MINUTES * 60 - 5
    browser.add_cookies([{**cookie, "value": serializer.dumps(session)}])
    page.goto(console.base + "/console/decisions")
    assert "/console/sign-in" in page.url
    assert f"after {IDLE_MINUTES} minutes without activity" in page.locator(
        "p.notice").inner_text()


def test_a_key_without_the_scope_is_shown_what_it_lacks(console: Console,
                                                        browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, console.base, "decider")
    assert page.locator("h1").inner_text() == "Not allowed"
    assert "lacks the scope 'audit:read'" in page.locator("p.error").inner_text()
    page.goto(console.base + "/console/playground")
    assert page.locator("#decide-form").count() == 1

    other = browser.new_page()
    page.click("header .who button")
    sign_in(other, console.base, "examiner", then="/console/playground")
    assert "lacks the scope 'decide'" in other.locator("p.error").inner_text()


def test_a_loan_id_carrying_a_script_is_shown_as_text(console: Console, browser: Any) -> None:
    page = browser.new_page()
    trouble = _watch_for_trouble(page)
    sign_in(page, console.base, "examiner")
    page.goto(console.base + "/console/decisions?loan_id=" + requests.utils.quote(
        SCRIPT_LOAN_ID))
    link = page.locator("table.results a.loan")
    assert link.inner_text() == SCRIPT_LOAN_ID
    link.click()
    page.wait_for_load_state()
    assert page.locator("h1 .loan").inner_text() == SCRIPT_LOAN_ID
    assert page.locator("script").count() == 0
    assert "&lt;script&gt;" in page.content()
    assert trouble == []


def test_reading_pages_work_with_javascript_off(console: Console, chromium: Chromium) -> None:
    signed_in = chromium.launch()
    sign_in(signed_in.new_page(), console.base, "examiner")
    # Another Chromium, scripts off, carrying the signed-in session.
    context = chromium.launch(javascript=False)
    context.add_cookies(signed_in.cookies())
    page = context.new_page()
    page.goto(console.base + "/console/decisions?jurisdiction=CA")
    assert page.locator("table.results tbody tr").count() == 1
    page.locator("table.results a.loan").click()
    page.wait_for_load_state()
    assert page.locator("table.why-not tr").count() > 5
    page.goto(console.base + "/console/rulesets")
    page.locator("#active-ruleset").click()
    page.wait_for_load_state()
    assert page.locator("pre.source .line").count() > 100
    page.goto(console.base + "/console/log")
    assert page.locator("#tree-size").inner_text() == str(console.tree_size())
