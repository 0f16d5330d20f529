"""The replay report as one self-contained HTML page (`deficiency replay --format html`).

`render_html(report, console_url)` returns the page: the counts and what the log
held, the warnings, the bearer transition matrix (old bearer rows, new bearer
columns, the diagonal marked), the money moved per jurisdiction as an inline SVG
bar chart, the changed decisions capped as in the text report, and the failures.
Each decision links to `{console_url}/console/decisions/{decision_id}`.

The page is built from `report_json`, so it and the JSON always agree. It needs no
network and runs no script: CSS in a <style> element, SVG inline, no external
reference but those links. Every value from the log is escaped (Jinja2 autoescape).
Amounts are shown as exact Decimal text; only the bar lengths are scaled to pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import jinja2

from ..policy.schema import BEARERS
from .replay import ReplayReport, report_json

#: The money fields charted per jurisdiction (JSON key, label, CSS class).
MEASURES = (("borrower_owes_delta", "borrower_owes", "owes"),
            ("lender_absorbs_delta", "lender_absorbs", "absorbs"))

# Bar chart geometry, in pixels: [label | amount text | negative half | axis |
# positive half | amount text]; one row of two bars per jurisdiction.
_LABEL_W, _TEXT_W, _HALF = 56, 116, 220
_AXIS_X = _LABEL_W + _TEXT_W + _HALF
_CHART_W = _AXIS_X + _HALF + _TEXT_W
_TOP, _BAR_H, _ROW_H = 28, 14, 40


def console_link(console_url: str, decision_id: str) -> str:
    """`{console_url}/console/decisions/{decision_id}`; root-relative without a URL."""
    return f"{console_url.rstrip('/')}/console/decisions/{quote(str(decision_id), safe='')}"


def signed(amount: Decimal) -> str:
    """`+126,378.00` / `-1,250.00` / `+0.00`: exact, two decimals, sign always shown."""
    return f"{amount.quantize(Decimal('0.01')):+,.2f}"


# --------------------------------------------------------------------------- matrix


@dataclass(frozen=True)
class Cell:
    old: str
    new: str
    count: int

    @property
    def diagonal(self) -> bool:
        return self.old == self.new

    @property
    def css(self) -> str:
        return " ".join(name for name, on in (("diagonal", self.diagonal),
                                              ("moved", self.count > 0)) if on)


def transition_matrix(transitions: Sequence[dict[str, Any]]) -> tuple[list[str],
                                                                       list[list[Cell]]]:
    """(bearers, rows): one row per old bearer, one cell per new bearer, over the
    bearers that occur on either side, in the rule language's order (others after)."""
    counts = {(t["from"], t["to"]): t["count"] for t in transitions}
    seen = {b for pair in counts for b in pair}
    bearers = [b for b in BEARERS if b in seen] + sorted(seen.difference(BEARERS))
    return bearers, [[Cell(old, new, counts.get((old, new), 0)) for new in bearers]
                     for old in bearers]


# --------------------------------------------------------------------------- chart


@dataclass(frozen=True)
class Bar:
    label: str  # the measure: borrower_owes or lender_absorbs
    css: str
    amount: Decimal
    x: Decimal
    y: int
    width: Decimal
    text_x: Decimal
    anchor: str  # text-anchor of the amount: start right of the axis, end left of it
    height: int = _BAR_H

    @property
    def text(self) -> str:
        return signed(self.amount)


@dataclass(frozen=True)
class ChartRow:
    jurisdiction: str
    y: int  # top of the row
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Chart:
    rows: tuple[ChartRow, ...]
    width: int = _CHART_W
    axis_x: int = _AXIS_X
    top: int = _TOP

    @property
    def height(self) -> int:
        return _TOP + _ROW_H * len(self.rows) + 8


def money_chart(by_jurisdiction: Sequence[dict[str, Any]]) -> Chart:
    """A row per jurisdiction where money moved: a bar per measure from the axis, to
    the right for more (borrowers owe more / lenders absorb more), to the left for less;
    the longest bar is `_HALF` pixels."""
    moved = [(j["jurisdiction"], [Decimal(j[key]) for key, _, _ in MEASURES])
             for j in by_jurisdiction if any(Decimal(j[key]) for key, _, _ in MEASURES)]
    largest = max((abs(a) for _, amounts in moved for a in amounts), default=Decimal(0))
    rows = []
    for n, (code, amounts) in enumerate(moved):
        top = _TOP + n * _ROW_H
        bars = []
        for i, ((_, label, css), amount) in enumerate(zip(MEASURES, amounts, strict=True)):
            width = (abs(amount) * _HALF / largest).quantize(Decimal("0.1"))
            x = Decimal(_AXIS_X) - width if amount < 0 else Decimal(_AXIS_X)
            text_x = x - 4 if amount < 0 else x + width + 4
            bars.append(Bar(label, css, amount, x, top + 4 + i * (_BAR_H + 2), width,
                            text_x, "end" if amount < 0 else "start"))
        rows.append(ChartRow(code, top, tuple(bars)))
    return Chart(tuple(rows))


# --------------------------------------------------------------------------- page


def filters_text(filters: dict[str, Any]) -> str:
    chosen = [f"{label} {filters[key]}" for key, label in (
        ("since", "since"), ("until", "until"), ("ruleset_version", "ruleset version"))
        if filters.get(key)]
    if filters.get("jurisdictions"):
        chosen.append("jurisdiction " + ",".join(filters["jurisdictions"]))
    if filters.get("loan_types"):
        chosen.append("loan type " + ",".join(filters["loan_types"]))
    return "; ".join(chosen) if chosen else "none"


def render_html(report: ReplayReport, console_url: str = "") -> str:
    """The whole page. `console_url` is "" (root-relative links) or an http(s) base URL,
    checked by the caller."""
    doc = report_json(report)
    bearers, matrix = transition_matrix(doc["transitions"])
    window = doc["filters"]["since"] or doc["filters"]["until"]
    return _page().render(
        doc=doc,
        seconds=f"{report.seconds:.1f}",
        unchanged=doc["evaluated"] - doc["changed"],
        share=f"{doc['changed'] / doc['evaluated']:.2%}" if doc["evaluated"] else "",
        held_where="in the time window" if window else "in the whole log",
        filters=filters_text(doc["filters"]),
        bearers=bearers, matrix=matrix,
        chart=money_chart(doc["money"]["by_jurisdiction"]),
        money_rows=[j for j in doc["money"]["by_jurisdiction"] if j["changed"]],
        no_change=[j["jurisdiction"] for j in doc["money"]["by_jurisdiction"]
                   if not j["changed"]],
        not_shown=doc["changed"] - doc["changes_shown"],
        link=lambda decision_id: console_link(console_url, decision_id),
    )


@functools.cache
def _page() -> jinja2.Template:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["count"] = lambda n: f"{n:,}"
    environment.filters["signed"] = lambda money: signed(Decimal(money))
    return environment.from_string(PAGE)


PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Replay: {{ doc.candidate.name }} {{ doc.candidate.version }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #1d232a; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.45em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left;
         vertical-align: top; }
thead th { background: #f3f5f7; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.meta td, .meta th { border: none; padding: .1em .8em .1em 0; }
.muted { color: #59636e; }
.warnings li { color: #8a4b00; }
table.matrix td { text-align: center; min-width: 4.5em; font-variant-numeric: tabular-nums; }
table.matrix td.diagonal { background: #e4e7eb repeating-linear-gradient(
    45deg, transparent 0 4px, #d3d8de 4px 6px); font-style: italic; }
table.matrix td.moved { background: #fff1c2; font-weight: bold; }
table.matrix td.diagonal.moved { background: #e4e7eb; }
svg text { font: 12px system-ui, sans-serif; fill: #1d232a; }
svg .owes { fill: #c2410c; } svg .absorbs { fill: #1d4ed8; }
svg .axis { stroke: #59636e; stroke-width: 1; }
.key { display: inline-block; width: .9em; height: .9em; vertical-align: -.1em; }
.key.owes { background: #c2410c; } .key.absorbs { background: #1d4ed8; }
.wide { overflow-x: auto; }
table.changes td { font-size: .92em; }
table.changes td.loan { white-space: nowrap; }
table.changes td.id a { word-break: break-all; }
code, .id { font-family: ui-monospace, monospace; font-size: .92em; }
</style>
</head>
<body>
<h1>Replay of the audit log against candidate {{ doc.candidate.name }}
{{ doc.candidate.version }}</h1>
<table class="meta">
<tr><th>candidate</th><td>{{ doc.candidate.dir }}
  (sha256 <code>{{ doc.candidate.sha256 }}</code>)</td></tr>
<tr><th>audit log</th><td>{{ doc.store }}</td></tr>
<tr><th>filters</th><td>{{ filters }}</td></tr>
<tr><th>time taken</th><td>{{ seconds }} s</td></tr>
</table>

<h2 id="counts">Counts</h2>
<table class="counts">
<tr><th>recorded decisions read {{ held_where }}</th>
  <td class="n" id="count-scanned">{{ doc.scanned | count }}</td></tr>
<tr><th>replayed (matching the filters, decided again)</th>
  <td class="n" id="count-evaluated">{{ doc.evaluated | count }}</td></tr>
<tr><th>changed</th>
  <td class="n" id="count-changed">{{ doc.changed | count }}
  {%- if share %} <span class="muted">({{ share }})</span>{% endif %}</td></tr>
<tr><th>unchanged</th>
  <td class="n" id="count-unchanged">{{ unchanged | count }}</td></tr>
<tr><th>could not be decided again</th>
  <td class="n" id="count-failed">{{ doc.failed | count }}</td></tr>
</table>
{% if doc.changed %}
<p>Changed fields:
{% for name, n in doc.changed_fields.items() if n %}
{{ name }} {{ n | count }}{{ "," if not loop.last }}
{% endfor %}
</p>
{% endif %}

<h3>Held {{ held_where }}: {{ doc.scanned | count }} recorded decisions</h3>
<p class="muted">Counted before the jurisdiction, loan type and ruleset version
filters: "0 changed" says nothing about what the log does not hold.</p>
<table class="held" id="held-jurisdictions">
<thead><tr><th>jurisdiction</th><th class="n">records</th></tr></thead>
<tbody>
{% for row in doc.held.jurisdictions %}
<tr><td>{{ row.jurisdiction }}</td><td class="n">{{ row.records | count }}</td></tr>
{% else %}
<tr><td colspan="2">none</td></tr>
{% endfor %}
</tbody>
</table>
<table class="held" id="held-loan-types">
<thead><tr><th>loan type</th><th class="n">records</th></tr></thead>
<tbody>
{% for row in doc.held.loan_types %}
<tr><td>{{ row.loan_type }}</td><td class="n">{{ row.records | count }}</td></tr>
{% else %}
<tr><td colspan="2">none</td></tr>
{% endfor %}
</tbody>
</table>

<h2 id="warnings">Warnings</h2>
{% if doc.warnings %}
<ul class="warnings">
{% for warning in doc.warnings %}
<li>{{ warning }}</li>
{% endfor %}
</ul>
{% else %}
<p class="muted">None.</p>
{% endif %}

<h2 id="transitions">Bearer transitions (changed decisions)</h2>
{% if bearers %}
<table class="matrix">
<thead>
<tr><th>old \\ new</th>{% for new in bearers %}<th scope="col">{{ new }}</th>{% endfor %}</tr>
</thead>
<tbody>
{% for row in matrix %}
<tr><th scope="row">{{ row[0].old }}</th>
{% for cell in row %}
<td data-from="{{ cell.old }}" data-to="{{ cell.new }}"
  {%- if cell.css %} class="{{ cell.css }}"{% endif %}
  {%- if cell.diagonal %} title="bearer unchanged"{% endif %}>
  {{- cell.count | count if cell.count }}</td>
{% endfor %}
</tr>
{% endfor %}
</tbody>
</table>
<p class="muted">Rows: the bearer as recorded; columns: the candidate's. The shaded
diagonal counts changed decisions that kept their bearer (another field changed).</p>
{% else %}
<p class="muted">No decision changed.</p>
{% endif %}

<h2 id="money">Money moved by jurisdiction</h2>
<p class="muted">New &minus; old; + means borrowers owe more.
<span class="key owes"></span> borrower_owes
<span class="key absorbs"></span> lender_absorbs</p>
{% if chart.rows %}
<svg class="chart" width="{{ chart.width }}" height="{{ chart.height }}"
  viewBox="0 0 {{ chart.width }} {{ chart.height }}" role="img"
  aria-label="money moved by jurisdiction">
<line class="axis" x1="{{ chart.axis_x }}" y1="{{ chart.top - 6 }}"
  x2="{{ chart.axis_x }}" y2="{{ chart.height - 4 }}"/>
<text x="{{ chart.axis_x }}" y="{{ chart.top - 12 }}" text-anchor="middle">0</text>
{% for row in chart.rows %}
<g class="jurisdiction" data-jurisdiction="{{ row.jurisdiction }}">
<text class="label" x="0" y="{{ row.y + 20 }}">{{ row.jurisdiction }}</text>
{% for bar in row.bars %}
<rect class="bar {{ bar.css }}" data-measure="{{ bar.label }}" x="{{ bar.x }}"
  y="{{ bar.y }}" width="{{ bar.width }}" height="{{ bar.height }}">
  <title>{{ row.jurisdiction }} {{ bar.label }} {{ bar.text }}</title></rect>
<text class="amount" data-measure="{{ bar.label }}" x="{{ bar.text_x }}"
  y="{{ bar.y + 11 }}" text-anchor="{{ bar.anchor }}">{{ bar.text }}</text>
{% endfor %}
</g>
{% endfor %}
</svg>
{% else %}
<p>No money moved.</p>
{% endif %}
<table class="money">
<thead><tr><th>jurisdiction</th><th class="n">replayed</th><th class="n">changed</th>
<th class="n">borrower_owes</th><th class="n">lender_absorbs</th></tr></thead>
<tbody>
{% for j in money_rows %}
<tr><td>{{ j.jurisdiction }}</td><td class="n">{{ j.evaluated | count }}</td>
<td class="n">{{ j.changed | count }}</td>
<td class="n">{{ j.borrower_owes_delta | signed }}</td>
<td class="n">{{ j.lender_absorbs_delta | signed }}</td></tr>
{% endfor %}
<tr class="total"><th>total</th><td class="n">{{ doc.evaluated | count }}</td>
<td class="n">{{ doc.changed | count }}</td>
<td class="n">{{ doc.money.borrower_owes_delta | signed }}</td>
<td class="n">{{ doc.money.lender_absorbs_delta | signed }}</td></tr>
</tbody>
</table>
{% if no_change %}
<p class="muted">No change in: {{ no_change | join(", ") }}.</p>
{% endif %}

<h2 id="changes">Changed decisions</h2>
{% if doc.changes %}
<p>In log order
{%- if not_shown %}, the first {{ doc.changes_shown | count }} of {{ doc.changed | count }}
{%- endif %}.
The rule is the one that decided the bearer.</p>
<div class="wide"><table class="changes">
<thead>
<tr><th rowspan="2">loan</th><th rowspan="2">decision</th><th rowspan="2">jur</th>
<th colspan="4">recorded</th><th colspan="4">candidate</th><th rowspan="2">changed</th></tr>
<tr><th>bearer</th><th>action</th><th class="n">borrower_owes</th><th>rule</th>
<th>bearer</th><th>action</th><th class="n">borrower_owes</th><th>rule</th></tr>
</thead>
<tbody>
{% for ch in doc.changes %}
<tr class="change">
<td class="id loan">{{ ch.loan_id }}</td>
<td class="id"><a href="{{ link(ch.decision_id) }}">{{ ch.decision_id }}</a></td>
<td>{{ ch.jurisdiction }}</td>
{% for side in ("old", "new") %}
<td class="bearer">{{ ch[side].bearer }}</td><td>{{ ch[side].action }}</td>
<td class="n">{{ ch[side].borrower_owes }}</td><td class="rule">{{ ch.rule[side] or "(none)" }}</td>
{% endfor %}
<td>{{ ch.fields | join(", ") }}</td>
</tr>
{% endfor %}
</tbody>
</table></div>
{% endif %}
{% if not_shown and doc.changes %}
<p class="not-shown">{{ not_shown | count }} more not listed: <code>--limit N</code>
lists the first N, <code>--all</code> lists every one.</p>
{% elif not_shown %}
<p class="not-shown">{{ not_shown | count }} not listed: <code>--limit N</code> or
<code>--all</code> lists them.</p>
{% elif not doc.changed %}
<p class="muted">None.</p>
{% endif %}

{% if doc.failures %}
<h2 id="failures">Could not be decided again</h2>
<table class="failures">
<thead><tr><th>loan</th><th>decision</th><th>error</th></tr></thead>
<tbody>
{% for x in doc.failures %}
<tr><td class="id">{{ x.loan_id }}</td>
<td class="id"><a href="{{ link(x.decision_id) }}">{{ x.decision_id }}</a></td>
<td>{{ x.error }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
<p class="muted">deficiency replay, report schema {{ doc.schema }}.</p>
</body>
</html>
"""
