"""Views every catalog connection has, on top of one view per table.

``scan_view`` is what ``--where`` filters: one row per usable scan (``status`` ok) with its
subject's demographics and its label availability (``classes``: classes with voxels in some
label; ``annotated_classes``: classes some label map annotates, present or not;
``label_origin``: the origin of the label a cohort uses, by the merge rule manual > revised
> pseudo > synthetic > prediction) and its quality check (``qc_done``, ``qc_flags``: None
when nothing stood out, ``qc_score``; see ``xds qc``), so
``--where "sequence='T2W' AND sex='F' AND list_contains(classes, 'pancreas')"`` needs no
join by hand. Series a PACS index registered and no pull has brought yet are rows too, with
``status = 'remote'``, their header facts, a provisional sequence and no image (``image_uri``
NULL, ``n_instances`` from the index): cohorts can choose what to pull, and export, training
and evaluation refuse them (:func:`xds.catalog.cohorts.cohort_scans`). A remote series
leaves the view once a scan with its series hash is in ``scans``, or once a pull brought it
whole and the ingest refused it (``remote_series.pull_state``; the reason is in
quarantine). ``metric_view`` is one row per evaluated case x class with the evaluation's
name and every ``scan_view`` column: what ``xds report`` groups by.
"""

from xds.schemas.tables import LABEL_ORIGINS

_ORIGIN_RANK = " ".join(f"WHEN '{o}' THEN {i}" for i, o in enumerate(LABEL_ORIGINS))

SCAN_VIEW = f"""
CREATE VIEW scan_view AS
WITH label_summary AS (
    SELECT scan_id,
           count(*) AS n_labels,
           list_sort(list_distinct(flatten(list(classes_present)))) AS classes,
           list_sort(list_distinct(list(origin))) AS label_origins,
           arg_min(origin, CASE origin {_ORIGIN_RANK} ELSE 99 END) AS label_origin,
           list_sort(list_distinct(flatten(list(coalesce(classes_annotated, []::VARCHAR[])))))
               AS annotated_classes
    FROM labels
    GROUP BY scan_id
)
SELECT s.scan_id, s.subject_id, s.study_id, s.series_uid_hash, s.dataset, s.center, s.modality,
       s.sequence,
       s.sequence_source, s.vendor, s.scanner_model, s.field_strength, s.spacing, s.shape,
       s.orientation, s.image_uri, s.image_hash, s.acquired_on, s.added_at,
       s.sequence_rule, s.sequence_confidence, s.series_description, s.body_part,
       s.echo_time_ms, s.repetition_time_ms, s.inversion_time_ms, s.flip_angle_deg,
       s.contrast, s.image_type, s.acquisition_time_key,
       p.sex, p.age, p.age_bin, p.race, p.ethnicity, p.diagnosis,
       coalesce(l.n_labels, 0) > 0 AS has_label,
       coalesce(l.n_labels, 0) AS n_labels,
       coalesce(l.classes, []::VARCHAR[]) AS classes,
       coalesce(l.label_origins, []::VARCHAR[]) AS label_origins,
       l.label_origin,
       coalesce(l.annotated_classes, []::VARCHAR[]) AS annotated_classes,
       q.scan_id IS NOT NULL AS qc_done, q.flags AS qc_flags, q.score AS qc_score,
       s.status, NULL::BIGINT AS n_instances
FROM scans s
LEFT JOIN subjects p USING (subject_id)
LEFT JOIN label_summary l USING (scan_id)
LEFT JOIN qc q USING (scan_id)
WHERE s.status = 'ok'
UNION ALL
SELECT r.scan_id, r.subject_id, r.study_id, r.series_uid_hash, r.dataset, r.center, r.modality,
       r.sequence,
       r.sequence_source, r.vendor, r.scanner_model, r.field_strength, NULL, NULL,
       NULL, NULL, NULL, r.acquired_on, r.added_at,
       r.sequence_rule, r.sequence_confidence, r.series_description, r.body_part,
       r.echo_time_ms, r.repetition_time_ms, r.inversion_time_ms, r.flip_angle_deg,
       r.contrast, r.image_type, r.acquisition_time_key,
       p.sex, p.age, p.age_bin, p.race, p.ethnicity, p.diagnosis,
       false, 0, []::VARCHAR[], []::VARCHAR[], NULL, []::VARCHAR[],
       false, NULL, NULL,
       'remote', r.n_instances
FROM remote_series r
LEFT JOIN subjects p USING (subject_id)
WHERE r.pull_state IS NULL AND r.series_uid_hash NOT IN (
    SELECT series_uid_hash FROM scans WHERE status = 'ok' AND series_uid_hash IS NOT NULL
)
"""

METRIC_VIEW = """
CREATE VIEW metric_view AS
SELECT e.name AS evaluation, e.trained_on, e.tau_mm, e.surface,
       m.* EXCLUDE (eval_id), s.* EXCLUDE (scan_id)
FROM metrics m
JOIN evaluations e USING (eval_id)
LEFT JOIN scan_view s USING (scan_id)
"""

VIEWS: dict[str, tuple[tuple[str, ...], str]] = {
    "scan_view": (("scans", "subjects", "labels", "qc", "remote_series"), SCAN_VIEW),
    "metric_view": (("metrics", "evaluations", "scans", "subjects", "labels", "qc",
                     "remote_series"),
                    METRIC_VIEW),
}
"""View name -> (tables it reads, CREATE statement), created on every connection that has
those tables."""
