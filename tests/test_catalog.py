import datetime as dt

import pytest
from deltalake import DeltaTable, write_deltalake

from xds.catalog import Catalog
from xds.catalog.deltas import schema_version
from xds.schemas import SCHEMA_VERSION, CatalogError, CatalogNotFoundError, SchemaError, to_table

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _q(uri: str, error: str = "broken") -> dict:
    return {"uri": uri, "stage": "read", "error": error, "at": NOW, "source": "test"}


def test_create_open_and_versions(tmp_path):
    cat = Catalog.create(tmp_path / "c")
    assert cat.version == 0
    with cat.transaction("one") as txn:
        txn.append("quarantine", [_q("a.nii.gz")])
    with cat.transaction("two") as txn:
        txn.append("quarantine", [_q("b.nii.gz")])
    assert cat.version == 2
    assert Catalog.open(tmp_path / "c").count("quarantine") == 2
    assert Catalog.open(tmp_path / "c", version=1).count("quarantine") == 1
    assert [h["operation"] for h in cat.history()] == ["create", "one", "two"]
    with pytest.raises(CatalogError, match="version 7 does not exist"):
        Catalog.open(tmp_path / "c", version=7)


def test_open_missing_and_create_twice(tmp_path):
    with pytest.raises(CatalogNotFoundError):
        Catalog.open(tmp_path / "nowhere")
    Catalog.create(tmp_path / "c")
    with pytest.raises(CatalogError, match="already exists"):
        Catalog.create(tmp_path / "c")


def test_schema_version_lives_in_the_delta_log(tmp_path):
    cat = Catalog.create(tmp_path / "c")
    for table in ("subjects", "scans", "labels", "cohorts", "splits", "quarantine"):
        assert schema_version(cat.root, table) == SCHEMA_VERSION
    with cat.transaction("one") as txn:
        txn.append("quarantine", [_q("a.nii.gz")])
    meta = DeltaTable(str(cat.root / "quarantine")).history(1)[0]
    assert meta["xds.schema_version"] == SCHEMA_VERSION


def test_failed_transaction_writes_nothing(tmp_path):
    cat = Catalog.create(tmp_path / "c")

    def crash():
        with cat.transaction("boom") as txn:
            txn.append("quarantine", [_q("a.nii.gz")])
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        crash()
    assert cat.version == 0
    assert Catalog.open(cat.root).count("quarantine") == 0
    with pytest.raises(SchemaError), cat.transaction("bad row") as txn:
        txn.append("quarantine", [{**_q("a"), "patient_name": "x"}])
    assert Catalog.open(cat.root).version == 0


def test_orphan_table_versions_stay_invisible_and_are_undone(tmp_path):
    cat = Catalog.create(tmp_path / "c")
    # A writer that died after its table append but before its catalog version row:
    write_deltalake(
        str(cat.root / "quarantine"), to_table("quarantine", [_q("orphan")]), mode="append"
    )
    assert Catalog.open(cat.root).count("quarantine") == 0
    with cat.transaction("next") as txn:
        txn.append("quarantine", [_q("kept")])
    rows = Catalog.open(cat.root).read("quarantine").column("uri").to_pylist()
    assert rows == ["kept"]


def test_scan_view_joins_subjects_and_label_availability(catalog):
    row = catalog.sql("SELECT * FROM scan_view LIMIT 1").to_pylist()[0]
    for column in ("sequence", "center", "sex", "age", "age_bin", "has_label", "classes"):
        assert column in row
    n_ok = catalog.sql("SELECT count(*) AS n FROM scans WHERE status = 'ok'").to_pylist()[0]["n"]
    assert catalog.count("scan_view") == n_ok


def test_many_commits_stay_fast_to_open(tmp_path):
    cat = Catalog.create(tmp_path / "c")
    for i in range(40):
        with cat.transaction(f"commit {i}") as txn:
            txn.append("quarantine", [_q(f"{i}.nii.gz")])
    latest = Catalog.open(cat.root)
    assert latest.count("quarantine") == 40
    # Small files are merged, so opening and querying does not grow with the commit count.
    assert len(latest.files("quarantine")) <= 17
    assert len(DeltaTable(str(cat.root / "_versions")).file_uris()) <= 17
    # Time travel still sees each old version exactly.
    assert Catalog.open(cat.root, version=5).count("quarantine") == 5
    assert Catalog.open(cat.root, version=30).read("quarantine").num_rows == 30


def test_unique_by_drops_rows_the_catalog_already_holds(tmp_path):
    cat = Catalog.create(tmp_path / "c")
    with cat.transaction("first") as txn:
        txn.append("quarantine", [_q("a"), _q("b"), _q("a")], unique_by=["uri", "error"])
    assert txn.written == {"quarantine": 2}
    with cat.transaction("again") as txn:
        txn.append("quarantine", [_q("a"), _q("c")], unique_by=["uri", "error"])
    assert txn.written == {"quarantine": 1}
    with cat.transaction("nothing new") as txn:
        txn.append("quarantine", [_q("c")], unique_by=["uri", "error"])
    assert txn.written == {}
    assert cat.version == 2
    uris = sorted(Catalog.open(cat.root).read("quarantine").column("uri").to_pylist())
    assert uris == ["a", "b", "c"]


def test_rows_for_returns_only_the_asked_scans(catalog):
    ids = catalog.read("scans").column("scan_id").to_pylist()
    rows = catalog.rows_for("scans", [ids[3], ids[1], "scn-missing"], ["scan_id", "sequence"])
    assert rows.column_names == ["scan_id", "sequence"]
    assert rows.column("scan_id").to_pylist() == sorted([ids[1], ids[3]])


def _downgrade_to_v1(root) -> None:
    """Make a catalog look as xds schema version 1 wrote it: no studies table, short scans."""
    import json
    import shutil

    from xds.catalog.deltas import VERSIONS_SCHEMA, VERSIONS_TABLE

    v2_only = {"sequence_rule", "sequence_confidence", "series_description", "body_part",
               "echo_time_ms", "repetition_time_ms", "inversion_time_ms", "flip_angle_deg",
               "contrast", "image_type", "protocol", "sidecar_uri", "classes_annotated",
               "derived_from", "class_set", "fingerprint", "acquisition_time_key"}  # fmt: skip
    newer_tables = ("studies", "evaluations", "metrics", "set_metrics", "runs", "predictions",
                    "qc", "remote_series")
    for name in newer_tables:
        shutil.rmtree(root / name)
    for name in ("scans", "labels"):
        data = DeltaTable(str(root / name)).to_pyarrow_table()
        old = data.select([n for n in data.schema.names if n not in v2_only])
        write_deltalake(str(root / name), old, mode="overwrite", schema_mode="overwrite")
    versions = DeltaTable(str(root / VERSIONS_TABLE)).to_pyarrow_table().to_pylist()
    for row in versions:
        tv = json.loads(row["table_versions"])
        for name in newer_tables:
            tv.pop(name)
        tv["scans"] = DeltaTable(str(root / "scans")).version()
        tv["labels"] = DeltaTable(str(root / "labels")).version()
        row["table_versions"] = json.dumps(tv)
    table = VERSIONS_SCHEMA.empty_table().from_pylist(versions, schema=VERSIONS_SCHEMA)
    write_deltalake(str(root / VERSIONS_TABLE), table, mode="overwrite")
    for name in ("subjects", "scans", "labels", "label_maps", "cohorts", "splits", "quarantine"):
        stamp = {"xds.table": name, "xds.schema_version": "1"}
        DeltaTable(str(root / name)).alter.set_table_description(json.dumps(stamp))


def test_migrate_a_version_1_catalog_keeps_rows_and_history(catalog):
    from xds.catalog import migrate

    n_scans, version = catalog.count("scans"), catalog.version
    _downgrade_to_v1(catalog.root)
    with pytest.raises(CatalogError, match="xds migrate"):
        Catalog.open(catalog.root)
    changes = migrate(catalog.root)
    assert "created table studies" in changes
    assert "created table metrics" in changes
    assert "created table remote_series" in changes
    assert any(c.startswith("scans: added sequence_rule") for c in changes)
    assert "labels: added classes_annotated, derived_from, class_set" in changes
    assert migrate(catalog.root) == []  # idempotent
    cat = Catalog.open(catalog.root)
    assert cat.version == version + 1
    assert not cat.legacy
    assert cat.count("scans") == n_scans
    assert cat.count("studies") == 0
    got = cat.sql("SELECT count(*) AS n, count(echo_time_ms) AS te FROM scan_view").to_pylist()
    assert got == [{"n": n_scans, "te": 0}]
    # A version from before the migration still reads, its new columns null.
    old = Catalog.open(catalog.root, version=version)
    assert old.legacy
    assert old.sql(
        "SELECT count(*) AS n, count(sequence_rule) AS r FROM scan_view"
    ).to_pylist() == [{"n": n_scans, "r": 0}]
    # ... and its scan_view has the status column, every row a scan (no PACS table then)
    assert old.sql("SELECT list(DISTINCT status) AS s FROM scan_view").to_pylist() == [
        {"s": ["ok"]}
    ]


def test_migrate_turns_raw_times_of_day_into_keys(catalog):
    """Schema 4 stored the acquisition's time of day; 5 keeps only its keyed hash."""
    import json

    import pyarrow as pa

    from xds.catalog import migrate
    from xds.schemas.ids import acquisition_time_key

    root = catalog.root
    data = DeltaTable(str(root / "scans")).to_pyarrow_table().drop_columns(["acquisition_time_key"])
    seconds = [36000 + i for i in range(data.num_rows)]
    data = data.append_column("acquisition_time_s", pa.array(seconds, pa.int32()))
    write_deltalake(str(root / "scans"), data, mode="overwrite", schema_mode="overwrite")
    from xds.catalog.deltas import VERSIONS_SCHEMA, VERSIONS_TABLE

    rows = DeltaTable(str(root / VERSIONS_TABLE)).to_pyarrow_table().to_pylist()
    last = max(rows, key=lambda r: r["catalog_version"])
    tv = json.loads(last["table_versions"])
    tv["scans"] = DeltaTable(str(root / "scans")).version()
    last["table_versions"] = json.dumps(tv)
    write_deltalake(str(root / VERSIONS_TABLE), pa.Table.from_pylist(rows, schema=VERSIONS_SCHEMA),
                    mode="overwrite")  # fmt: skip
    for name in ("subjects", "scans", "labels", "label_maps", "cohorts", "splits", "quarantine"):
        stamp = {"xds.table": name, "xds.schema_version": "4"}
        DeltaTable(str(root / name)).alter.set_table_description(json.dumps(stamp))
    assert migrate(root) == ["scans: added acquisition_time_key"]
    cat = Catalog.open(root)
    got = {r["scan_id"]: r["acquisition_time_key"] for r in cat.read("scans").to_pylist()}
    want = {s: acquisition_time_key(cat.secret(), t)
            for s, t in zip(data.column("scan_id").to_pylist(), seconds, strict=True)}  # fmt: skip
    assert got == want
    newest = DeltaTable(str(root / "scans")).to_pyarrow_table()
    assert "acquisition_time_s" not in newest.column_names
