"""Folder layouts: where a center keeps its images and label maps.

A layout is a pair of path patterns relative to the center's folder, with the placeholders
``{subject}`` and ``{sequence}``. The same pattern writes a phantom center and reads a real
one. Extensions are loose when reading: ``.nii`` and ``.nii.gz`` both match.

>>> LAYOUTS["folders"].match_image("MRN123/T2_HASTE/image.nii.gz")
{'subject': 'MRN123', 'sequence': 'T2_HASTE'}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from xds.schemas.errors import IngestError

_PLACEHOLDER = re.compile(r"\{(subject|sequence)\}")
# Subjects greedy, sequences short: "doe_jane_t1" is subject "doe_jane", sequence "t1".
_GROUP = {"subject": r"[^/]+", "sequence": r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*"}


@dataclass(frozen=True)
class Layout:
    """Where images and labels of one center live, as two path patterns."""

    image: str
    label: str
    name: str = field(default="custom", compare=False)

    @cached_property
    def _image_re(self) -> re.Pattern:
        return _compile(self.image)

    @cached_property
    def _label_re(self) -> re.Pattern:
        return _compile(self.label)

    def match_image(self, relpath: str) -> dict[str, str] | None:
        """The placeholders of an image path, or None when it is not an image here."""
        m = self._image_re.fullmatch(relpath)
        return m.groupdict() if m else None

    def match_label(self, relpath: str) -> dict[str, str] | None:
        """The placeholders of a label path, or None when it is not a label here."""
        m = self._label_re.fullmatch(relpath)
        return m.groupdict() if m else None

    def image_path(self, subject: str, sequence: str) -> str:
        """Relative path of an image (for writers)."""
        return self.image.format(subject=subject, sequence=sequence)

    def label_path(self, subject: str, sequence: str) -> str:
        """Relative path of a label map (for writers)."""
        return self.label.format(subject=subject, sequence=sequence)


LAYOUTS: dict[str, Layout] = {
    "bids": Layout(
        "sub-{subject}/anat/sub-{subject}_{sequence}.nii.gz",
        "derivatives/labels/sub-{subject}/anat/sub-{subject}_{sequence}_dseg.nii.gz",
        "bids",
    ),
    "nnunet": Layout(
        "imagesTr/{subject}_{sequence}_0000.nii.gz",
        "labelsTr/{subject}_{sequence}.nii.gz",
        "nnunet",
    ),
    "folders": Layout(
        "{subject}/{sequence}/image.nii.gz", "{subject}/{sequence}/mask.nii.gz", "folders"
    ),
    "flat": Layout("{subject}_{sequence}.nii", "{subject}_{sequence}_seg.nii", "flat"),
}
"""Built-in layouts; ``--layout auto`` picks the one matching most files."""


def parse_layout(spec: str, label_spec: str | None = None) -> Layout | None:
    """A layout from a built-in name, or from patterns; None for ``auto``.

    Raises:
        IngestError: an unknown name, or a pattern without ``{subject}``.
    """
    if spec == "auto":
        return None
    if spec in LAYOUTS:
        return LAYOUTS[spec]
    if "{subject}" not in spec:
        raise IngestError(
            f"--layout {spec!r}: not a built-in layout ({', '.join(LAYOUTS)}) "
            "and not a pattern with {subject}"
        )
    if not label_spec:
        raise IngestError("--layout with a pattern needs --label-layout too")
    return Layout(spec, label_spec)


def detect_layout(relpaths: list[str]) -> Layout:
    """The built-in layout that explains the most files (images and labels together).

    Raises:
        IngestError: no built-in layout matches any file.
    """

    def score(layout: Layout) -> int:
        return sum(1 for p in relpaths if layout.match_label(p) or layout.match_image(p))

    best = max(LAYOUTS.values(), key=score)
    if score(best) == 0:
        raise IngestError(
            "no built-in layout matches these files; pass --layout PATTERN --label-layout "
            "PATTERN, e.g. --layout '{subject}/{sequence}/image.nii.gz'"
        )
    return best


def _compile(pattern: str) -> re.Pattern:
    stem = pattern
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    out, seen, pos = [], set(), 0
    for m in _PLACEHOLDER.finditer(stem):
        out.append(re.escape(stem[pos : m.start()]))
        name = m.group(1)
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_GROUP[name]})")
        seen.add(name)
        pos = m.end()
    out.append(re.escape(stem[pos:]))
    return re.compile("".join(out) + r"\.nii(?:\.gz)?")
