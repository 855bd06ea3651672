"""Arrow schemas of the catalog tables (DESIGN §3).

Each schema carries its table name and :data:`SCHEMA_VERSION` in its metadata, which the
catalog writes into every Delta table's configuration and every Parquet file it commits, so a
file found on its own still says what it is.

>>> from xds.schemas import schema_for
>>> schema_for("scans").field("sequence").type
DataType(string)
"""

from __future__ import annotations

import pyarrow as pa

from xds.schemas.errors import SchemaError

SCHEMA_VERSION = "8"
"""Bumped whenever a table's columns change. Version 2 added the DICOM acquisition columns
of ``scans``, the ``studies`` table and the harmonization columns of ``labels``; version 3
the ``evaluations``, ``metrics`` and ``set_metrics`` tables; version 4 the ``runs`` and
``predictions`` tables; version 5 replaced ``scans.acquisition_time_s`` (the time of day,
which the DICOM basic de-identification profile removes) by ``acquisition_time_key``, a
keyed hash of it; version 6 added ``studies.accession_key``; version 7 the ``qc`` table;
version 8 the ``remote_series`` table (series indexed in a PACS, not pulled yet).
``xds migrate`` brings an older catalog up to date."""

_TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()

SEQUENCES = ("T1W", "T2W", "OOP", "IP", "DWI", "ADC", "FLAIR", "CT", "PET", "SYN", "UNKNOWN")
"""Sequence vocabulary of the ``scans.sequence`` column (``SYN``: a generated image whose
protocol ``scans.protocol`` records, see :mod:`xds.synth`)."""
MODALITIES = ("MR", "CT", "PT", "SYN")
SEQUENCE_SOURCES = ("header", "rule", "manual", "adapter", "generator")
LABEL_ORIGINS = ("manual", "revised", "pseudo", "synthetic", "prediction")
ROLES = ("train", "val", "test", "unlabeled")
SEXES = ("F", "M", "O", "U")

_FIELDS: dict[str, list[pa.Field]] = {
    "subjects": [
        pa.field("subject_id", _STR, nullable=False),  # keyed pseudonym, never a source ID
        pa.field("dataset", _STR, nullable=False),
        pa.field("center", _STR, nullable=False),
        pa.field("sex", _STR),  # F, M, O or U
        pa.field("age", pa.float64()),  # years at first scan, capped at 90 (HIPAA)
        pa.field("age_bin", _STR),  # decade, e.g. "40-49"; "90+"
        pa.field("race", _STR),
        pa.field("ethnicity", _STR),
        pa.field("diagnosis", _STR),
        pa.field("extra", pa.map_(_STR, _STR)),
        pa.field("added_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),  # ingest run id
    ],
    "scans": [
        pa.field("scan_id", _STR, nullable=False),
        pa.field("subject_id", _STR, nullable=False),
        pa.field("study_id", _STR),
        pa.field("series_uid_hash", _STR),
        pa.field("dataset", _STR, nullable=False),
        pa.field("center", _STR, nullable=False),
        pa.field("modality", _STR, nullable=False),
        pa.field("sequence", _STR, nullable=False),
        pa.field("sequence_source", _STR, nullable=False),
        pa.field("vendor", _STR),
        pa.field("scanner_model", _STR),
        pa.field("field_strength", pa.float64()),  # tesla
        pa.field("spacing", pa.list_(pa.float64())),  # mm, voxel axes i, j, k
        pa.field("shape", pa.list_(pa.int32())),
        pa.field("orientation", _STR),  # axis codes, e.g. "RAS"
        pa.field("image_uri", _STR, nullable=False),
        pa.field("image_hash", _STR, nullable=False),  # sha256 of the decoded voxels
        pa.field("acquired_on", pa.date32()),  # shifted per subject
        pa.field("added_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),
        pa.field("status", _STR, nullable=False),  # ok | quarantined
        # Added in schema version 2 (DICOM ingest); null where the source does not say.
        pa.field("sequence_rule", _STR),  # the classification rule that fired
        pa.field("sequence_confidence", pa.float64()),  # 0..1
        pa.field("series_description", _STR),  # cleaned of PHI (PS3.15 clean descriptors)
        pa.field("body_part", _STR),
        pa.field("echo_time_ms", pa.float64()),
        pa.field("repetition_time_ms", pa.float64()),
        pa.field("inversion_time_ms", pa.float64()),
        pa.field("flip_angle_deg", pa.float64()),
        pa.field("contrast", pa.bool_()),  # a contrast agent was given
        pa.field("image_type", _STR),  # DICOM ImageType values joined by backslashes
        pa.field("protocol", pa.map_(_STR, _STR)),  # other acquisition facts
        pa.field("sidecar_uri", _STR),  # de-identified BIDS sidecar beside the image
        # Added in schema version 3 (leakage audit).
        pa.field("fingerprint", pa.binary()),  # world-grid cell means (xds.io.fingerprint)
        # keyed hash of the acquisition's time of day: equal for one acquisition registered
        # twice (the leakage audit's test), not reversible without the catalog's key
        pa.field("acquisition_time_key", _STR),
    ],
    "studies": [
        pa.field("study_id", _STR, nullable=False),  # keyed pseudonym of the study UID
        pa.field("subject_id", _STR, nullable=False),
        pa.field("dataset", _STR, nullable=False),
        pa.field("center", _STR, nullable=False),
        pa.field("study_date", pa.date32()),  # shifted per subject
        pa.field("age", pa.float64()),  # years at this study, capped at 90
        pa.field("modalities", pa.list_(_STR)),
        pa.field("n_series", pa.int32()),
        pa.field("added_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),
        # Added in schema version 6 (clinical sheets keyed by accession number): the keyed
        # pseudonym of the study's AccessionNumber, never the number itself.
        pa.field("accession_key", _STR),
    ],
    "labels": [
        pa.field("label_id", _STR, nullable=False),
        pa.field("scan_id", _STR, nullable=False),
        pa.field("uri", _STR, nullable=False),
        pa.field("hash", _STR, nullable=False),  # sha256 of the decoded voxels
        pa.field("label_map", _STR, nullable=False),  # label_maps.label_map_id
        pa.field("origin", _STR, nullable=False),
        pa.field("classes_present", pa.list_(_STR)),  # class names with >= 1 voxel
        pa.field("round", pa.int32()),
        pa.field("teacher_run", _STR),
        pa.field("quality", pa.map_(_STR, pa.float64())),
        pa.field("created_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),
        # Added in schema version 2 (harmonization).
        pa.field("classes_annotated", pa.list_(_STR)),  # classes the map labels (may be absent)
        pa.field("derived_from", _STR),  # label_id this one was harmonized from
        pa.field("class_set", _STR),  # the shared class set it was harmonized to
    ],
    "label_maps": [
        pa.field("label_map_id", _STR, nullable=False),
        pa.field("dataset", _STR, nullable=False),
        pa.field("indices", pa.list_(pa.int32()), nullable=False),
        pa.field("names", pa.list_(_STR), nullable=False),
        pa.field("source", _STR),  # where the map comes from (file, citation)
        pa.field("created_at", _TS, nullable=False),
    ],
    "cohorts": [
        pa.field("cohort_id", _STR, nullable=False),
        pa.field("name", _STR, nullable=False),
        pa.field("where_sql", _STR, nullable=False),
        pa.field("catalog_version", pa.int64(), nullable=False),
        pa.field("scan_ids", pa.list_(_STR), nullable=False),
        pa.field("n_scans", pa.int64(), nullable=False),
        pa.field("n_subjects", pa.int64(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ],
    "splits": [
        pa.field("split_id", _STR, nullable=False),
        pa.field("name", _STR, nullable=False),
        pa.field("cohort_id", _STR, nullable=False),
        pa.field("strategy", _STR, nullable=False),
        pa.field("params", _STR, nullable=False),  # JSON
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("scan_id", _STR, nullable=False),
        pa.field("subject_id", _STR, nullable=False),
        pa.field("fold", pa.int32(), nullable=False),
        pa.field("role", _STR, nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ],
    "evaluations": [
        pa.field("eval_id", _STR, nullable=False),
        pa.field("name", _STR, nullable=False),  # what `xds report NAME` asks for
        pa.field("predictions", _STR, nullable=False),  # folder (or run) evaluated
        pa.field("cohort_id", _STR, nullable=False),
        pa.field("split_id", _STR),
        pa.field("role", _STR),
        pa.field("fold", pa.int32()),
        pa.field("classes", pa.list_(_STR), nullable=False),
        pa.field("tau_mm", pa.float64(), nullable=False),
        pa.field("surface", _STR, nullable=False),  # surfel | voxel
        pa.field("hd", _STR, nullable=False),  # max | pooled
        pa.field("both_empty", _STR, nullable=False),
        pa.field("missing_distance", _STR, nullable=False),
        pa.field("trained_on", _STR),  # the training set, for cross-dataset matrices
        pa.field("catalog_version", pa.int64(), nullable=False),  # references read here
        pa.field("n_cases", pa.int64(), nullable=False),
        pa.field("errors", pa.list_(_STR)),  # cases that could not be scored, and why
        pa.field("created_at", _TS, nullable=False),
    ],
    "metrics": [  # one row per case x class
        pa.field("eval_id", _STR, nullable=False),
        pa.field("scan_id", _STR, nullable=False),
        pa.field("class_name", _STR, nullable=False),
        pa.field("annotated", pa.bool_(), nullable=False),  # the reference labels this class
        pa.field("dice", pa.float64()),
        pa.field("nsd", pa.float64()),
        pa.field("hd95_mm", pa.float64()),
        pa.field("assd_mm", pa.float64()),
        pa.field("vol_pred_ml", pa.float64()),
        pa.field("vol_ref_ml", pa.float64()),
        pa.field("vol_diff_ml", pa.float64()),
        pa.field("empty_pred", pa.bool_()),
        pa.field("empty_ref", pa.bool_()),
        pa.field("label_id", _STR),  # the reference label
        pa.field("prediction_hash", _STR),  # sha256 of the prediction's decoded voxels
    ],
    "set_metrics": [  # Set Dice (Pancakes) per set x class
        pa.field("eval_id", _STR, nullable=False),
        pa.field("set_by", _STR, nullable=False),  # the scan_view column that forms sets
        pa.field("set_value", _STR, nullable=False),
        pa.field("class_name", _STR, nullable=False),
        pa.field("set_dice", pa.float64()),
        pa.field("best_label", pa.int32()),  # the prediction label that matches best
        pa.field("n_images", pa.int32(), nullable=False),
    ],
    "runs": [  # one trained model
        pa.field("run_id", _STR, nullable=False),
        pa.field("name", _STR, nullable=False),  # what `xds predict NAME` asks for
        pa.field("backend", _STR, nullable=False),  # torch | nnunet
        pa.field("cohort_id", _STR, nullable=False),
        pa.field("split_id", _STR, nullable=False),
        pa.field("fold", pa.int32(), nullable=False),
        pa.field("catalog_version", pa.int64(), nullable=False),  # the version trained from
        pa.field("classes", pa.list_(_STR), nullable=False),  # output labels 1..n
        pa.field("groups", _STR),  # the column forming domain-generalization groups
        pa.field("method", _STR),  # DG objective (erm, groupdro, ...)
        pa.field("config", _STR, nullable=False),  # JSON, every training setting
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("code_version", _STR, nullable=False),  # xds version (+ git commit)
        pa.field("device", _STR, nullable=False),
        pa.field("n_train", pa.int64(), nullable=False),
        pa.field("epochs", pa.int32(), nullable=False),
        pa.field("final_loss", pa.float64()),
        pa.field("seconds", pa.float64(), nullable=False),  # training time of this call
        pa.field("uri", _STR, nullable=False),  # folder with the checkpoint
        pa.field("created_at", _TS, nullable=False),
    ],
    "predictions": [  # one folder of label maps a run predicted
        pa.field("prediction_id", _STR, nullable=False),
        pa.field("run_id", _STR, nullable=False),
        pa.field("cohort_id", _STR, nullable=False),
        pa.field("split_id", _STR),
        pa.field("role", _STR),
        pa.field("fold", pa.int32()),
        pa.field("scan_ids", pa.list_(_STR), nullable=False),
        pa.field("uri", _STR, nullable=False),  # folder of {scan_id}.nii.gz + dataset.json
        pa.field("device", _STR, nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ],
    "qc": [  # one row per scan: its quality measures and what stands out among its peers
        pa.field("scan_id", _STR, nullable=False),
        pa.field("image_hash", _STR, nullable=False),  # the voxels measured
        pa.field("label_id", _STR),  # the label measured with them (None: none)
        pa.field("qc_version", _STR, nullable=False),  # the measures' definitions
        pa.field("measures", pa.map_(_STR, pa.float64()), nullable=False),
        pa.field("flags", pa.list_(_STR)),  # None when nothing stands out
        pa.field("reasons", pa.list_(_STR)),  # one line per flag
        pa.field("score", pa.float64(), nullable=False),  # largest robust |z| behind a flag
        pa.field("peers", _STR, nullable=False),  # center x sequence | sequence | cohort
        pa.field("computed_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),  # the qc run
    ],
    "remote_series": [  # one row per series a PACS index found: metadata only, no image yet
        pa.field("scan_id", _STR, nullable=False),  # rmt-...: what cohorts list until pulled
        pa.field("subject_id", _STR, nullable=False),  # the same keyed pseudonym ingest gives
        pa.field("study_id", _STR),
        pa.field("series_uid_hash", _STR, nullable=False),
        pa.field("dataset", _STR, nullable=False),
        pa.field("center", _STR, nullable=False),
        pa.field("pacs", _STR, nullable=False),  # the connection it was indexed through
        pa.field("modality", _STR, nullable=False),
        pa.field("sequence", _STR, nullable=False),  # provisional: the header rules' answer
        pa.field("sequence_source", _STR, nullable=False),
        pa.field("sequence_rule", _STR),
        pa.field("sequence_confidence", pa.float64()),
        pa.field("vendor", _STR),
        pa.field("scanner_model", _STR),
        pa.field("field_strength", pa.float64()),
        pa.field("series_description", _STR),  # cleaned of PHI
        pa.field("body_part", _STR),
        pa.field("echo_time_ms", pa.float64()),
        pa.field("repetition_time_ms", pa.float64()),
        pa.field("inversion_time_ms", pa.float64()),
        pa.field("flip_angle_deg", pa.float64()),
        pa.field("contrast", pa.bool_()),
        pa.field("image_type", _STR),
        pa.field("acquired_on", pa.date32()),  # shifted per subject
        pa.field("acquisition_time_key", _STR),
        pa.field("n_instances", pa.int64(), nullable=False),  # what the PACS lists
        pa.field("estimated_bytes", pa.int64()),  # instances x (pixels + a header)
        # None until a pull retrieves it whole and the ingest refuses it: then "refused" (the
        # reason is in quarantine), and it leaves scan_view; an incomplete retrieval leaves
        # it None, to be tried again.
        pa.field("pull_state", _STR),
        pa.field("added_at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),  # the index run
    ],
    "quarantine": [
        pa.field("uri", _STR, nullable=False),  # path relative to the ingest root, pseudonymized
        pa.field("dataset", _STR),
        pa.field("center", _STR),
        pa.field("stage", _STR, nullable=False),
        pa.field("error", _STR, nullable=False),
        pa.field("at", _TS, nullable=False),
        pa.field("source", _STR, nullable=False),
    ],
}

TABLES: tuple[str, ...] = tuple(_FIELDS)
"""Names of the catalog tables, in creation order."""


def schema_for(table: str) -> pa.Schema:
    """The Arrow schema of a catalog table, with its name and version in the metadata.

    Raises:
        SchemaError: the table is not one of :data:`TABLES`.
    """
    try:
        fields = _FIELDS[table]
    except KeyError:
        raise SchemaError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None
    return pa.schema(fields, metadata={"xds.table": table, "xds.schema_version": SCHEMA_VERSION})


def to_table(table: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by column) as an Arrow table of ``table``'s schema.

    Missing optional columns become null; unknown keys and wrong types raise.

    Raises:
        SchemaError: a row has a column the schema lacks, or a value of the wrong type.
    """
    schema = schema_for(table)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise SchemaError(f"{table}: unknown column(s) {sorted(extra)}")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{table}: {exc}") from exc
