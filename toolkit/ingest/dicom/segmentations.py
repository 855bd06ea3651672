"""DICOM SEG objects turned into label maps on their source series' converted grid.

``xds ingest dicom`` finds SEG files among the images, or in a later run over a folder that
holds only annotations (see :mod:`xds.ingest.dicom.annotations`). Each is read with
highdicom and linked to its source series by ReferencedSeriesSequence.

Placement uses the SEG's own geometry: every pixel of every frame is put where its
ImagePositionPatient, ImageOrientationPatient and PixelSpacing say, on the voxel grid of
the stored scan; a frame that does not fall on that grid's voxel centres is a quarantine
reason. Segments are named through the vocabulary from their SegmentedPropertyType code
(SNOMED CT) or, failing that, their SegmentLabel; fractional segments count where the
fraction is at least one half. Segments that overlap are refused with their numbers: a
label map holds one class per voxel. The label's values are the segment numbers; its
origin follows SegmentAlgorithmType (MANUAL -> manual, SEMIAUTOMATIC -> revised,
AUTOMATIC -> pseudo, the least manual segment deciding).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from xds.ingest.dicom.headers import dataset_phi
from xds.io.deid import clean_text
from xds.schemas.errors import IngestError, SchemaError
from xds.schemas.tables import LABEL_ORIGINS
from xds.schemas.vocabulary import vocabulary

ORIGIN_OF = {"MANUAL": "manual", "SEMIAUTOMATIC": "revised", "AUTOMATIC": "pseudo"}
"""DICOM's algorithm types (SEG SegmentAlgorithmType, RTSTRUCT ROIGenerationAlgorithm) as
label origins."""


def label_origin(algorithm_types: list[str]) -> str:
    """The origin of a label whose parts were made as ``algorithm_types`` say.

    The least manual part decides (an unknown or missing type counts as MANUAL).
    """
    origins = [ORIGIN_OF.get(str(t or "MANUAL"), "manual") for t in algorithm_types]
    return max(origins, key=LABEL_ORIGINS.index) if origins else "manual"


def read_segmentation(path: Path):
    """A SEG file, read once with highdicom (a large import: only when there are SEG files)."""
    import highdicom as hd

    return hd.seg.segread(path)


def seg_series(seg) -> str:
    """The SeriesInstanceUID of the series a SEG segments."""
    return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)


def seg_label(seg, affine: np.ndarray, shape: tuple[int, int, int]):
    """A SEG's label on the grid ``affine`` / ``shape``: (volume, classes, origin, notes).

    Raises:
        IngestError: unknown or repeated segments, frames off the grid, overlaps.
    """
    mapping, origin = segment_classes(seg)
    return place_frames(seg, affine, shape), mapping, origin, []


def segment_classes(seg) -> tuple[dict[int, str], str]:
    """Segment number -> canonical class, and the label's origin.

    Raises:
        IngestError: a segment whose code and label the vocabulary does not know, or two
            segments naming one class.
    """
    vocab = vocabulary()
    by_code = {vocab.code(n): n for n in vocab.names if vocab.code(n)}
    mapping: dict[int, str] = {}
    algorithms = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        codes = item.get("SegmentedPropertyTypeCodeSequence") or []
        code = str(codes[0].CodeValue) if codes else ""
        name = by_code.get(code) if codes and codes[0].CodingSchemeDesignator in ("SCT", "SRT")\
            else None  # fmt: skip
        if name is None:
            label = str(item.get("SegmentLabel") or "")
            try:
                name = vocab.resolve(label)
            except SchemaError as exc:
                # the label is free text: shown and stored cleaned of the patient's identifiers
                shown = clean_text(label, sorted(dataset_phi(seg))) or ""
                hint = str(exc).partition(";")[2]
                raise IngestError(f"segment {number} (code {code or 'none'}): unknown class "
                                  f"name {shown!r}" + (f";{hint}" if hint else "")) from None
        if name in mapping.values():
            raise IngestError(f"segments {[k for k, v in mapping.items() if v == name][0]} and "
                              f"{number} both name {name}")  # fmt: skip
        mapping[number] = name
        algorithms.append(item.get("SegmentAlgorithmType", "MANUAL"))
    return mapping, label_origin(algorithms)


def place_frames(seg, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The SEG's segments as one label volume on the grid ``affine`` / ``shape``.

    Raises:
        IngestError: a frame off the grid's voxel centres or outside it, or overlapping
            segments.
    """
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = pixels >= float(seg.MaximumFractionalValue) / 2
    shared = seg.SharedFunctionalGroupsSequence[0]
    to_voxel = np.linalg.inv(affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS mm -> voxel
    rows, cols = pixels.shape[1:]
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    out = np.zeros(shape, np.uint16)
    owner = np.zeros(shape, np.uint16)
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        orient = _item(group, shared, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = [float(v) for v in _item(group, shared, "PixelMeasuresSequence").PixelSpacing]
        origin = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        row_dir, col_dir = np.array(orient[:3], float), np.array(orient[3:], float)
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        lps = origin + c[..., None] * spacing[1] * row_dir + r[..., None] * spacing[0] * col_dir
        ijk = nib.affines.apply_affine(to_voxel, lps.reshape(-1, 3))
        index = np.rint(ijk).astype(int)
        if not np.allclose(ijk, index, atol=0.05):
            raise IngestError(f"frame {f + 1} does not lie on its series' voxel grid")
        if (index < 0).any() or (index >= shape).any():
            raise IngestError(f"frame {f + 1} lies outside its series' volume")
        hit = pixels[f].reshape(-1) > 0
        where = tuple(index[hit].T)
        clash = owner[where][(owner[where] != 0) & (owner[where] != number)]
        if clash.size:
            raise IngestError(f"segments {int(clash[0])} and {number} overlap (frame {f + 1}); "
                              "a label map holds one class per voxel")  # fmt: skip
        owner[where] = number
        out[where] = number
    return out


def _item(group, shared, name: str):
    """A functional group's item: the frame's own, else the shared one."""
    own = group.get(name)
    return own[0] if own else shared.get(name)[0]
