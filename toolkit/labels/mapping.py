"""The one class-mapping path: a label map's indices to a list of target classes.

Exports, harmonization, evaluation, the trainers and the pseudo-label teachers all map
labels here, through the vocabulary (``schemas/vocabulary.json``): a source class goes to the
target class that contains it, so a parent merges its children (``kidney`` = ``kidney_left``
+ ``kidney_right``), and a target class is *annotated* by a map only when every leaf of it is
a source class or inside one. A name the vocabulary does not know stands only for itself.
``ignore`` voxels (unreliable pseudo-label voxels) stay :data:`IGNORE` wherever they go.
"""

from __future__ import annotations

import gzip
from collections import Counter

import nibabel as nib
import numpy as np

from xds.schemas.errors import ExportError, SchemaError
from xds.schemas.vocabulary import BACKGROUND, vocabulary

IGNORE = 255
"""Index of voxels a loss must skip (unreliable, or a class outside the target set)."""

IGNORE_NAME = "ignore"


def class_leaves(name: str) -> frozenset[str]:
    """The leaf classes ``name`` covers (itself when the vocabulary does not know it)."""
    try:
        return vocabulary().leaves(name)
    except SchemaError:
        return frozenset((name,))


def lookup_table(
    source: dict[int, str], targets: tuple[str, ...] | list[str], unmapped: str = "background"
) -> tuple[np.ndarray, list[str]]:
    """The index -> target index table for a source map, and the targets it annotates.

    Args:
        source: source index -> class name (background may be included as 0).
        targets: the target classes; target index i+1 is ``targets[i]``.
        unmapped: ``background`` (0) or ``ignore`` (255) for source classes outside the set.

    Returns:
        A uint8 table of at least 256 entries, and the annotated targets in target order.
        A source class coarser than its target (combined adrenals for
        ``adrenal_gland_left``) cannot be split: its voxels stay unmapped, and that target
        is not annotated.
    """
    fill = 0 if unmapped == "background" else IGNORE
    size = max(max(source, default=0) + 1, 256)
    lut = np.full(size, fill, dtype=np.uint8)
    lut[0] = 0
    target_leaves = [class_leaves(t) for t in targets]
    covered: list[set[str]] = [set() for _ in targets]
    for index, name in source.items():
        if index == 0 or name == BACKGROUND:
            continue
        if name == IGNORE_NAME:
            lut[index] = IGNORE
            continue
        leaves = class_leaves(name)
        for k, target in enumerate(target_leaves):
            if leaves <= target:
                lut[index] = k + 1
                covered[k] |= leaves
                break
    annotated = [t for t, leaves, c in zip(targets, target_leaves, covered, strict=True)
                 if leaves <= c]  # fmt: skip
    return lut, annotated


def class_table(source: dict[int, str], targets) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """:func:`lookup_table` cut to the source's own indices, as tuples.

    This is what export cases carry: a label value beyond the map's indices is an error, not
    background.
    """
    lut, annotated = lookup_table(source, targets)
    return tuple(int(v) for v in lut[: max(source, default=0) + 1]), tuple(annotated)


def choose_classes(
    maps: dict[str, dict[int, str]],
    wanted: list[str] | None,
    *,
    partial: bool = False,
    usage: Counter | None = None,
) -> list[str]:
    """The exported classes: ``wanted`` checked against the label maps, or the default.

    The default is the classes every map names (any map, with ``partial``), in the order of
    the map most cases use. A wanted class is accepted when every map (any map, with
    ``partial``) annotates it through the vocabulary, so ``kidney`` works on maps that label
    the two kidneys.
    """
    named = [{n for i, n in m.items() if i != 0 and n != IGNORE_NAME} for m in maps.values()]
    common = set.intersection(*named) if named else set()
    anywhere = set.union(*named) if named else set()
    if wanted is None:
        pool = anywhere if partial else common
        if not pool:
            raise ExportError("the cohort's label maps share no class; pass --classes")
        usage = usage or Counter(dict.fromkeys(maps, 1))
        main = maps[max(maps, key=lambda m: (usage[m], m))]
        first = [n for _, n in sorted(main.items()) if n in pool]
        return first + sorted(pool - set(first))
    if len(set(wanted)) != len(wanted):
        raise ExportError(f"--classes names a class twice: {wanted}")
    annotated = [set(class_table(m, wanted)[1]) for m in maps.values()]
    check = any if partial else all
    lacking = [c for c in wanted if not check(c in a for a in annotated)]
    if lacking:
        where = "in any" if partial else "in every"
        hint = "" if partial else " (or pass --partial and mask them per case)"
        raise ExportError(
            f"class(es) {lacking} are not labelled {where} label map of the cohort; "
            f"classes labelled everywhere: {sorted(common)}{hint}"
        )
    return list(wanted)


def identity_label(path: str, lut: tuple[int, ...]) -> bool:
    """The label can be used as it is: an identity lookup and integer voxels, unscaled."""
    if any(i != v for i, v in enumerate(lut)):
        return False
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:  # the 348-byte header only (nib.load sniffs much more)
        header = nib.Nifti1Header.from_fileobj(fh, check=False)
    if header["sizeof_hdr"] != 348:  # NIfTI-2
        header = nib.load(path).header
    slope, inter = header.get_slope_inter()
    return (
        np.issubdtype(header.get_data_dtype(), np.integer)
        and slope in (None, 1)
        and (inter in (None, 0))
    )


def remap_label(path: str, lut: tuple[int, ...]) -> nib.Nifti1Image:
    """A label map with its indices sent through ``lut``, as uint8, same grid and affine.

    Raises:
        ExportError: the label holds an index its label map does not declare.
    """
    label = nib.load(path)
    data = np.asanyarray(label.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    data = data.astype(np.int64, copy=False)
    if data.size and (data.min() < 0 or data.max() >= len(lut)):
        raise ExportError(
            f"{path}: label value {int(data.max())} is not in its label map "
            f"(indices 0-{len(lut) - 1})"
        )
    image = nib.Nifti1Image(
        np.asarray(lut, np.uint8)[data], label.affine, header=label.header.copy()
    )
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    return image
