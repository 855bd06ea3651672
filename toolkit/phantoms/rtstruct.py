"""RTSTRUCT structure sets for the phantom DICOM world, as a planning system would send them.

Each organ of a series' label map becomes one ROI named by its AAPM TG-263 standard name
(``Kidney_L``, ``A_Aorta``), with one closed planar contour per connected outline and
slice. Outlines are traced by marching squares (``skimage.measure.find_contours``) at the
half level between inside and outside pixels, so a pixel centre lies inside an outline
exactly when the pixel belongs to the organ; holes come out as inner outlines.

The set copies the patient and study of its series, as real ones do: the identifiers in it
are fake, and what ingest does with them is what the PHI tests check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

_STUDY_SOP = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as RT references use

TG263 = {
    "liver": "Liver", "spleen": "Spleen", "kidney_right": "Kidney_R",
    "kidney_left": "Kidney_L", "pancreas": "Pancreas", "gallbladder": "Gallbladder",
    "stomach": "Stomach", "aorta": "A_Aorta", "inferior_vena_cava": "V_Venacava_I",
}  # fmt: skip
"""The TG-263 standard name of each phantom organ."""

_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
           "FrameOfReferenceUID")  # fmt: skip


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2-D mask as (row, col) vertex arrays, first vertex not repeated."""
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour[:-1] - 1.0, tolerance=1e-6)
        if len(contour) >= 3:
            out.append(contour if not np.allclose(contour[0], contour[-1]) else contour[:-1])
    return out


def write_structure_set(path: Path, datasets: list, labels: np.ndarray, names: dict[int, str]):
    """Write the RTSTRUCT of one phantom series.

    ``datasets``: the series' slices (slice k holds ``labels[:, :, k].T``, the generator's
    pixel order); ``names``: the center's label index -> class.
    """
    source = datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 800 + int(source.SeriesNumber)
    ds.InstanceNumber = 1
    ds.Manufacturer = "xds phantoms"
    ds.StructureSetLabel = "organs"
    ds.StructureSetDate, ds.StructureSetTime = source.StudyDate, source.StudyTime

    def image_ref(item: Dataset) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.SOPClassUID
        ref.ReferencedSOPInstanceUID = item.SOPInstanceUID
        return ref

    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ContourImageSequence = Sequence([image_ref(d) for d in datasets])
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_SOP
    study.ReferencedSOPInstanceUID = source.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = source.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    rois, contours, observations = [], [], []
    for number, (index, name) in enumerate(
        [(i, n) for i, n in sorted(names.items()) if i and n != "background"], start=1
    ):
        items = []
        for k, image in enumerate(datasets):
            for outline in outlines(labels[:, :, k].T == index):
                items.append(_contour(image, outline, image_ref(image)))
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, source.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = TG263.get(name, name), "MANUAL"
        rois.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [(60 * number) % 256, (110 * number) % 256, (170 * number) % 256]
        contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _contour(image, outline: np.ndarray, ref: Dataset) -> Dataset:
    """One closed planar contour: pixel (row, col) vertices of ``image`` in patient mm."""
    origin = np.array(image.ImagePositionPatient, float)
    orient = np.array(image.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
    points = (origin + outline[:, 1:2] * col_spacing * orient[:3]
              + outline[:, 0:1] * row_spacing * orient[3:])  # fmt: skip
    item = Dataset()
    item.ContourImageSequence = Sequence([ref])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{v:.4f}" for v in points.reshape(-1)]
    return item
