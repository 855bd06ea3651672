"""Planted leaks: copies of a world's scans under new subject ids, for validating the audit.

``plant_leaks`` writes, for each source image, one perturbed copy in a
``{subject}/{sequence}/image.nii.gz`` layout (ingest it with ``xds ingest nifti --layout
'{subject}/{sequence}/image.nii.gz' --label-layout '{subject}/{sequence}/label.nii.gz'``),
each under a new subject name:

- ``exact``: the same voxels (the audit's image hash finds it);
- ``resampled``: resampled to another grid with trilinear interpolation, the affine moved
  with it;
- ``cropped``: a sub-volume, the affine's origin moved to it;
- ``noisy``: Gaussian noise of 2 % of the intensity range added;
- ``requantized``: rescaled to 8 bits.

``copy_dicom_study`` re-exports a DICOM series under another patient (same study UID, or a
new one with the acquisition time and scanner kept): one study under two subject ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

KINDS = ("exact", "resampled", "cropped", "noisy", "requantized")


def _perturb(kind: str, data: np.ndarray, affine: np.ndarray, rng):
    if kind == "exact":
        return np.asarray(data), affine  # same dtype too: the same decoded voxels
    data = np.asarray(data, np.float32)
    if kind == "resampled":
        factor = np.array([1.3, 1.25, 1.2])
        out = ndimage.zoom(data, factor, order=1)
        scale = (np.array(data.shape) - 1) / (np.array(out.shape) - 1)
        moved = affine.copy()
        moved[:3, :3] = affine[:3, :3] @ np.diag(scale)
        return out, moved
    if kind == "cropped":
        lo = np.array(data.shape) // 6
        hi = np.array(data.shape) - np.array(data.shape) // 8
        moved = affine.copy()
        moved[:3, 3] = affine[:3, 3] + affine[:3, :3] @ lo
        return data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], moved
    if kind == "noisy":
        span = float(data.max() - data.min()) or 1.0
        return data + rng.normal(0, 0.02 * span, data.shape).astype(np.float32), affine
    if kind == "requantized":
        low, high = float(data.min()), float(data.max())
        return np.round((data - low) / ((high - low) or 1.0) * 255).astype(np.uint8), affine
    raise ValueError(f"unknown leak kind {kind!r}; known: {', '.join(KINDS)}")


def plant_leaks(
    sources: list[tuple[str, str | Path]], out: str | Path, seed: int = 0
) -> list[dict]:
    """Write one perturbed copy per (kind, source image) under a new subject name.

    Args:
        sources: (kind, image path) pairs, kind one of :data:`KINDS`.
        out: the folder to write (``{subject}/{sequence}/image.nii.gz``).
        seed: the noise seed.

    Returns:
        One record per copy: subject name, kind, source path; also written to
        ``out/leaks.json``.
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    records = []
    for n, (kind, source) in enumerate(sources):
        image = nib.load(source)
        data, affine = _perturb(kind, np.asanyarray(image.dataobj), image.affine, rng)
        subject = f"planted{n:03d}{kind}"
        folder = out / subject / "T1W"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), folder / "image.nii.gz")
        records.append({"subject": subject, "kind": kind, "source": str(source)})
    (out / "leaks.json").write_text(json.dumps(records, indent=1))
    return records


def copy_dicom_study(
    series_dir: str | Path, out: str | Path, patient: str, *, new_study_uid: bool = False
) -> Path:
    """Re-export one DICOM series as if it belonged to another patient.

    The copy gets new series and instance UIDs and a new PatientID/PatientName. With
    ``new_study_uid`` the StudyInstanceUID is regenerated too (what some anonymizers do);
    acquisition time, scanner and pixels stay, with one pixel changed so the voxels differ.
    """
    import pydicom
    from pydicom.uid import generate_uid

    out = Path(out) / patient
    out.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for n, path in enumerate(sorted(p for p in Path(series_dir).iterdir() if p.is_file())):
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.PatientName = f"{patient}^Copy"
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if new_study_uid:
            ds.StudyInstanceUID = study_uid
            if n == 0:
                pixels = ds.pixel_array.copy()
                pixels.flat[0] = pixels.flat[0] + 1
                ds.PixelData = pixels.tobytes()
        ds.save_as(out / f"{n:04d}.dcm")
    return out
