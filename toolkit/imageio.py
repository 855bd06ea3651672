"""Reading, checking, hashing and de-identifying NIfTI files.

The content hash is the SHA-256 of the decoded voxel array (dtype, shape and bytes in C
order), so the same image saved as .nii or .nii.gz, or with another header, hashes the same.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.schemas.errors import IngestError

# NIfTI header text fields that scanners and converters fill with free text (names, dates).
_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


@dataclass
class Volume:
    """A decoded 3D NIfTI image and the facts the catalog keeps about it."""

    path: Path
    image: nib.Nifti1Image
    data: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    orientation: str
    hash: str

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> RAS+ mm."""
        return self.image.affine

    def fingerprint(self) -> bytes:
        """The near-duplicate fingerprint of :mod:`xds.fingerprint`."""
        from xds.fingerprint import fingerprint

        return fingerprint(self.data, self.image.affine)

    def scan_columns(self) -> dict:
        """The ``scans`` columns read off the image itself, for every ingest path."""
        return {
            "spacing": list(self.spacing),
            "shape": list(self.shape),
            "orientation": self.orientation,
            "image_hash": self.hash,
            "fingerprint": self.fingerprint(),
        }


def nifti_files(root: Path) -> list[Path]:
    """Every NIfTI file (.nii, .nii.gz) below ``root``, hidden files left out, sorted."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith(".")
    )


def read_volume(path: str | os.PathLike) -> Volume:
    """Load and check a 3D NIfTI image, decoding every voxel.

    Raises:
        IngestError: unreadable or truncated file, not 3D, or non-finite voxels; the
            message names the problem in one line.
    """
    path = Path(path)
    try:
        image = nib.load(path, mmap=False)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise IngestError(f"unreadable NIfTI ({type(exc).__name__}: {_short(exc)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise IngestError(f"not a NIfTI image ({type(image).__name__})")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise IngestError(f"expected a 3D image, got {data.ndim}D with shape {data.shape}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise IngestError("image holds NaN or infinite voxels")
    zooms = tuple(round(float(z), 5) for z in image.header.get_zooms()[:3])
    if min(zooms) <= 0:
        raise IngestError(f"invalid voxel spacing {zooms}")
    return Volume(
        path=path,
        image=image,
        data=data,
        spacing=zooms,
        shape=tuple(int(n) for n in data.shape),
        orientation="".join(nib.aff2axcodes(image.affine)),
        hash=voxel_hash(data),
    )


def write_volume(
    data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, slope: float | None = None
) -> Volume:
    """Save an array as NIfTI (dtype kept, no free text) and read it back as a :class:`Volume`.

    With ``slope``, readers decode ``data * slope`` (NIfTI's ``scl_slope``): integers that
    stand for real values at a fraction of the bytes. The returned volume holds the decoded
    voxels, so its hash is what an ingest of the file would compute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)
    return read_volume(path)


def voxel_hash(data: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes."""
    h = hashlib.sha256()
    h.update(f"{data.dtype.str}|{data.shape}|".encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


def has_free_text(image: nib.Nifti1Image) -> bool:
    """True when the header carries free text or extensions that could hold PHI."""
    header = image.header
    for name in _TEXT_FIELDS:
        if name in header and np.asarray(header[name]).tobytes().strip(b"\0 "):
            return True
    return bool(header.extensions)


def store_volume(volume: Volume, dest: Path, *, link: bool = True) -> None:
    """Put a volume at ``dest`` (a .nii.gz path) with no free text in its header.

    A clean .nii.gz source is hard-linked (or copied when ``link`` is False or the link
    fails); anything else is re-saved, which drops the header's text fields and extensions.
    """
    if not dest.name.endswith(".nii.gz"):
        raise ValueError(f"{dest}: managed volumes are .nii.gz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(dest.parent)
    # A name of its own per writer: two ingests of one file may store it at the same time.
    stem = dest.name[: -len(".nii.gz")]
    tmp = dest.with_name(f"{stem}.{os.getpid()}-{secrets.token_hex(4)}.part.nii.gz")
    if not has_free_text(volume.image) and volume.path.name.endswith(".nii.gz"):
        try:
            if not link:
                raise OSError("copy requested")
            os.link(volume.path, tmp)
        except OSError:
            shutil.copyfile(volume.path, tmp)
    else:
        image = nib.Nifti1Image(volume.data, volume.affine, header=volume.image.header.copy())
        for name in _TEXT_FIELDS:
            if name in image.header:
                image.header[name] = b""
        image.header.extensions.clear()
        nib.save(image, tmp)
    os.replace(tmp, dest)  # readers never see a half-written file


def sweep_partials(folder: Path) -> int:
    """Remove half-written files (``*.<pid>-<hex>.part.nii.gz``) whose writer is dead.

    A writer killed between writing and renaming (``kill -9``) leaves its temp file; the next
    store into the same folder removes it. Files of live writers are left alone.
    """
    removed = 0
    for path in folder.glob("*.part.nii.gz"):
        tag = path.name[: -len(".part.nii.gz")].rsplit(".", 1)[-1]
        pid = tag.split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """True while a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
