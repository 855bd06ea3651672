"""De-identification: keyed pseudonyms and the rules that keep PHI out of the catalog.

Subject ids are HMAC-SHA256 pseudonyms of (dataset, center, source key) under the
catalog's secret key: stable across re-ingests of the same catalog, not reversible without
the key, and different in another catalog. Ages above 89 are capped (HIPAA Safe Harbor).
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Sheet columns that may identify a person (HIPAA's 18 identifiers): never stored.
_PHI_COLUMN = re.compile(
    r"name|birth|dob|address|street|city|zip|postal|phone|fax|e-?mail|mrn|ssn|social|"
    r"accession|physician|doctor|institution|hospital|insurance|licen[cs]e|serial|url|"
    r"(^|_)ip($|_)|date|contact|(^|_)id$|^id|uid",
    re.IGNORECASE,
)
AGE_CAP = 90.0


def pseudonym(secret: bytes, *parts: str, prefix: str = "sub") -> str:
    """A keyed pseudonym: ``prefix-`` and 16 hex digits of HMAC-SHA256 over ``parts``."""
    digest = hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"


def is_phi_column(name: str) -> bool:
    """True for a spreadsheet column that may hold a direct identifier or a date."""
    return bool(_PHI_COLUMN.search(name.strip()))


def cap_age(age: float | None) -> float | None:
    """Age in years with everything above 89 reported as 90."""
    if age is None:
        return None
    return min(float(age), AGE_CAP)


def age_bin(age: float | None) -> str | None:
    """Decade bin of an age in years: "40-49"; "90+" for capped ages; "0-17" for minors."""
    if age is None:
        return None
    if age >= AGE_CAP:
        return "90+"
    if age < 18:
        return "0-17"
    low = int(age // 10 * 10)
    return f"{max(low, 18)}-{low + 9}"
