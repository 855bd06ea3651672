"""Run every benchmark and write docs/benchmarks.md (and the README's short table).

    python -m benchmarks [--quick] [--only metrics,splits] [--out docs/benchmarks.md]
        [--readme README.md] [--logs DIR]

Each benchmark runs in its own process (``python -m benchmarks.NAME``), one after the
other, so none shares the machine with another. Each prints ``XDS-BENCH {json}`` lines
(benchmarks/timing.py); this runner collects them into one table, one row per figure: what
is measured, what the baseline does, the ratio (median and min-max over the rounds), the
goal and whether it was met, with the machine's description and load. ``--quick`` runs the
laptop sizes (minutes, not tens of minutes); figures from a quick run say so. A benchmark
that fails is listed as failed with its last output line; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .timing import PREFIX

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "metrics",
    "splits",
    "catalog_query",
    "export",
    "synth",
    "ingest_dicom",
    "real_dicom",
    "near_duplicates",
    "qc",
    "pacs_pull",
)
"""Run by default, in this order. Training benchmarks (crossseq, pseudo) take tens of
minutes to hours and report accuracy, not speed; they are run by hand (docs/pseudo.md)."""
README_START = "<!-- benchmarks:start (written by python -m benchmarks) -->"
README_END = "<!-- benchmarks:end -->"


def machine() -> str:
    """One line: CPU, cores, memory, OS, Python and the packages the figures depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kb / 2**20:.0f} GiB memory"
    except (OSError, AttributeError):
        pass
    versions = []
    for name in ("torch", "duckdb", "deltalake", "monai", "scipy", "dcm2niix"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; " + ", ".join(versions)
    )


def load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def run_one(name: str, quick: bool, logs: Path) -> tuple[list[dict], float, str | None]:
    """Run ``benchmarks.NAME``; its records, wall seconds and an error line or None."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    records, tail = [], []
    log = logs / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)  # fmt: skip
        for line in proc.stdout:
            out.write(line)
            if line.startswith(PREFIX):
                records.append(json.loads(line[len(PREFIX) :]))
            else:
                print("   " + line, end="", flush=True)
                if line.strip():
                    tail = [line.strip()]
        code = proc.wait()
    seconds = time.perf_counter() - started
    error = None if code == 0 else f"exit {code}: {tail[0] if tail else 'no output'}"
    return records, seconds, error


def _value(r: dict) -> str:
    unit = r.get("unit", "x")
    fmt = ".3f" if unit == "" else ".2f"
    if r["low"] == r["high"]:
        return f"{r['value']:{fmt}}{unit}"
    return f"{r['value']:{fmt}}{unit} ({r['low']:{fmt}}-{r['high']:{fmt}})"


def _met(r: dict) -> str:
    return "-" if r["met"] is None else ("met" if r["met"] else "**missed**")


def table(records: list[dict], *, short: bool = False) -> list[str]:
    if short:
        head = ["| figure | value (median, min-max) | goal | |", "|---|---|---|---|"]
        rows = [
            f"| {r['figure']} | {_value(r)} | {r['goal'] or '-'} | {_met(r)} |"
            for r in records
            if r["goal"]
        ]
        return head + rows
    head = [
        "| figure | xds does | baseline does | parallelism | value (median, min-max) | rounds "
        "| goal | | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        f"| {r['figure']} | {r['ours']} | {r['baseline']} | {r['parallelism'] or '-'} | "
        f"{_value(r)} | {r['rounds'] or '-'} | {r['goal'] or '-'} | {_met(r)} | "
        f"{r['note'] or ''} |"
        for r in records
    ]
    return head + rows


def write_doc(path: Path, records, runs, *, quick: bool, hardware: str, loads) -> None:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    missed = [r for r in records if r["met"] is False]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks{' --quick' if quick else ''}` on {when}"
        + (" (**quick sizes**: laptop-sized inputs, fixed costs weigh more)." if quick else "."),
        "Do not edit by hand: run it again. Every comparison follows benchmarks/timing.py: the "
        "same inputs and parallelism on both sides, both warmed up, alternating rounds, the "
        "median of the per-round ratios with their min-max. A figure with a `<=` goal is xds's "
        "time over the baseline's; one with a `>=` goal is a speed-up (the baseline's time "
        "over xds's). Figures without a unit are fractions (accuracies, error rates); "
        "`xds does` and `baseline does` say what each side's timer holds.",
        "",
        f"Machine: {hardware}.",
        f"Load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        *table(records),
        "",
        f"Goals met: {sum(r['met'] is True for r in records)}; missed: {len(missed)}"
        + (" (" + "; ".join(r["figure"] for r in missed) + ")." if missed else "."),
        "",
        "| benchmark | wall time | status |",
        "|---|---|---|",
        *[f"| {name} | {sec:.0f} s | {err or 'ok'} |" for name, sec, err in runs],
        "",
    ]
    path.write_text("\n".join(lines))


def write_readme(path: Path, records, *, doc: str) -> bool:
    """Replace the README's table between the markers; False when it has none."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    block = "\n".join(["", *table(records, short=True), "", f"All figures: [{doc}]({doc}).", ""])
    path.write_text(text[:start] + block + text[end:])
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="laptop sizes")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="README whose marked table is rewritten ('-' for none)")  # fmt: skip
    parser.add_argument("--logs", type=Path, help="folder for each benchmark's full output")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if not (Path(__file__).parent / f"{n}.py").exists()]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    logs = args.logs or Path(os.environ.get("TMPDIR", "/tmp")) / "xds-benchmarks"
    logs.mkdir(parents=True, exist_ok=True)
    hardware, before = machine(), load()
    records, runs = [], []
    for name in names:
        got, seconds, error = run_one(name, args.quick, logs)
        records.extend(got)
        runs.append((name, seconds, error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_doc(args.out, records, runs, quick=args.quick, hardware=hardware, loads=(before, load()))
    print(f"wrote {args.out} ({len(records)} figures; logs in {logs})")
    if str(args.readme) != "-":
        doc = os.path.relpath(args.out, args.readme.parent)
        if write_readme(args.readme, records, doc=doc):
            print(f"updated the table in {args.readme}")


if __name__ == "__main__":
    main()
