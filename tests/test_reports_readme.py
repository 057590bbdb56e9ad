"""The findings table in reports/README.md quotes only what the committed reports print.

Each row of the table links its report (`[name](name.md)`, and may link others it quotes
from). Every decimal number in the row must be a number of a linked report up to rounding
(0.802 may come from 0.8017), with the sign the report gives it when the row gives one, and
a number quoted as a time (`0.30 s`, `6.3 ms`) must be a time in that unit in the report.
Figures measured outside the reports belong in the note below the table, not in a row.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"
README = REPORTS / "README.md"

LINK = re.compile(r"\[([\w-]+)\]\(([\w-]+)\.md\)")
# A decimal that is not part of a version (2.14.1), a longer number or an exponent's mantissa.
_DECIMAL = r"(\d+\.\d+)(?!\d|\.\d|[eE][-+]?\d)"
# The reports write signs in ASCII; the findings use U+2212 for minus, so a hyphen between
# two numbers there is a range, never a sign.
REPORT_NUMBER = re.compile(r"(?<![\w.])([-+]?)" + _DECIMAL)
QUOTED_NUMBER = re.compile(r"(?<![\w.])([−+]?)" + _DECIMAL)
_UNIT = r"\s*(ms|s)\b"
# `0.12-0.59 s`, `0.4 → 1.3 ms`, `17.9 / 34.8 s`: every number of the chain carries the unit.
QUOTED_TIME = re.compile(r"(?<![\w.])\d+\.\d+(?:\s*(?:-|–|→|to|/)\s*\d+\.\d+)*" + _UNIT)
REPORT_TIME = re.compile(r"(?<![\w.])" + _DECIMAL + _UNIT)

# (report, number) -> why a row may quote a number that its reports do not print.
ALLOWED: dict[tuple[str, str], str] = {}


def findings_rows(text: str) -> list[str]:
    """The rows of the `| study | finding |` table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| study | finding |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def linked_reports(row: str) -> list[str]:
    names = [target for _, target in LINK.findall(row)]
    return list(dict.fromkeys(names))


def _roundings(value: str) -> set[str]:
    """`value` and every rounding of it to fewer decimals, half up and half to even."""
    d = Decimal(value)
    places = len(value.split(".")[1])
    out = {value}
    for p in range(places):
        step = Decimal(1).scaleb(-p)
        out |= {str(d.quantize(step, rounding=mode)) for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN)}
    return out


def _unit(header: str) -> str | None:
    if re.search(r"\bms\b", header):
        return "ms"
    if re.search(r"(^|\s)s(\s|$)|\bs per\b", header.strip()):
        return "s"
    return None


@cache
def report_numbers(name: str) -> tuple[frozenset, frozenset]:
    """What the report prints: {(sign, value)} (sign "" stands for any sign) and
    {(unit, value)} for times, each value with all its roundings."""
    text = (REPORTS / f"{name}.md").read_text()
    numbers: set[tuple[str, str]] = set()
    for sign, value in REPORT_NUMBER.findall(text):
        for v in _roundings(value):
            numbers |= {("", v), (sign, v)}
    times: set[tuple[str, str]] = set()
    for value, unit in REPORT_TIME.findall(text):
        times |= {(unit, v) for v in _roundings(value)}
    header: list[str | None] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = [_unit(c) for c in cells]
        elif not set(line) <= set("|-: "):
            for unit, cell in zip(header, cells):
                if unit:
                    times |= {
                        (unit, v) for _, value in REPORT_NUMBER.findall(cell) for v in _roundings(value)
                    }
    return frozenset(numbers), frozenset(times)


def unsupported(row: str, reports: list[str]) -> list[str]:
    """The numbers of `row` that none of `reports` prints (up to rounding, sign and unit)."""
    numbers: set = set()
    times: set = set()
    for name in reports:
        n, t = report_numbers(name)
        numbers |= n
        times |= t
    missing = []
    for sign, value in QUOTED_NUMBER.findall(row):
        key = ({"−": "-", "+": "+"}.get(sign, ""), value)
        if key not in numbers and not any((r, value) in ALLOWED for r in reports):
            missing.append(sign + value)
    for match in QUOTED_TIME.finditer(row):
        unit = match.group(1)
        for value in re.findall(r"\d+\.\d+", match.group(0)):
            if (unit, value) not in times:
                missing.append(f"{value} {unit}")
    return missing


ROWS = findings_rows(README.read_text())


def test_the_table_has_one_row_per_committed_report():
    firsts = [linked_reports(row)[0] for row in ROWS]
    committed = sorted(p.stem for p in REPORTS.glob("*.md") if p.name != "README.md")
    assert sorted(firsts) == committed


@pytest.mark.parametrize("row", ROWS, ids=[linked_reports(r)[0] for r in ROWS])
def test_every_number_of_a_row_is_in_a_report_it_links(row):
    reports = linked_reports(row)
    for name in reports:
        assert (REPORTS / f"{name}.md").exists(), f"the row links {name}.md, which is not committed"
    missing = unsupported(row, reports)
    assert not missing, f"{reports[0]}: not in {', '.join(r + '.md' for r in reports)}: {missing}"


def test_a_rounded_number_is_found_and_an_invented_one_is_not():
    # headline prints the classifier's MAP@10 as 0.5947 and no number that rounds to 0.611.
    assert unsupported("classifier 0.595 (0.59)", ["headline"]) == []
    assert unsupported("classifier 0.611", ["headline"]) == ["0.611"]


def test_a_signed_difference_must_have_the_reports_sign():
    # headline: the atomic multitask DSI minus the classifier is -0.1005 [-0.1789, -0.0256].
    assert unsupported("Δ −0.101 [−0.179, −0.026]", ["headline"]) == []
    assert unsupported("Δ +0.101", ["headline"]) == ["+0.101"]


def test_a_time_must_be_a_time_in_that_unit():
    # latency_scaling prints a DSI's add cost as 83.441 to 590.555 ms per image; 0.12 is only
    # a slope there (0.124), so "0.12 s" is not supported while the ms figures are.
    assert unsupported("a DSI costs 0.12-0.59 s per added image", ["latency_scaling"]) == ["0.12 s", "0.59 s"]
    assert unsupported("a DSI costs 83.4-590.6 ms per added image", ["latency_scaling"]) == []
