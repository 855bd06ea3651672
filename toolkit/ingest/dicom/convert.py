"""Convert one series with dcm2niix, classify it, de-identify and store it (a worker's job)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xds.ingest.classify import classify, mentions_contrast
from xds.io.deid import clean_sidecar, clean_text
from xds.io.images import read_volume, store_volume
from xds.io.parallel import set_parent_death_signal
from xds.schemas.errors import IngestError
from xds.schemas.ids import stable_id


@dataclass(frozen=True)
class SeriesJob:
    """One series for a conversion worker: its files, where to store it, what it is."""

    root: str
    files: tuple[str, ...]
    workdir: str
    catalog_root: str
    dataset: str
    subject_id: str
    facts: dict
    phi: tuple[str, ...]
    override: str | None
    override_rule: str | None
    label: str  # how problems name the series (scrubbed of PHI before it is stored)
    dcm2niix: str  # the converter, found once by the parent
    max_voxels: int | None = None


def dcm2niix_path() -> str:
    """The dcm2niix executable: the one the ``dcm2niix`` Python package ships, else PATH's.

    Raises:
        IngestError: neither is installed.
    """
    try:
        import dcm2niix

        path = Path(dcm2niix.bin_path if hasattr(dcm2niix, "bin_path") else dcm2niix.bin)
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if not found:
        raise IngestError("dcm2niix not found: pip install dcm2niix")
    return found


def convert_series(job: SeriesJob) -> dict:
    """Worker: dcm2niix one series, then check, classify, de-identify and store each output."""
    out: dict = {"scans": [], "problems": []}
    work = Path(job.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    (work / "out").mkdir()
    for i, rel in enumerate(job.files):  # neutral names: source names may carry PHI
        os.symlink(Path(job.root) / rel, work / "in" / f"{i:06d}.dcm")
    try:
        proc = subprocess.run(
            [
                job.dcm2niix,
                "-z",
                "n",
                "-b",
                "y",
                "-ba",
                "y",
                "-f",
                "x",
                "-o",
                str(work / "out"),
                str(work / "in"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=_die_with_worker,
        )
    except subprocess.TimeoutExpired:
        out["problems"].append((job.label, "convert", "dcm2niix took longer than 600 s"))
        return out
    outputs = sorted((work / "out").glob("*.nii"))
    if proc.returncode != 0 or not outputs:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error|unable|unsupported|skip", ln, re.I)]
        reason = clean_text((errors or lines or ["no output"])[-1], list(job.phi), limit=160)
        out["problems"].append((job.label, "convert", f"dcm2niix rejected the series: {reason}"))
        shutil.rmtree(work, ignore_errors=True)
        return out
    folder = Path("data") / job.dataset / job.subject_id
    for nii in outputs:
        try:
            volume = read_volume(nii, limit=job.max_voxels)
        except IngestError as exc:
            n = len(outputs)
            which = f"output {outputs.index(nii) + 1} of {n}: " if n > 1 else ""
            out["problems"].append((job.label, "convert", f"{which}{exc}"))
            continue
        sidecar_path = nii.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        facts = dict(job.facts)
        if sidecar.get("EchoTime") is not None:
            facts["te"] = round(float(sidecar["EchoTime"]) * 1000.0, 4)
        if sidecar.get("ImageType"):
            facts["image_type"] = list(sidecar["ImageType"])
        if job.override:
            sequence, rule, confidence, source = job.override, job.override_rule, 1.0, "manual"
        else:
            found = classify(facts)
            sequence, rule, confidence, source = (
                found.sequence,
                found.rule,
                round(found.confidence, 3),
                "rule",
            )
        scan_id = stable_id("scn", job.subject_id, volume.hash)
        image_uri = (folder / f"{scan_id}.nii.gz").as_posix()
        sidecar_uri = (folder / f"{scan_id}.json").as_posix()
        store_volume(volume, Path(job.catalog_root) / image_uri, link=False)
        cleaned = clean_sidecar(sidecar, list(job.phi))
        tmp = Path(job.catalog_root) / f"{sidecar_uri}.{os.getpid()}.part"
        tmp.write_text(json.dumps(cleaned, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, Path(job.catalog_root) / sidecar_uri)
        protocol = {
            k: "\\".join(v) if isinstance(v, list) else str(v)
            for k, v in (
                ("scanning_sequence", facts.get("scanning_sequence")),
                ("sequence_variant", facts.get("sequence_variant")),
                ("scan_options", facts.get("scan_options")),
                ("mr_acquisition_type", facts.get("mr_acquisition_type")),
                ("sequence_name", facts.get("sequence_name")),
                ("b_value", facts.get("b_value")),
                ("echo_number", sidecar.get("EchoNumber")),
                ("converter", sidecar.get("ConversionSoftwareVersion")),
            )
            if v not in (None, "", [])
        }
        out["scans"].append(
            {
                "scan_id": scan_id,
                "subject_id": job.subject_id,
                **acquisition_columns(facts),
                "sequence": sequence,
                "sequence_source": source,
                "sequence_rule": rule,
                "sequence_confidence": confidence,
                "image_uri": image_uri,
                **volume.scan_columns(),
                "protocol": protocol,
                "sidecar_uri": sidecar_uri,
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    return out


def acquisition_columns(facts: dict) -> dict:
    """The ``scans`` columns a series' header facts give (:func:`series_facts`' keys).

    Shared by conversion and by a PACS index, which registers a series from one
    instance's header before any image is there.
    """
    contrast = True if facts.get("contrast_agent") else None
    if contrast is None and mentions_contrast(facts.get("description") or ""):
        contrast = True
    return {
        "study_id": facts["study_id"],
        "series_uid_hash": facts["series_uid_hash"],
        "modality": (facts.get("modality") or "MR").upper(),
        "vendor": facts.get("manufacturer"),
        "scanner_model": facts.get("model"),
        "field_strength": facts.get("field_strength"),
        "acquisition_time_key": facts.get("acquisition_time_key"),
        "acquired_on": dt.date.fromisoformat(facts["acquired_on"])
        if facts.get("acquired_on")
        else None,
        "series_description": facts.get("description"),
        "body_part": facts.get("body_part"),
        "echo_time_ms": facts.get("te"),
        "repetition_time_ms": facts.get("tr"),
        "inversion_time_ms": facts.get("ti"),
        "flip_angle_deg": facts.get("flip"),
        "contrast": contrast,
        "image_type": "\\".join(facts.get("image_type") or []) or None,
    }


def _die_with_worker() -> None:
    """In dcm2niix's process before it starts: end when the worker that ran it ends.

    Runs between fork and exec, so it only calls into libc, resolved beforehand by the
    worker's own :func:`xds.io.parallel.die_with_parent`.
    """
    set_parent_death_signal(9)  # SIGKILL


