"""Stable identifiers: a prefix and 16 hex digits of SHA-256 over the parts that define it.

>>> stable_id("scn", "sub-1", "abc")
'scn-ca3f3674ac035922'
"""

import hashlib


def stable_id(prefix: str, *parts: object) -> str:
    """``prefix-`` + the first 16 hex digits of SHA-256 of the parts joined by NUL."""
    text = "\0".join(str(p) for p in parts)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
