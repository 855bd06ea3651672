"""What every public-dataset adapter shares: the case record, file finding, paired layouts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xds.ingest.common import label_map_row
from xds.schemas.vocabulary import LabelMap

_SPLITS = {"tr": "train", "training": "train", "va": "val", "val": "val", "ts": "test",
           "testing": "test", "test": "test", "train": "train"}  # fmt: skip


_DEMOGRAPHICS = ("sex", "age", "age_bin", "race", "ethnicity", "diagnosis")


@dataclass(frozen=True)
class Case:
    """One image of a public dataset and what its layout says about it."""

    key: str  # the dataset's case/subject id (pseudonymized before it is stored)
    image: str  # relative to the dataset root
    label: str | None = None
    masks: tuple[tuple[str, str], ...] = ()  # (class, path): one mask file per class
    label_map: str = ""
    modality: str = "CT"
    sequence: str = "CT"
    center: str | None = None
    split: str | None = None


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and not p.name.startswith("."))


def _split_of(folder: str) -> str | None:
    key = re.sub(r"^(images|labels)", "", folder.lower()).strip("_")
    return _SPLITS.get(key)


def _paired(root: Path, pattern: str, label_map: str, **facts) -> list[Case]:
    """Cases of an nnU-Net-like layout: ``images<Split>/<case>`` + ``labels<Split>/<case>``."""
    cases = []
    for image in _files(root, pattern):
        if not image.parent.name.lower().startswith("images"):
            continue
        label = image.parent.parent / image.parent.name.replace("images", "labels") / image.name
        cases.append(
            Case(
                key=image.name.split(".")[0],
                image=image.relative_to(root).as_posix(),
                label=label.relative_to(root).as_posix() if label.exists() else None,
                label_map=label_map,
                split=_split_of(image.parent.name),
                **facts,
            )
        )
    return cases


def builtin_map_row(label_map: LabelMap, now) -> dict:
    """The ``label_maps`` row of a built-in map (id ``builtin:<name>``)."""
    return label_map_row(f"builtin:{label_map.name}", label_map.name, label_map.names(),
                         label_map.source, now)  # fmt: skip
