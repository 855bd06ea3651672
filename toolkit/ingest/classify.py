"""Sequence classification of a DICOM series from its tags (docs/dicom.md lists the rules).

Physics first, names last: what a scanner writes into ``Modality``, ``ImageType``,
``ScanningSequence``, ``SequenceVariant``, the diffusion b-value and TE/TR/TI/flip angle
says what a series is whatever the site called it; the vendor's series description (Siemens
``t2_haste``, GE ``SSFSE``, Philips ``THRIVE``) decides only when the tags do not. Rules are
tried in order and the first that fires names the sequence; the result carries the rule and a
confidence in [0, 1]. A description that disagrees with a tag rule lowers its confidence.

Opposed- and in-phase gradient echoes are told apart by the echo time: fat precesses about
3.4 ppm slower than water, so the two are in phase every 1 / (3.4e-6 * 42.577 MHz/T * B0)
seconds (4.6 ms at 1.5 T, 2.3 ms at 3 T) and opposed half-way between.

>>> classify({"modality": "MR", "scanning_sequence": ["GR"], "tr": 180, "te": 2.3,
...           "field_strength": 1.5}).sequence
'OOP'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xds.ingest.sequences import sequence_from_name

FAT_WATER_PPM = 3.4
GAMMA_MHZ_PER_T = 42.577

_OPPOSED = {"OPP_PHASE", "OUT_PHASE", "OP", "OUT PHASE", "OPPOSED", "OPP"}
_IN = {"IN_PHASE", "IP", "IN PHASE", "INPHASE"}
_WATER = {"W", "WATER"}
_FAT = {"F", "FAT"}
_ADC = {"ADC", "ADC_MAP", "ADC_UNSPECIFIED"}
_DIFFUSION = {"DIFFUSION", "TRACEW", "TRACE", "DWI"}
# Phase images: Siemens writes P as ImageType's third value; a bare PHASE is no sign (dcm2niix
# splits OPP_PHASE and IN_PHASE into two words)
_PHASE = {"PHASE MAP", "FIELD_MAP", "FIELDMAP"}
_ENHANCED_CONTRAST = {  # AcquisitionContrast (0008,9209) of enhanced MR objects
    "T1": "T1W",
    "T2": "T2W",
    "DIFFUSION": "DWI",
    "FLUID_ATTENUATED": "FLAIR",
}
_CONTRAST_WORDS = re.compile(r"(\+c|\bpost\b|\bgd\b|gado|\bkm\b|contrast|\bce\b)", re.I)


@dataclass(frozen=True)
class Classification:
    """A series' sequence, the rule that named it and how sure the rule is."""

    sequence: str
    rule: str
    confidence: float


def fat_water_phase(te_ms: float, field_strength: float) -> float:
    """Fat-water phase at echo time ``te_ms`` in cycles, modulo 1 (0 in phase, 0.5 opposed)."""
    shift_hz = FAT_WATER_PPM * GAMMA_MHZ_PER_T * field_strength
    return (te_ms * 1e-3 * shift_hz) % 1.0


def classify(facts: dict) -> Classification:
    """The sequence of a series described by ``facts`` (keys as :func:`series_facts` gives).

    Keys (all optional): modality, image_type (list), acquisition_contrast (enhanced MR),
    scanning_sequence (list), sequence_variant (list), mr_acquisition_type, te, tr, ti, flip
    (ms / degrees), field_strength (T), b_value, description (series description and
    protocol name).
    """
    found = _by_tags(facts)
    named, _ = sequence_from_name(" ".join(_text(facts)))
    if found is None:
        if named != "UNKNOWN":
            return Classification(named, f"name:{named}", 0.6)
        return Classification("UNKNOWN", "none", 0.0)
    if named == "UNKNOWN" or found.sequence in ("CT", "PET"):
        return found
    if named == found.sequence:
        return Classification(found.sequence, found.rule, min(1.0, found.confidence + 0.04))
    # Opposed/in-phase series are often named after the pair ("opp-in") or "t1": the echo
    # time decides, and a T1 name agrees with both.
    if found.sequence in ("OOP", "IP") and named in ("OOP", "IP", "T1W"):
        return found
    return Classification(
        found.sequence, f"{found.rule} (name says {named})", found.confidence - 0.2
    )


def _by_tags(f: dict) -> Classification | None:
    modality = (f.get("modality") or "").upper()
    if modality == "CT":
        return Classification("CT", "modality:CT", 1.0)
    if modality in ("PT", "PET"):
        return Classification("PET", "modality:PT", 1.0)
    if modality and modality != "MR":
        return Classification("UNKNOWN", f"modality:{modality}", 0.0)
    image_type = {str(v).upper().strip() for v in f.get("image_type") or ()}
    scanning = {str(v).upper().strip() for v in f.get("scanning_sequence") or ()}
    te, tr, ti = f.get("te"), f.get("tr"), f.get("ti")
    b0 = f.get("field_strength")
    flavour = [str(v).upper().strip() for v in (f.get("image_type") or ())[2:3]]
    if image_type & _PHASE or flavour == ["P"]:
        return Classification("UNKNOWN", "image_type:phase", 0.9)
    if image_type & _ADC:
        return Classification("ADC", "image_type:ADC", 0.95)
    if (f.get("b_value") or 0) > 0 or image_type & _DIFFUSION:
        return Classification("DWI", "diffusion:b-value", 0.95)
    if image_type & _OPPOSED:
        return Classification("OOP", "image_type:opposed-phase", 0.97)
    if image_type & _IN:
        return Classification("IP", "image_type:in-phase", 0.97)
    if image_type & _WATER:
        return Classification("T1W", "image_type:dixon-water", 0.8)
    if image_type & _FAT:
        return Classification("UNKNOWN", "image_type:dixon-fat", 0.5)
    contrast = str(f.get("acquisition_contrast") or "").upper()
    if contrast in _ENHANCED_CONTRAST:  # enhanced (multi-frame) MR says it outright
        found = _ENHANCED_CONTRAST[contrast]
        return Classification(found, f"acquisition_contrast:{contrast}", 0.9)
    if "IR" in scanning and ti:
        if ti >= 1500 and (te or 0) >= 60:
            return Classification("FLAIR", "ir:long-ti", 0.9)
        if 80 <= ti <= 300:
            return Classification("T2W", "ir:stir", 0.8)
    if "IR" in scanning and "GR" in scanning and te is not None and te < 15:
        # an inversion-prepared spoiled gradient echo (MPRAGE, TFE): T1-weighted; its echo
        # time says nothing of fat-water phase, whatever it happens to be
        return Classification("T1W", "ir-gre:t1", 0.85)
    if "GR" in scanning and te is not None and tr is not None:
        if tr >= 50:
            if b0:
                phase = fat_water_phase(te, b0)
                if abs(phase - 0.5) < 0.15:
                    return Classification("OOP", "te:opposed-phase", 0.9)
                if phase < 0.15 or phase > 0.85:
                    return Classification("IP", "te:in-phase", 0.9)
            if te < 15:
                return Classification("T1W", "gre:t1", 0.75)
            return None  # T2*-weighted GRE: no class of its own
        return Classification("T1W", "gre:spoiled-short-tr", 0.85)
    if "SE" in scanning and te is not None and tr is not None:
        if te >= 60 and tr >= 800:
            return Classification("T2W", "se:long-te", 0.9)
        if te < 30 and tr < 1000:
            return Classification("T1W", "se:short-te-tr", 0.85)
    return None


def _text(f: dict) -> list[str]:
    return [str(f.get(k) or "") for k in ("description", "protocol_name", "sequence_name")]


def mentions_contrast(text: str) -> bool:
    """True when a description says contrast was given (``+C``, ``post``, ``KM``, ``Gd``)."""
    return bool(_CONTRAST_WORDS.search(text or ""))
