"""Split and metadata-level leakage audit at 1,000,000 scans / 100,000 subjects.

Both are timed against a straightforward pandas implementation in the same run, on the same
synthetic scan table (8 centers, 3 sequences, about 10 scans per subject, planted leaks):

- split: xds's ``plan_split`` (stratified by center x sequence, every stratum within one
  subject of 70/10/20) vs pandas: one row per subject, shuffled, cut 70/10/20 within each
  center, merged back onto the scans (stratified by center only: the straightforward way);
- audit: xds's ``metadata_leaks`` (subjects, identical images and studies in two roles,
  per fold) vs pandas ``groupby(...).nunique()`` for the same three checks.

Goals on 2 cores: split <= 2 s, audit <= 5 s. Both sides are warmed up, then timed in
alternating rounds (benchmarks/timing.py), one process each.

    python -m benchmarks.splits [--scans 1000000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pyarrow as pa

from xds.splits.audit import metadata_leaks
from xds.splits.store import plan_split

from .timing import MIN_ROUNDS, Side, compare, report, seconds, timed_report

CENTERS = np.array(["NYU", "MCF", "MCA", "NU", "AHN", "IU", "EMC", "IH"])
SEQUENCES = np.array(["T1W", "T2W", "OOP"])


def make_scans(n_scans: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n_subjects = n_scans // 10
    per_subject = rng.multinomial(n_scans - n_subjects, np.ones(n_subjects) / n_subjects) + 1
    subject = np.repeat(np.arange(n_subjects), per_subject)
    center = CENTERS[subject % len(CENTERS)]
    sequence = SEQUENCES[rng.integers(0, 3, n_scans)]
    image = np.arange(n_scans)
    image[rng.choice(n_scans, 200, replace=False)] = rng.choice(n_scans, 200)  # planted copies
    study = subject * 2 + rng.integers(0, 2, n_scans)
    return pa.table({
        "scan_id": np.char.add("scn-", np.arange(n_scans).astype(str)),
        "subject_id": np.char.add("sub-", subject.astype(str)),
        "center": center, "sequence": sequence,
        "image_hash": np.char.add("h", image.astype(str)),
        "study_id": np.char.add("stu-", study.astype(str)),
    })  # fmt: skip


def xds_split(scans: pa.Table) -> pa.Table:
    result, _ = plan_split(scans, "holdout", stratify=("center", "sequence"), seed=0)
    idx, roles = result.folds[0]
    return pa.table({"fold": np.zeros(len(idx), np.int32), "role": roles}).append_column(
        "scan", pa.array(idx)
    )


def pandas_split(frame: pd.DataFrame) -> pd.DataFrame:
    subjects = frame[["subject_id", "center"]].drop_duplicates("subject_id")
    subjects = subjects.sample(frac=1.0, random_state=0)
    rank = subjects.groupby("center").cumcount()
    size = subjects.groupby("center")["subject_id"].transform("size")
    share = rank / size
    subjects["role"] = np.where(share < 0.7, "train", np.where(share < 0.8, "val", "test"))
    return frame.merge(subjects[["subject_id", "role"]], on="subject_id")


def pandas_audit(frame: pd.DataFrame) -> int:
    found = 0
    for key in ("subject_id", "image_hash", "study_id"):
        roles = frame.groupby(["fold", key])["role"].nunique()
        found += int((roles > 1).sum())
    return found


def _figures(name: str, what: str, sides: dict[str, Side], *, goal: str | None,
             note: str = "") -> None:  # fmt: skip
    """xds's own seconds (the goal is absolute) and its ratio to pandas."""
    one = "one process each"
    report("splits", f"{name}, seconds ({what})", ours=sides["xds"].does, baseline="-",
           value=seconds(sides["xds"]), goal=goal, unit=" s", parallelism=one,
           rounds=len(sides["xds"].seconds))  # fmt: skip
    timed_report("splits", f"{name} vs pandas ({what})", sides["xds"], sides["pandas"],
                 goal=None, parallelism=one, note=note)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--quick", action="store_true", help="200,000 scans")
    args = parser.parse_args()
    if args.quick:
        args.scans = min(args.scans, 200_000)
    scans = make_scans(args.scans)
    frame = scans.to_pandas()
    what = f"{scans.num_rows:,} scans, {frame.subject_id.nunique():,} subjects"
    print(what)
    sides = {
        "xds": Side("xds plan_split holdout, stratified by center x sequence",
                    lambda: xds_split(scans)),
        "pandas": Side("pandas: subjects shuffled and cut 70/10/20 per center, merged back",
                       lambda: pandas_split(frame)),
    }  # fmt: skip
    compare(sides, rounds=args.rounds)
    full = args.scans >= 10**6  # the goals are for a million scans
    _figures("holdout split", what, sides, goal="<= 2" if full else None)

    split = sides["xds"].result
    roles = np.asarray(["train", "val", "test", "unlabeled"], object)[split.column("role")]
    audited = scans.take(split.column("scan")).append_column("fold", split.column("fold"))
    audited = audited.append_column("role", pa.array(roles, pa.string()))
    audited_pd = audited.to_pandas()
    audit = {
        "xds": Side("xds metadata_leaks: subjects, identical images, studies in two roles",
                    lambda: metadata_leaks(audited)),
        "pandas": Side("pandas groupby(fold, key).role.nunique() for the same three keys",
                       lambda: pandas_audit(audited_pd)),
    }  # fmt: skip
    compare(audit, rounds=args.rounds)
    assert len(audit["xds"].result) == audit["pandas"].result, "the two audits disagree"
    _figures("leakage audit", what, audit, goal="<= 5" if full else None,
             note=f"{audit['pandas'].result} leaks found")

if __name__ == "__main__":
    main()
