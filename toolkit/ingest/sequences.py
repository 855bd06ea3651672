"""Sequence names from the words centers use in paths and series descriptions.

Rules are tried in order; the first that matches names the sequence. OOP/IP come before
T1 because opposed-phase series are T1-weighted gradient echoes often named "t1_opp".
"""

from __future__ import annotations

import re

_SEP = r"(?:^|[^a-z0-9])"
_END = r"(?:$|[^a-z0-9])"
RULES: tuple[tuple[str, str], ...] = (
    ("OOP", rf"{_SEP}(oop|opp|out[ _-]?of[ _-]?phase|opposed[ _-]?phase|opp[ _-]?phase){_END}"),
    ("IP", rf"{_SEP}(ip|inp|in[ _-]?phase){_END}"),
    ("ADC", rf"{_SEP}adc{_END}"),
    ("DWI", rf"{_SEP}(dwi|diffusion|b\d{{2,4}}){_END}"),
    ("FLAIR", r"flair"),
    ("T2W", rf"{_SEP}(t2w?|t2[ _-]?\w*|haste|ssfse|ss[ _-]?fse|space){_END}"),
    ("T1W", rf"{_SEP}(t1w?|t1[ _-]?\w*|vibe|lava|thrive|flash|gre){_END}"),
    ("CT", rf"{_SEP}(ct|ct[ _-]?\w*){_END}"),
    ("PET", rf"{_SEP}(pet|pt){_END}"),
)
_COMPILED = tuple((seq, re.compile(pattern)) for seq, pattern in RULES)


def sequence_from_name(text: str) -> tuple[str, str]:
    """The sequence a name denotes and the rule that said so, or ("UNKNOWN", "none").

    >>> sequence_from_name("T2_HASTE")
    ('T2W', 'name:T2W')
    >>> sequence_from_name("t1_opp")
    ('OOP', 'name:OOP')
    """
    lowered = text.lower().replace("_", " ")
    for sequence, pattern in _COMPILED:
        if pattern.search(lowered):
            return sequence, f"name:{sequence}"
    return "UNKNOWN", "none"
