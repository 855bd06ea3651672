"""The one timing discipline every benchmark follows.

- both sides do the same work on the same inputs with the same parallelism, and each says
  in one line what it does (``Side.does``);
- both are warmed up (imports, page cache, lazily built tables) before any round is timed;
- rounds alternate (A B, B A, A B, ...), so drift in a noisy machine's load hits both;
- at least five rounds; a figure is the median of the per-round ratios (each round's pair
  of runs is close in time) with their min-max, next to each side's median seconds;
- every benchmark prints one machine-readable line per figure (``XDS-BENCH {json}``) with
  its ratio and its goal, and exits 0 whether or not the goal is met: a missed goal is
  printed as missed, never hidden behind an exit code.

``python -m benchmarks`` runs them all and turns those lines into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_ROUNDS = 5
PREFIX = "XDS-BENCH "


@dataclass
class Side:
    """One side of a comparison: what it does in one line, and the call that does it."""

    does: str
    run: Callable[[], object]
    setup: Callable[[], object] | None = None  # untimed, before every run (clear a target)
    seconds: list[float] = field(default_factory=list)
    result: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def timed(self) -> float:
        if self.setup is not None:
            self.setup()
        start = time.perf_counter()
        self.result = self.run()
        return time.perf_counter() - start


def compare(sides: dict[str, Side], rounds: int = MIN_ROUNDS, warmup: int = 1) -> dict[str, Side]:
    """Warm every side, then time ``rounds`` alternating rounds; returns ``sides`` filled."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name].timed()
    for r in range(max(rounds, 1)):
        for name in names if r % 2 == 0 else reversed(names):
            sides[name].seconds.append(sides[name].timed())
    return sides


@dataclass(frozen=True)
class Ratio:
    """Per-round ratios of two sides (``a`` / ``b``): median and range."""

    median: float
    low: float
    high: float

    def text(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def seconds(side: Side) -> Ratio:
    """A side's own time: median and range over its rounds."""
    return Ratio(side.median, min(side.seconds), max(side.seconds))


def ratio(a: Side, b: Side) -> Ratio:
    """``a``'s time over ``b``'s, round by round (rounds pair runs close in time)."""
    values = [x / y for x, y in zip(a.seconds, b.seconds, strict=True)]
    return Ratio(statistics.median(values), min(values), max(values))


def speedup(a: Side, b: Side) -> Ratio:
    """How many times faster ``a`` is than ``b``, round by round."""
    values = [y / x for x, y in zip(a.seconds, b.seconds, strict=True)]
    return Ratio(statistics.median(values), min(values), max(values))


def met(value: float, goal: str) -> bool:
    """Whether ``value`` meets a goal written as ``<= 1.2`` or ``>= 10``."""
    op, _, number = goal.partition(" ")
    target = float(number.rstrip("x%"))
    return value <= target if op == "<=" else value >= target


def report(
    benchmark: str,
    figure: str,
    *,
    ours: str,
    baseline: str,
    value: Ratio | float,
    goal: str | None,
    unit: str = "x",
    parallelism: str = "",
    rounds: int | None = None,
    ours_s: float | None = None,
    baseline_s: float | None = None,
    note: str = "",
) -> dict:
    """Print a figure as one human line and one ``XDS-BENCH`` JSON line; returns the record.

    ``value`` is a :class:`Ratio` (timed figures) or a plain number (accuracies, rates).
    """
    if isinstance(value, Ratio):
        median, low, high = value.median, value.low, value.high
    else:
        median = low = high = float(value)
    ok = met(median, goal) if goal else None
    record = {
        "benchmark": benchmark,
        "figure": figure,
        "ours": ours,
        "baseline": baseline,
        "value": round(median, 4),
        "low": round(low, 4),
        "high": round(high, 4),
        "unit": unit,
        "goal": goal,
        "met": ok,
        "parallelism": parallelism,
        "rounds": rounds,
        "ours_s": None if ours_s is None else round(ours_s, 4),
        "baseline_s": None if baseline_s is None else round(baseline_s, 4),
        "note": note,
    }
    shown = f"{median:.2f}{unit}" if low == high else f"{median:.2f}{unit} ({low:.2f}-{high:.2f})"
    verdict = "" if ok is None else ("  goal " + goal + (": met" if ok else ": MISSED"))
    print(f"{figure}: {shown}{verdict}")
    print(PREFIX + json.dumps(record), flush=True)
    return record


def timed_report(benchmark: str, figure: str, ours: Side, base: Side, *, goal: str | None,
                 faster: bool = False, parallelism: str = "", note: str = "") -> dict:  # fmt: skip
    """:func:`report` for two compared sides: ``ours / base`` time, or the speed-up."""
    value = speedup(ours, base) if faster else ratio(ours, base)
    print(f"  ours     {ours.median * 1e3:10.1f} ms median  ({ours.does})")
    print(f"  baseline {base.median * 1e3:10.1f} ms median  ({base.does})")
    return report(
        benchmark,
        figure,
        ours=ours.does,
        baseline=base.does,
        value=value,
        goal=goal,
        parallelism=parallelism,
        rounds=len(ours.seconds),
        ours_s=ours.median,
        baseline_s=base.median,
        note=note,
    )
