"""The label vocabulary, the public datasets' label maps and the shared class sets, as data.

- ``schemas/vocabulary.json``: canonical snake_case class names (TotalSegmentator's naming
  where it has one), their synonyms (``postcava`` = ``ivc`` = ``inferior_vena_cava``),
  parents that are unions of classes (``kidney`` = ``kidney_left`` + ``kidney_right``) and
  SNOMED CT body-structure codes where known.
- ``schemas/labelmaps/<name>.json``: one file per public dataset, each citing its source:
  index, the name as the dataset spells it, and the canonical class.
- :data:`CLASS_SETS`: named sets of classes (``aeval8`` of A-Eval, ``touchstone9`` of
  Touchstone, ``crosspan`` of CrossPan).

>>> vocabulary().resolve("Postcava")
'inferior_vena_cava'
>>> sorted(vocabulary().leaves("kidney"))
['kidney_left', 'kidney_right']
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from xds.schemas.errors import SchemaError

_HERE = Path(__file__).parent
BACKGROUND = "background"
GENERIC = re.compile(r"label_[1-9][0-9]*")
"""Generic class names, ``label_<index>``: the classes of a label map that names none
(an ingest without a label-map file, synthetic sets); each stands only for itself."""

CLASS_SETS: dict[str, tuple[str, ...]] = {
    # A-Eval: the eight classes AMOS, FLARE22, WORD, TotalSegmentator and BTCV
    # all label, in FLARE22's order.
    "aeval8": (
        "liver",
        "kidney_right",
        "spleen",
        "pancreas",
        "gallbladder",
        "esophagus",
        "stomach",
        "kidney_left",
    ),
    # Touchstone / AbdomenAtlas 1.0, in the order of its result tables.
    "touchstone9": (
        "spleen",
        "kidney_right",
        "kidney_left",
        "gallbladder",
        "liver",
        "stomach",
        "aorta",
        "inferior_vena_cava",
        "pancreas",
    ),
    "crosspan": ("pancreas",),  # CrossPan: the whole gland
}


def normalize(name: str) -> str:
    """A name as the vocabulary looks it up: lower case, runs of non-alphanumerics as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


class Vocabulary:
    """Canonical classes, their synonyms, parents and codes (from ``vocabulary.json``)."""

    def __init__(self, doc: dict):
        self.classes: dict[str, dict] = doc["classes"]
        self.parents: dict[str, tuple[str, ...]] = {
            name: tuple(p["children"]) for name, p in doc["parents"].items()
        }
        self._codes = {
            **{n: c.get("snomed") for n, c in self.classes.items()},
            **{n: p.get("snomed") for n, p in doc["parents"].items()},
        }
        self._lookup: dict[str, str] = {}
        entries = [(n, c["synonyms"]) for n, c in self.classes.items()]
        entries += [(n, p["synonyms"]) for n, p in doc["parents"].items()]
        for name, synonyms in entries:
            for word in (name, *synonyms):
                key = normalize(word)
                if self._lookup.get(key, name) != name:
                    raise SchemaError(
                        f"vocabulary: {word!r} names both {self._lookup[key]} and {name}"
                    )
                self._lookup[key] = name
        for parent, children in self.parents.items():
            for child in children:
                if child not in self.classes and child not in self.parents:
                    raise SchemaError(f"vocabulary: parent {parent} has unknown child {child}")

    @property
    def names(self) -> list[str]:
        """Every canonical name: classes, then parents."""
        return [*self.classes, *self.parents]

    def resolve(self, name: str) -> str:
        """The canonical class a name (or synonym) stands for.

        Raises:
            SchemaError: the name is not in the vocabulary (the message suggests close names).
        """
        key = normalize(name)
        if key in self._lookup:
            return self._lookup[key]
        if GENERIC.fullmatch(key):  # label_7: a structure an unnamed label map numbers
            return key
        close = difflib.get_close_matches(key, list(self._lookup), n=3, cutoff=0.75)
        hint = (
            f"; did you mean {', '.join(sorted({self._lookup[c] for c in close}))}?"
            if close
            else ""
        )
        raise SchemaError(f"unknown class name {name!r}{hint}")

    def leaves(self, name: str) -> frozenset[str]:
        """The non-parent classes a class covers: itself, or all its descendants."""
        name = self.resolve(name)
        if name not in self.parents:
            return frozenset((name,))
        return frozenset(leaf for child in self.parents[name] for leaf in self.leaves(child))

    def code(self, name: str) -> str | None:
        """The SNOMED CT code of a class, when known."""
        return self._codes.get(self.resolve(name))


@cache
def vocabulary() -> Vocabulary:
    """The vocabulary shipped with xds (loaded once)."""
    return Vocabulary(json.loads((_HERE / "vocabulary.json").read_text()))


@dataclass(frozen=True)
class LabelMap:
    """A dataset's label convention: index -> canonical class (0 is background)."""

    name: str
    classes: dict[int, str]  # index -> canonical class name, background excluded
    title: str = ""
    source: str = ""
    modalities: tuple[str, ...] = ()
    spelled: dict[int, str] | None = None  # index -> name as the dataset spells it

    def names(self) -> dict[int, str]:
        """Index -> canonical name with ``0: background``, as the catalog stores maps."""
        return {0: BACKGROUND, **dict(sorted(self.classes.items()))}

    def index_of(self) -> dict[str, int]:
        """Canonical class -> index."""
        return {c: i for i, c in self.classes.items()}


def canonical_map(mapping: dict[int, str], origin: str) -> dict[int, str]:
    """Index -> canonical class for a map read from ``origin`` (background dropped).

    Raises:
        SchemaError: a name the vocabulary does not know, a negative index, or two indices
            naming one class; the message names ``origin`` and the offending value.
    """
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    vocab = vocabulary()
    for index, name in sorted(mapping.items()):
        if index < 0:
            raise SchemaError(f"{origin}: label index {index} is negative")
        if normalize(name) == BACKGROUND:
            if index != 0:
                raise SchemaError(f"{origin}: background must be index 0, not {index}")
            continue
        if index == 0:
            raise SchemaError(f"{origin}: index 0 is background, not {name!r}")
        try:
            cls = vocab.resolve(name)
        except SchemaError as exc:
            raise SchemaError(f"{origin}: index {index}: {exc}") from None
        if cls in seen:
            raise SchemaError(
                f"{origin}: indices {seen[cls]} and {index} both name {cls} ({name!r})"
            )
        seen[cls] = index
        out[index] = cls
    return out


_ALIASES = {
    "total": "totalsegmentator",
    "total_mr": "totalsegmentator_mr",
    "msd": "msd_pancreas",
    "touchstone": "abdomenatlas",
    "chaos": "chaos_mr",
}


def label_map_names() -> list[str]:
    """Names of the built-in dataset label maps."""
    return sorted(p.stem for p in (_HERE / "labelmaps").glob("*.json"))


@cache
def builtin_label_map(name: str) -> LabelMap:
    """A public dataset's label map (``amos``, ``flare22``, ``totalsegmentator``, ...).

    Raises:
        SchemaError: no such map, or a map file that breaks the vocabulary's rules.
    """
    key = normalize(name)
    key = _ALIASES.get(key, key)
    path = _HERE / "labelmaps" / f"{key}.json"
    if not path.exists():
        raise SchemaError(f"no label map {name!r}; built-in: {', '.join(label_map_names())}")
    doc = json.loads(path.read_text())
    indices = [e["index"] for e in doc["labels"]]
    if len(set(indices)) != len(indices):
        raise SchemaError(f"{path}: duplicate label index")
    classes = canonical_map({e["index"]: e["class"] for e in doc["labels"]}, str(path))
    return LabelMap(
        name=doc["name"],
        classes=classes,
        title=doc.get("title", ""),
        source=doc.get("source", ""),
        modalities=tuple(doc.get("modalities", ())),
        spelled={e["index"]: e["name"] for e in doc["labels"]},
    )


def class_set(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The canonical classes a named set, ``generic:N`` or a list of names stands for.

    ``aeval8`` is a named set; ``generic:N`` is ``label_1`` .. ``label_N``, the classes of
    maps that name none (synthetic sets); otherwise a comma-separated or listed choice.

    Raises:
        SchemaError: an unknown set or class name, or a class given twice.
    """
    if isinstance(spec, str):
        if normalize(spec) in CLASS_SETS:
            return CLASS_SETS[normalize(spec)]
        if match := re.fullmatch(r"generic:([1-9][0-9]*)", spec.strip()):
            return tuple(f"label_{i}" for i in range(1, int(match[1]) + 1))
        spec = [s for s in spec.split(",") if s.strip()]
    classes = tuple(vocabulary().resolve(s) for s in spec)
    if not classes:
        raise SchemaError(f"empty class set; named sets: {', '.join(CLASS_SETS)}")
    if len(set(classes)) != len(classes):
        raise SchemaError(f"class set names a class twice: {', '.join(classes)}")
    return classes


def shared_classes(maps: list[LabelMap]) -> list[str]:
    """The classes every map labels (exact classes, no merging), in vocabulary order."""
    if not maps:
        return []
    common = set.intersection(*(set(m.classes.values()) for m in maps))
    return [n for n in vocabulary().names if n in common]
