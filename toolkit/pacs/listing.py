"""Whole answers from a PACS that caps them: study lists by bisection of the date range.

PACS cap the results of one query (Orthanc's ``LimitFindResults``; many QIDO servers a
page size) and most say nothing: offset paging does not help when the cap applies to the
whole answer (Orthanc's DICOMweb plugin returns the same capped set whatever the offset).
What every server supports is range matching on dates and times, so a study list is made
whole by splitting the range: a query over a range and queries over its two halves give
counts ``n`` and ``a + b``. Both halves non-empty and ``a + b == n``: the first answer was
whole. ``a + b > n``: it was capped, and each half is made whole the same way. One half
empty: the other half holds the same answer; it is split again. Within one day the split
continues on StudyTime, to the second. A second holding as many studies as an answer seen
capped is reported, with that number, rather than listed in part.

Studies without a StudyDate match no range: they are found by the first, open query only
(when the whole list is under the cap).

Series of a study are checked against the study's NumberOfStudyRelatedSeries; when fewer
come back, the study's instances are listed (a different level, often a different cap) and
the series they name are asked for one by one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from xds.pacs.remote import Remote
from xds.schemas.errors import PacsError

FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2099, 12, 31)
_DAY = 86400


def _range_filter(lo: int, hi: int) -> dict[str, str]:
    """StudyDate (and StudyTime within one day) for the seconds ``lo..hi`` since FIRST_DAY."""
    d0, s0 = divmod(lo, _DAY)
    d1, s1 = divmod(hi, _DAY)
    day = lambda d: (FIRST_DAY + dt.timedelta(days=d)).strftime("%Y%m%d")  # noqa: E731
    if s0 == 0 and s1 == _DAY - 1:
        return {"StudyDate": day(d0) if d0 == d1 else f"{day(d0)}-{day(d1)}"}
    clock = lambda s: f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"  # noqa: E731
    return {"StudyDate": day(d0), "StudyTime": f"{clock(s0)}-{clock(s1)}"}


def _halves(lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    d0, d1 = lo // _DAY, hi // _DAY
    if d1 > d0:  # split whole days first
        mid = d0 + (d1 - d0) // 2
        return (lo, (mid + 1) * _DAY - 1), ((mid + 1) * _DAY, hi)
    if hi > lo:
        mid = lo + (hi - lo) // 2
        return (lo, mid), (mid + 1, hi)
    return None


def all_studies(remote: Remote, filters: dict[str, str], since: dt.date | None = None,
                on_query: Callable[[], None] | None = None) -> list[dict]:  # fmt: skip
    """Every study matching ``filters`` (and dated ``since`` or later), whatever the cap."""
    queries = [0]

    def ask(extra: dict[str, str]) -> list[dict]:
        queries[0] += 1
        if on_query:
            on_query()
        return remote.find_studies({**filters, **extra})

    lo = ((since or FIRST_DAY) - FIRST_DAY).days * _DAY
    hi = ((LAST_DAY - FIRST_DAY).days + 1) * _DAY - 1
    first = ask(_range_filter(lo, hi) if since else {})

    cap: list[int] = []  # answer sizes seen to be capped

    def whole(lo: int, hi: int, found: list[dict]) -> list[dict]:
        halves = _halves(lo, hi)
        if halves is None:
            if not cap or len(found) < min(cap):
                return found  # one second's studies, under any cap seen
            raise PacsError(
                f"the PACS returns at most {len(found)} studies per query and one second "
                f"({_range_filter(lo, hi)}) holds that many or more: raise its result limit"
            )
        (a0, a1), (b0, b1) = halves
        a, b = ask(_range_filter(a0, a1)), ask(_range_filter(b0, b1))
        if a and b and len(a) + len(b) <= len(found):
            return found  # whole (fewer: some studies of the answer have no date)
        if not a and not b:
            return found
        if not b:
            return whole(a0, a1, a) if len(a) >= len(found) else found
        if not a:
            return whole(b0, b1, b) if len(b) >= len(found) else found
        cap.append(len(found))
        return whole(a0, a1, a) + whole(b0, b1, b)

    if not first:
        return []
    found = whole(lo, hi, first)
    unique = {s["StudyInstanceUID"]: s for s in [*first, *found] if s["StudyInstanceUID"]}
    return [unique[k] for k in sorted(unique)]


def study_series(remote: Remote, study: dict, filters: dict[str, str]) -> list[dict]:
    """Every series of ``study`` matching ``filters``, checked against the study's count."""
    uid = study["StudyInstanceUID"]
    series = remote.find_series(uid, filters)
    expected = int(study.get("NumberOfStudyRelatedSeries") or 0)
    if len(series) >= expected or filters:
        return series
    have = {s["SeriesInstanceUID"] for s in series}
    for instance in remote.find_instances(uid, None):
        other = instance.get("SeriesInstanceUID")
        if other and other not in have:
            have.add(other)
            series.extend(remote.find_series(uid, {"SeriesInstanceUID": other}))
    return series
