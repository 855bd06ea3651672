"""Stable identifiers: a prefix and 16 hex digits of SHA-256 over the parts that define it.

>>> stable_id("scn", "sub-1", "abc")
'scn-ca3f3674ac035922'
"""

import hashlib
import hmac


def stable_id(prefix: str, *parts: object) -> str:
    """``prefix-`` + the first 16 hex digits of SHA-256 of the parts joined by NUL."""
    text = "\0".join(str(p) for p in parts)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def acquisition_time_key(secret: bytes, seconds_of_day: int | None) -> str | None:
    """A keyed hash of an acquisition's time of day (seconds after midnight), or None.

    Two rows of one acquisition get the same key; the time itself cannot be read back
    without the catalog's secret (there are only 86,400 times, so an unkeyed hash would
    hide nothing).
    """
    if seconds_of_day is None:
        return None
    message = f"acquisition-time\0{int(seconds_of_day)}".encode()
    return "t-" + hmac.new(secret, message, hashlib.sha256).hexdigest()[:16]
