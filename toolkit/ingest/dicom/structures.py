"""RTSTRUCT structure sets turned into label maps on their source series' converted grid.

A structure set holds, per ROI, closed planar contours in patient coordinates (mm). Each
ROI is named through the vocabulary, which knows the AAPM TG-263 standard names as
synonyms (``Kidney_L``, ``A_Aorta``, ``Bowel_Small``); its contours are mapped onto the
voxel grid of the stored scan with the scan's own affine, and each voxel centre of a slice
is tested against them with shapely's exact point-in-polygon predicates.

The rules:

- a voxel belongs to an ROI when its centre lies strictly inside an odd number of the ROI's
  contours on its slice (a contour drawn inside another is a hole; one inside a hole is an
  island), or on one of the contour lines. Tools that trace outlines through the centres
  of the boundary pixels (OpenCV's ``findContours``, so rt-utils) draw a hole's outline
  through the organ's pixels around it; those pixels stay in the organ;
- a contour must be closed (``CLOSED_PLANAR``), not cross itself, and lie on a slice of
  the series (within a tenth of a voxel); anything else refuses the whole structure set;
- an ROI whose name the vocabulary does not know (``PTV``, ``Couch``, ``External``) or that
  has no contours is left out, and said so; a structure set left with no ROI is refused;
- ROIs that claim one voxel are refused with their names: a label map holds one class per
  voxel.

The label's values number the kept ROIs from 1 in ROI-number order; its origin follows
ROIGenerationAlgorithm (MANUAL -> manual, SEMIAUTOMATIC -> revised, AUTOMATIC -> pseudo).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from xds.ingest.dicom.headers import dataset_phi
from xds.ingest.dicom.segmentations import label_origin
from xds.io.deid import clean_text
from xds.schemas.errors import IngestError, SchemaError
from xds.schemas.vocabulary import vocabulary

_CLOSED = ("CLOSED_PLANAR", "INTERPOLATED_PLANAR")
_ON_SLICE = 0.1  # a contour's plane may sit this far (in voxels) from a slice centre


def read_structure_set(path: Path):
    """An RTSTRUCT file, read with pydicom (files without a preamble too)."""
    import pydicom

    return pydicom.dcmread(path, force=True)


def referenced_series(ds) -> str:
    """The SeriesInstanceUID of the image series a structure set was drawn on.

    Raises:
        IngestError: the structure set names no series.
    """
    for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                if series.get("SeriesInstanceUID"):
                    return str(series.SeriesInstanceUID)
    raise IngestError("it names no referenced image series (RTReferencedSeriesSequence)")


def structure_label(
    ds, affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, dict[int, str], str, list[str]]:
    """Rasterize a structure set on the grid ``affine`` / ``shape``.

    Returns the label volume, value -> canonical class, the label's origin, and one line
    per ROI left out.

    Raises:
        IngestError: an open, self-crossing or off-slice contour, overlapping ROIs, or no
            ROI left.
    """
    vocab = vocabulary()
    phi = sorted(dataset_phi(ds))
    contours = {int(item.ReferencedROINumber): item.get("ContourSequence") or []
                for item in ds.get("ROIContourSequence") or []}  # fmt: skip
    kept, notes = [], []
    for roi in sorted(ds.get("StructureSetROISequence") or [], key=lambda r: int(r.ROINumber)):
        raw = str(roi.get("ROIName", "") or "")
        # a planning system's free text: shown and stored cleaned of the patient's identifiers
        name = clean_text(raw, phi) or f"#{roi.ROINumber}"
        try:
            canonical = vocab.resolve(raw)
        except SchemaError as exc:
            hint = str(exc).partition(";")[2]
            notes.append(f"ROI {name!r} left out: unknown name" + (f";{hint}" if hint else ""))
            continue
        if not contours.get(int(roi.ROINumber)):
            notes.append(f"ROI {name!r} left out: it has no contours")
            continue
        if canonical in [k[1] for k in kept]:
            raise IngestError(f"ROIs {[k[2] for k in kept if k[1] == canonical][0]!r} and "
                              f"{name!r} both name {canonical}")  # fmt: skip
        kept.append((int(roi.ROINumber), canonical, name, roi))
    if not kept:
        raise IngestError("no ROI the vocabulary knows; " + "; ".join(notes)
                          if notes else "it holds no ROI")  # fmt: skip
    out = np.zeros(shape, np.uint16)
    mapping, algorithms = {}, []
    for value, (number, canonical, name, roi) in enumerate(kept, start=1):
        mask = rasterize(contours[number], affine, shape, name)
        clash = out[mask & (out > 0)]
        if clash.size:
            other = kept[int(clash[0]) - 1][2]
            raise IngestError(f"ROIs {other!r} and {name!r} overlap ({clash.size} voxels); "
                              "a label map holds one class per voxel")  # fmt: skip
        out[mask] = value
        mapping[value] = canonical
        algorithms.append(roi.get("ROIGenerationAlgorithm", "MANUAL"))
    return out, mapping, label_origin(algorithms), notes


def rasterize(items, affine: np.ndarray, shape: tuple[int, int, int], name: str) -> np.ndarray:
    """One ROI's contours as a boolean volume on the grid ``affine`` / ``shape``.

    Raises:
        IngestError: a contour that is open, crosses itself, or lies off the grid's slices.
    """
    to_voxel = np.linalg.inv(affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS mm -> voxel
    inside: dict[tuple[int, int], np.ndarray] = {}  # (axis, slice) -> contours around a centre
    online: dict[tuple[int, int], np.ndarray] = {}  # (axis, slice) -> centre on a contour line
    for n, item in enumerate(items, start=1):
        where = f"ROI {name!r} contour {n}"
        kind = str(item.get("ContourGeometricType", ""))
        if kind not in _CLOSED:
            raise IngestError(f"{where} is {kind or 'of no type'}, not a closed planar contour")
        points = np.asarray(item.get("ContourData") or [], float)
        if points.size < 9 or points.size % 3:
            raise IngestError(f"{where} has {points.size // 3} points; a closed contour needs 3")
        ijk = nib.affines.apply_affine(to_voxel, points.reshape(-1, 3))
        spread = np.ptp(ijk, axis=0)
        axis = int(np.argmin(spread))
        plane = float(np.median(ijk[:, axis]))
        if spread[axis] > _ON_SLICE or abs(plane - round(plane)) > _ON_SLICE:
            raise IngestError(f"{where} does not lie on a slice of its series")
        k = int(round(plane))
        if not 0 <= k < shape[axis]:
            raise IngestError(f"{where} lies outside its series' volume")
        size = tuple(shape[a] for a in range(3) if a != axis)
        # snapped to a millionth of a voxel: a vertex meant on a voxel centre is on it
        flat = np.round(ijk[:, [a for a in range(3) if a != axis]], 6)
        count = inside.setdefault((axis, k), np.zeros(size, np.uint16))
        line = online.setdefault((axis, k), np.zeros(size, bool))
        strictly, on = centres_in(flat, size, where)
        count += strictly
        line |= on
    mask = np.zeros(shape, bool)
    for (axis, k), count in inside.items():
        section = [slice(None)] * 3
        section[axis] = k
        mask[tuple(section)] |= (count % 2 == 1) | online[(axis, k)]
    return mask


def centres_in(flat: np.ndarray, size: tuple[int, int], where: str):
    """Which voxel centres of a slice lie strictly inside a contour, and which on its line.

    ``flat``: the contour's vertices in the slice's voxel coordinates. Both tests are
    shapely's (``contains_xy``, ``intersects_xy``), on the contour's bounding box only.

    Raises:
        IngestError: the contour crosses itself.
    """
    import shapely

    if not shapely.LinearRing(flat).is_simple:
        raise IngestError(f"{where} crosses itself")
    polygon = shapely.Polygon(flat)
    shapely.prepare(polygon)
    lo = np.clip(np.floor(flat.min(axis=0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(flat.max(axis=0)).astype(int), np.array(size) - 1)
    strictly = np.zeros(size, bool)
    on = np.zeros(size, bool)
    if (hi < lo).any():
        return strictly, on
    a, b = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    box = (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1))
    strictly[box] = shapely.contains_xy(polygon, a, b)
    on[box] = shapely.intersects_xy(polygon, a, b) & ~strictly[box]
    return strictly, on
