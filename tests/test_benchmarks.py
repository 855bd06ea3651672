"""The benchmark discipline (benchmarks/timing.py) and the report the runner writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks import __main__ as runner
from benchmarks.timing import PREFIX, Side, compare, met, ratio, report, speedup

ROOT = Path(__file__).resolve().parent.parent


def test_both_sides_are_warmed_and_rounds_alternate():
    calls = []
    sides = {
        "a": Side("a", lambda: calls.append("a")),
        "b": Side("b", lambda: calls.append("b")),
    }
    compare(sides, rounds=5, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert len(sides["a"].seconds) == len(sides["b"].seconds) == 5  # the warm-up is not timed


def test_ratios_pair_rounds_and_goals_read_both_ways():
    a, b = Side("a", lambda: None), Side("b", lambda: None)
    a.seconds, b.seconds = [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]
    r = ratio(a, b)
    assert (r.median, r.low, r.high) == (1.0, 0.5, 1.5)
    assert speedup(a, b).median == 1.0
    assert speedup(a, b).high == 2.0
    assert met(1.1, "<= 1.2")
    assert not met(1.3, "<= 1.2")
    assert met(12, ">= 10")
    assert not met(9.9, ">= 10")


def test_a_missed_goal_is_printed_as_missed_in_both_forms(capsys):
    a, b = Side("x", lambda: None), Side("y", lambda: None)
    a.seconds, b.seconds = [3.0] * 5, [1.0] * 5
    record = report("demo", "fig", ours="x", baseline="y", value=ratio(a, b), goal="<= 1.2")
    out = capsys.readouterr().out
    assert "MISSED" in out
    line = next(ln for ln in out.splitlines() if ln.startswith(PREFIX))
    assert json.loads(line[len(PREFIX) :]) == record
    assert record["met"] is False


def test_doc_and_readme_tables_come_from_the_same_records(tmp_path):
    records = [
        {"benchmark": "b", "figure": "f1", "ours": "o", "baseline": "base", "value": 1.5,
         "low": 1.2, "high": 1.9, "unit": "x", "goal": "<= 1.2", "met": False,
         "parallelism": "2 each", "rounds": 5, "ours_s": 1.0, "baseline_s": 0.7, "note": ""},
        {"benchmark": "b", "figure": "f2", "ours": "o", "baseline": "base", "value": 0.0,
         "low": 0.0, "high": 0.0, "unit": "", "goal": None, "met": None,
         "parallelism": "", "rounds": None, "ours_s": None, "baseline_s": None, "note": "n"},
    ]  # fmt: skip
    doc, readme = tmp_path / "b.md", tmp_path / "README.md"
    readme.write_text(f"# x\n{runner.README_START}\nold\n{runner.README_END}\nrest\n")
    runner.write_doc(doc, records, [("b", 3.0, None)], quick=True, hardware="cpu",
                     loads=("1", "2"))  # fmt: skip
    assert runner.write_readme(readme, records, doc="b.md")
    text = readme.read_text()
    assert "old" not in text
    assert text.endswith("rest\n")
    assert "| f1 | 1.50x (1.20-1.90) | <= 1.2 | **missed** |" in text
    assert "f2" not in text  # the README lists the figures with a goal
    assert "1.50x (1.20-1.90)" in doc.read_text()
    assert "**quick sizes**" in doc.read_text()


def test_the_readme_shows_what_docs_benchmarks_md_says():
    """The README's table is the goal rows of docs/benchmarks.md, value for value."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(runner.README_START) : readme.index(runner.README_END)]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows, "the README has no benchmark table: run python -m benchmarks"
    doc_rows = {}
    for ln in doc.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) == 9 and cells[6] not in ("-", "goal", "---"):
            doc_rows[cells[0]] = (cells[4], cells[6], cells[7])
    for ln in rows:
        figure, value, goal, verdict = [c.strip() for c in ln.strip("|").split("|")]
        assert doc_rows[figure] == (value, goal, verdict), figure
    assert len(rows) == len(doc_rows)
    assert re.search(r"Machine: .+ cores", doc)
