"""The near-duplicate threshold on images xds did not make: false alarms and misses.

The leakage audit calls two scans of different subject ids the same image when their
fingerprints (:mod:`xds.io.fingerprint`) correlate at or above ``THRESHOLD``. Three sets of
volumes, each original given seven disguises a re-export or a careless copy makes
(resampled to 1.5x the voxel size, cropped by 15 % per side, Gaussian noise of 5 % of the
range, re-quantized to 8 bits, stored flipped (the affine adjusted, as a re-export in
another orientation is), intensities rescaled linearly, and a gamma of 0.7):

- **real MR**: volumes converted by dcm2niix from the DICOM that nibabel and heudiconv ship
  (Siemens DWI and BOLD mosaics) and NIfTI, AFNI and Philips PAR/REC volumes that
  nibabel ships: different people and objects, each recentred on the scanner's origin (as
  a head or abdomen sits at the isocentre) so that different subjects overlap in space;
- **pictures**: scikit-image's grey-level photographs made into volumes (each slice the
  picture, smoothly shifted and faded along the third axis): textures no scanner made;
- **phantom**: one T1W scan of each of the phantom world's subjects, for comparison.

A *miss* is a copy whose correlation with its original is below the threshold; copies that
share fewer than ``MIN_OVERLAP`` cells with their original (volumes under about 70 mm a
side once cropped or resampled) cannot be compared at all and are counted apart. A *false
alarm* is a pair of different subjects at or above the threshold. Every pair of different
subjects is compared, disguises included.

    python -m benchmarks.near_duplicates [--quick] [--threshold 0.85]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from xds.ingest.dicom import dcm2niix_path
from xds.io.fingerprint import THRESHOLD, correlate, fingerprint, prepare

from .real_dicom import package_dir, stage_row
from .timing import report

REAL_DICOM = (  # (package, path): one volume each, one person or object each
    # (nibabel's philips_mprage.dcm.gz is left out: its pixels are all zero)
    ("nibabel", "nicom/tests/data/0.dcm"),
    ("heudiconv", "tests/data/axasc35.dcm"),
    ("heudiconv", "tests/data/b0dwiForFmap"),
)
REAL_NIBABEL = (
    "tests/data/example4d.nii.gz",
    "tests/data/example4d+orig.HEAD",
    "tests/data/scaled+tlrc.HEAD",
    "tests/data/phantom_EPI_asc_CLEAR_2_1.PAR",
)
PICTURES = ("camera", "moon", "brick", "grass", "gravel", "page", "text", "coins", "clock",
            "cell", "microaneurysms", "shepp_logan_phantom", "hubble_deep_field", "retina",
            "astronaut", "coffee", "chelsea", "rocket")  # fmt: skip


def _first_volume(image) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    return data, image.affine.copy()


def real_volumes(work: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k, (package, rel) in enumerate(REAL_DICOM):
        into, converted = work / f"dcm{k}", work / f"nii{k}"
        if not stage_row({"package": package, "path": rel}, into):
            continue  # not installed
        converted.mkdir()
        subprocess.run([dcm2niix_path(), "-z", "n", "-b", "n", "-f", "v", "-o", str(converted),
                        str(into)], capture_output=True, check=False)  # fmt: skip
        nii = sorted(converted.glob("*.nii"))
        if nii:
            out[f"{package}:{Path(rel).name}"] = _first_volume(nib.load(nii[0]))
    base = package_dir("nibabel")
    for rel in REAL_NIBABEL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f"nibabel:{Path(rel).name}"] = _first_volume(nib.load(base / rel))
    return {name: _recentre(*v) for name, v in out.items()}


def picture_volumes(depth: int = 48) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-image's photographs as volumes: slices shifted and faded along z."""
    from skimage import data as samples
    from skimage.color import rgb2gray
    from skimage.transform import resize

    out = {}
    for name in PICTURES:
        try:
            picture = getattr(samples, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
            continue
        picture = rgb2gray(picture[..., :3]) if picture.ndim == 3 else picture.astype(float)
        picture = resize(picture, (160, 160), anti_aliasing=True)
        z = np.linspace(-1, 1, depth)
        volume = np.stack([
            ndimage.shift(picture, (8 * t, -6 * t), order=1, mode="nearest")
            * (1.2 - 0.5 * t * t) for t in z
        ], axis=-1).astype(np.float32)  # fmt: skip
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        out[f"skimage:{name}"] = _recentre(volume, affine)
    return out


def phantom_volumes(work: Path, subjects: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from xds.phantoms import generate_world

    manifest = generate_world(work / "phantom", centers=4, subjects_per_center=subjects,
                              sequences=("T1W",), seed=11, jobs=2, broken=False)  # fmt: skip
    out = {}
    for path in sorted((work / "phantom").rglob("*.nii.gz")):
        rel = str(path.relative_to(work / "phantom")).lower()
        if any(w in rel for w in ("label", "seg", "mask")):
            continue
        out[f"phantom:{len(out)}"] = _first_volume(nib.load(path))
    assert manifest["n_scans"] >= len(out)
    return out


def _recentre(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image with its centre at the scanner origin (where the body sits)."""
    centre = affine @ np.array([*((np.asarray(data.shape[:3]) - 1) / 2), 1.0])
    moved = affine.copy()
    moved[:3, 3] -= centre[:3]
    return data, moved


def disguises(data: np.ndarray, affine: np.ndarray, rng) -> dict[str, tuple]:
    """Seven copies of one image as re-exports and careless copies make them."""
    out = {}
    zoom = 1 / 1.5
    resampled = ndimage.zoom(data, zoom, order=1)
    scale = np.diag([*(np.asarray(data.shape) / np.asarray(resampled.shape)), 1.0])
    out["resampled"] = (resampled, affine @ scale)
    cut = [max(1, int(0.15 * n)) for n in data.shape]
    cropped = data[cut[0] : -cut[0], cut[1] : -cut[1], cut[2] : -cut[2]]
    shifted = affine.copy()
    shifted[:3, 3] = (affine @ np.array([*cut, 1.0]))[:3]
    out["cropped"] = (cropped, shifted)
    span = float(np.percentile(data, 99) - np.percentile(data, 1)) or 1.0
    out["noisy"] = (data + rng.normal(0, 0.05 * span, data.shape).astype(np.float32), affine)
    low, high = float(data.min()), float(data.max())
    out["8-bit"] = (np.round((data - low) / max(high - low, 1e-6) * 255), affine)
    flip = affine.copy()
    flip[:3, 0] = -affine[:3, 0]
    flip[:3, 3] = (affine @ np.array([data.shape[0] - 1, 0, 0, 1.0]))[:3]
    out["flipped"] = (data[::-1].copy(), flip)
    out["rescaled"] = (data * 0.37 + 50, affine)
    positive = (data - low) / max(high - low, 1e-6)
    out["gamma 0.7"] = (positive**0.7, affine)
    return out


def measure(volumes: dict, threshold: float, seed: int = 0) -> dict:
    """Copy correlations (with their disguise) and different-subject correlations."""
    rng = np.random.default_rng(seed)
    prints: dict[str, list[tuple[str, object]]] = {}
    for name, (data, affine) in volumes.items():
        prints[name] = [("original", prepare(fingerprint(data, affine)))]
        for kind, (d, a) in disguises(data, affine, rng).items():
            prints[name].append((kind, prepare(fingerprint(np.asarray(d, np.float32), a))))
    copies, missed, small = [], [], []
    for name, items in prints.items():
        original = items[0][1]
        for kind, fp in items[1:]:
            r = correlate(original, fp)[0] if original is not None and fp is not None else np.nan
            if np.isnan(r):
                small.append(f"{name} {kind}")
                continue
            copies.append(r)
            if r < threshold:
                missed.append(f"{name} {kind} ({r:.2f})")
    others, alarms = [], []
    for a, b in itertools.combinations(prints, 2):
        for (ka, fa), (kb, fb) in itertools.product(prints[a], prints[b]):
            if fa is None or fb is None:
                continue
            r = correlate(fa, fb)[0]
            others.append(r)
            if r >= threshold:
                alarms.append(f"{a} {ka} ~ {b} {kb} ({r:.2f})")
    copies, others = np.asarray(copies), np.asarray(others)
    compared = others[~np.isnan(others)]
    return {
        "volumes": len(volumes),
        "copies": len(copies),
        "miss": len(missed) / max(len(copies), 1),
        "missed": missed,
        "too_small": small,
        "pairs": len(others),
        "compared": len(compared),
        "false_alarm": len(alarms) / max(len(others), 1),
        "alarms": alarms,
        "copy_quantiles": np.nanpercentile(copies, [0, 5, 50]) if len(copies) else [],
        "other_quantiles": np.percentile(compared, [50, 95, 99, 100]) if len(compared) else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--quick", action="store_true", help="fewer phantom subjects")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xds-neardup-"))
    try:
        sets = {
            "real MR": real_volumes(work),
            "pictures": picture_volumes(),
            "phantom": phantom_volumes(work, 3 if args.quick else 6),
        }
        for name, volumes in sets.items():
            m = measure(volumes, args.threshold)
            print(f"{name}: {m['volumes']} volumes, {m['copies']} disguised copies compared "
                  f"({len(m['too_small'])} too small to compare), "
                  f"{m['pairs']} different-subject pairs ({m['compared']} overlapping enough "
                  "to compare)")  # fmt: skip
            cq, oq = m["copy_quantiles"], m["other_quantiles"]
            if len(cq):
                print(f"  copies: correlation min {cq[0]:.3f}, 5th percentile {cq[1]:.3f}, "
                      f"median {cq[2]:.3f}")  # fmt: skip
            if len(oq):
                print(f"  different subjects: median {oq[0]:.3f}, 95th percentile {oq[1]:.3f}, "
                      f"99th {oq[2]:.3f}, max {oq[3]:.3f}")  # fmt: skip
            for line in m["missed"][:12] + m["alarms"][:12] + m["too_small"][:12]:
                print(f"    {line}")
            common = {"ours": f"fingerprint correlation >= {args.threshold}",
                      "goal": None, "unit": ""}  # fmt: skip
            report("near_duplicates", f"near-duplicate misses, {name} ({m['copies']} copies "
                   f"of {m['volumes']} volumes)", baseline="disguised copies (7 kinds)",
                   value=m["miss"], note=f"{len(m['too_small'])} copies too small to compare; "
                   f"copies' lowest correlation {m['copy_quantiles'][0]:.3f}", **common)
            report("near_duplicates", f"near-duplicate false alarms, {name} ({m['pairs']} "
                   "pairs)", baseline="pairs of different subjects", value=m["false_alarm"],
                   note=f"different subjects' highest correlation {m['other_quantiles'][3]:.3f}",
                   **common)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
