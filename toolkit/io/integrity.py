"""``xds verify``: check a catalog (and exports of it) before it is shared.

Two checks:

1. **Integrity**: every image and label the catalog references exists and decodes to the
   voxel hash its row records.
2. **No identifier in any byte**: every stored file is read as bytes and searched for what
   must never be there:

   - gzip members whose header keeps a file name, a comment, an extra field or a time;
   - NIfTI header text fields and header extensions that are not empty;
   - DICOM UIDs and date-like strings in file names, NIfTI header text, sidecars, the text
     cells of the tables and the Delta logs' string statistics (date and timestamp
     *columns* hold shifted or technical dates and are not searched);
   - names from a deny-list the user passes, anywhere in any file, raw or decompressed;
   - the source folder and file names that ingest hid behind keyed hashes (recorded at
     ingest as HMACs, :func:`xds.io.deid.record_source_names`).

A finding names the file (relative to the catalog or export, which hold only pseudonyms)
and the kind of problem, never the identifier itself.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xds.catalog import Catalog
from xds.io.deid import name_digest, source_name_digests
from xds.io.images import gzip_header_end, gzip_members, read_volume
from xds.io.parallel import progress_map
from xds.schemas.errors import XdsError
from xds.schemas.tables import TABLES, schema_for

UID = re.compile(r"(?<![0-9.])[0-2](?:\.(?:0|[1-9][0-9]*)){5,}(?![0-9])")
DATE = re.compile(
    r"(?<![0-9.])(?:19|20)\d{2}([-./]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])(?![0-9])"
)
# What separates a file or folder name from the text around it in a path, a message, JSON.
_NAME_SPLIT = re.compile(rb"[\x00-\x20\x7f/\\\"'`,;:()\[\]{}<>=|]+")
# The key, the hashed names, the locks, and the PACS store (raw UIDs by design, 0600).
_PRIVATE = {".xds-secret", ".xds-names", ".xds-names.lock", ".xds.lock", ".xds-pacs.sqlite",
            ".xds-pacs.sqlite-journal"}
_SKIP_FOLDERS = {".xds-scratch", ".xds-tmp"}
# Cells written by the user, not read from the data: a --where may compare dates.
_USER_TEXT = {("cohorts", "where_sql"), ("splits", "params"), ("runs", "config")}
_NIFTI_TEXT = ("descrip", "aux_file", "intent_name", "db_name")
_HEAD = 1 << 20  # decompressed bytes read of an image: its header and extensions


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``findings`` as (file, problem), one per line."""

    files_scanned: int = 0
    images_checked: int = 0
    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def summary(self) -> dict:
        """JSON-ready counts and findings."""
        return {
            "ok": self.ok,
            "files_scanned": self.files_scanned,
            "images_checked": self.images_checked,
            "findings": [{"file": f, "problem": p} for f, p in self.findings],
        }


def verify(
    catalog: Catalog,
    exports: Sequence[str | os.PathLike] = (),
    *,
    deny: Iterable[str] = (),
    hashes: bool = True,
    jobs: int = 1,
) -> VerifyReport:
    """Check a catalog's files against its tables and every stored byte for identifiers.

    Args:
        catalog: the catalog (its latest version's files are re-hashed).
        exports: export folders (or files) to scan as well.
        deny: names, IDs or other strings that must appear nowhere (case-insensitive;
            shorter than three characters are ignored).
        hashes: re-hash every managed image and label (decodes them all).
        jobs: worker processes for re-hashing.

    Raises:
        XdsError: an export path does not exist.
    """
    report = VerifyReport()
    if hashes:
        _check_hashes(catalog, report, jobs)
    scanner = _Scanner(
        words={d.lower().encode() for d in deny if len(d.strip()) >= 3},
        secret=catalog.secret(),
        digests=source_name_digests(catalog.root),
        report=report,
    )
    roots = [(catalog.root, "")]
    for path in exports:
        path = Path(path)
        if not path.exists():
            raise XdsError(f"{path}: no such export")
        roots.append((path, f"{path.name}/"))
    for root, prefix in roots:
        for file in _files(root):
            scanner.scan(file, prefix + file.relative_to(root).as_posix() if root.is_dir()
                         else prefix.rstrip("/"))  # fmt: skip
    return report


def clean_gzip_headers(catalog: Catalog) -> list[str]:
    """Replace the gzip headers of managed files that keep a name, comment or time.

    Catalogs written before xds cleaned them hold hard links to sources whose gzip header
    names the original file. Each such file is rewritten under a bare header (same
    compressed data, so the same voxels and hash) and replaces the old one atomically,
    which also breaks its link to the source. Returns the files changed (relative paths).
    """
    from xds.io.images import rewrite_gzip_headers

    changed = []
    data = catalog.root / "data"
    for path in sorted(data.rglob("*.gz")) if data.is_dir() else []:
        raw = path.read_bytes()
        try:
            members = gzip_members(raw)
        except ValueError:
            continue  # not ours to repair: verify reports it
        if all(flags & (4 | 8 | 16) == 0 and not mtime for flags, mtime, _, _ in members):
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.clean")
        rewrite_gzip_headers(path, tmp)
        os.replace(tmp, path)
        changed.append(path.relative_to(catalog.root).as_posix())
    return changed


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_FOLDERS)
        out.extend(Path(folder) / f for f in sorted(files) if f not in _PRIVATE)
    return out


# -- integrity --------------------------------------------------------------------------------


def _check_hashes(catalog: Catalog, report: VerifyReport, jobs: int) -> None:
    scans = catalog.read("scans").select(["image_uri", "image_hash"]).to_pylist()
    labels = catalog.read("labels").select(["uri", "hash"]).to_pylist()
    items = [(r["image_uri"], r["image_hash"]) for r in scans]
    items += [(r["uri"], r["hash"]) for r in labels]
    paths = [(str(catalog.resolve(uri)), expected) for uri, expected in items]
    results = progress_map(_rehash, paths, jobs=jobs, description="re-hash")
    for (uri, _), problem in zip(items, results, strict=True):
        report.images_checked += 1
        if problem:
            report.findings.append((uri, problem))


def _rehash(item: tuple[str, str]) -> str | None:
    path, expected = item
    if not os.path.exists(path):
        return "missing: the catalog references it but the file is gone"
    try:
        found = read_volume(path).hash
    except XdsError as exc:
        return f"does not decode ({exc})"
    return None if found == expected else "changed: its voxels no longer match the catalog's hash"


# -- identifiers --------------------------------------------------------------------------------


@dataclass
class _Scanner:
    words: set[bytes]
    secret: bytes
    digests: set[str]
    report: VerifyReport

    def scan(self, path: Path, shown: str) -> None:
        self.report.files_scanned += 1
        self._text(shown, shown, "file name", dates=True)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.report.findings.append((shown, f"unreadable ({type(exc).__name__})"))
            return
        name = path.name
        if name.endswith((".nii", ".nii.gz")):
            # Text can only hide in the gzip and NIfTI headers; voxel bytes are not text
            # (searched for words they would match by chance).
            head = raw[: _HEAD]
            if raw[:2] == b"\x1f\x8b":
                if not self._gzip_headers(shown, raw):
                    return
                head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, _HEAD)
                self._bytes(shown, raw[: self._deflate_start(raw)], "gzip header")
            self._nifti(shown, head)
            return
        self._bytes(shown, raw, "raw bytes")
        if raw[:2] == b"\x1f\x8b" and self._gzip_headers(shown, raw):
            raw = gzip.decompress(raw)
            self._bytes(shown, raw, "decompressed bytes")
        if name.endswith(".parquet"):
            self._parquet(shown, path)
        elif name.endswith((".json", ".jsonl", ".csv", ".tsv", ".txt", ".md")):
            self._json_or_text(shown, raw)

    @staticmethod
    def _deflate_start(raw: bytes) -> int:
        return gzip_header_end(raw, 0)[2]

    # each check adds findings; none returns the identifier itself

    def _find(self, shown: str, problem: str) -> None:
        if (shown, problem) not in self.report.findings:
            self.report.findings.append((shown, problem))

    def _bytes(self, shown: str, data: bytes, where: str) -> None:
        low = data.lower()
        for n, word in enumerate(sorted(self.words)):
            if word in low:
                self._find(shown, f"{where} hold a name from the deny list (entry {n + 1})")
        if self.digests:
            for token in {t.lower() for t in _NAME_SPLIT.split(data) if 4 <= len(t) <= 255}:
                try:
                    text = token.decode()
                except UnicodeDecodeError:
                    continue
                if name_digest(self.secret, text) in self.digests:
                    self._find(shown, f"{where} hold a source folder or file name")
                    break

    def _text(self, shown: str, text: str, where: str, *, dates: bool) -> None:
        if UID.search(text):
            self._find(shown, f"{where} holds a DICOM UID")
        if dates and DATE.search(text):
            self._find(shown, f"{where} holds a date-like string")
        self._bytes(shown, text.encode("utf-8", "surrogateescape"), where)

    def _gzip_headers(self, shown: str, raw: bytes) -> bool:
        """Findings for each member's header; False when the stream is not valid gzip."""
        try:
            members = gzip_members(raw)
        except ValueError as exc:
            self._find(shown, f"not a valid gzip file ({exc})")
            return False
        for flags, mtime, _, _ in members:
            if flags & 8:
                self._find(shown, "gzip header keeps a file name (FNAME)")
            if flags & 16:
                self._find(shown, "gzip header keeps a comment (FCOMMENT)")
            if flags & 4:
                self._find(shown, "gzip header keeps an extra field (FEXTRA)")
            if mtime:
                self._find(shown, "gzip header keeps a modification time (MTIME)")
        return True

    def _nifti(self, shown: str, data: bytes) -> None:
        import nibabel as nib
        import numpy as np

        sizes = {int.from_bytes(data[:4], order) for order in ("little", "big")}
        kind = nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
        if kind is None or len(data) < min(sizes):
            self._find(shown, "not a NIfTI header")
            return
        try:
            header = kind.from_fileobj(io.BytesIO(data), check=False)
        except Exception:  # noqa: BLE001 - a header nibabel cannot parse is reported
            self._find(shown, "NIfTI header does not parse")
            return
        for key in _NIFTI_TEXT:
            if key in header and np.asarray(header[key]).tobytes().strip(b"\0 "):
                self._find(shown, f"NIfTI header text field {key} is not empty")
        if header.extensions:
            self._find(shown, f"NIfTI header has {len(header.extensions)} extension(s)")
        offset = int(header.get_data_offset()) or 352
        self._text(shown, data[:offset].decode("latin-1"), "NIfTI header", dates=True)
        self._bytes(shown, data[:offset], "NIfTI header")

    def _parquet(self, shown: str, path: Path) -> None:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - a broken table file is a finding
            self._find(shown, f"Parquet file does not read ({type(exc).__name__})")
            return
        name = _table_of(shown)
        for column in table.column_names:
            if (name, column) in _USER_TEXT:
                continue
            for text in _strings(table.column(column)):
                self._text(shown, text, f"column {column}", dates=True)

    def _json_or_text(self, shown: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        if "/_delta_log/" in f"/{shown}":
            self._delta_log(shown, text)
            return
        if shown.endswith((".json", ".jsonl")):
            try:
                values = list(_json_strings(json.loads(text)))
            except json.JSONDecodeError:
                values = [text]
        else:
            values = [text]
        for value in values:
            self._text(shown, value, "text", dates=True)

    def _delta_log(self, shown: str, text: str) -> None:
        """Delta commits: string statistics and partition values of string columns."""
        table = _table_of(shown)
        strings = _string_columns(table)
        for line in text.splitlines():
            try:
                action = json.loads(line)
            except json.JSONDecodeError:
                continue
            add = action.get("add") or {}
            stats = add.get("stats")
            if isinstance(stats, str):
                try:
                    stats = json.loads(stats)
                except json.JSONDecodeError:
                    stats = {}
            for bound in ("minValues", "maxValues"):
                for column, value in (stats or {}).get(bound, {}).items():
                    if column in strings and (table, column) not in _USER_TEXT:
                        self._text(shown, str(value), f"statistics of {column}", dates=True)
            for value in (add.get("partitionValues") or {}).values():
                self._text(shown, str(value), "partition values", dates=True)
            for key in ("commitInfo", "metaData"):
                if key in action:
                    self._text(shown, json.dumps(action[key]), key, dates=False)


def _table_of(shown: str) -> str:
    parts = shown.split("/")
    return next((p for p in parts if p in TABLES or p == "_versions"), "")


def _string_columns(table: str) -> set[str]:
    if table not in TABLES:
        return {"table_versions", "operation"}
    return {f.name for f in schema_for(table) if pa.types.is_string(f.type)} | {
        f.name for f in schema_for(table) if _holds_strings(f.type)
    }


def _holds_strings(kind: pa.DataType) -> bool:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _holds_strings(kind.value_type)
    if pa.types.is_map(kind):
        return _holds_strings(kind.key_type) or _holds_strings(kind.item_type)
    return False


def _strings(column: pa.ChunkedArray) -> Iterable[str]:
    if not _holds_strings(column.type):
        return
    for value in column.to_pylist():
        yield from _json_strings(value)


def _json_strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _json_strings(v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _json_strings(item)
