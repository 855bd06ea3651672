"""What a PACS pull must remember and no table may hold: connections and raw UIDs.

A PACS is asked for a series by its Study and Series Instance UIDs, and a pull checks what
arrived against the SOP Instance UIDs the index listed. Those UIDs identify a patient's
images, so they never reach a catalog table, an export or the console: they live in one
SQLite file beside the catalog's pseudonym key (``.xds-pacs.sqlite``, mode 0600 like the
key), keyed by the series' keyed hash, the ``series_uid_hash`` the tables carry.

Connections are stored there too: a name, the protocol and address, the AE titles, the
center the PACS serves. Never a password: credentials come from the environment
(``XDS_PACS_<NAME>_USER`` and ``_PASSWORD``, or ``_TOKEN`` for a bearer token) or a
netrc file (``XDS_NETRC``, else ``~/.netrc``), read when a connection is opened.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from xds.schemas.errors import PacsError

STORE_FILE = ".xds-pacs.sqlite"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connections (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    series_hash TEXT PRIMARY KEY,
    pacs TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    n_instances INTEGER NOT NULL,
    instances TEXT NOT NULL,   -- JSON [[sop_uid, instance_number], ...], in order
    listed_all INTEGER NOT NULL  -- 1: the instance list is complete (else: count only)
);
CREATE TABLE IF NOT EXISTS watermarks (pacs TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Connection:
    """One PACS as ``xds pacs add`` stored it (no credentials)."""

    name: str
    kind: str  # dicomweb | dimse
    center: str
    dataset: str
    url: str | None = None  # DICOMweb base URL (the QIDO/WADO root)
    host: str | None = None  # DIMSE
    port: int | None = None
    aet: str | None = None  # the PACS's AE title
    our_aet: str = "XDS"
    retrieve: str = "get"  # dimse: get (C-GET) | move (C-MOVE to an SCP xds starts)
    move_port: int | None = None  # the port of that SCP, as the PACS knows it
    timeout: float = 60.0  # seconds per network call
    retries: int = 3  # tries per call after the first fails

    @property
    def address(self) -> str:
        """Where the PACS is, for messages (never with credentials)."""
        if self.kind == "dicomweb":
            return str(self.url)
        return f"{self.aet}@{self.host}:{self.port}"


def check_connection(conn: Connection) -> Connection:
    """``conn`` when it is usable, else a one-line :class:`PacsError`."""
    for what, value in (("connection", conn.name), ("center", conn.center),
                        ("dataset", conn.dataset)):  # fmt: skip
        if not _NAME.match(value or ""):
            raise PacsError(f"invalid {what} name {value!r}: use letters, digits, '.', '_', '-'")
    if conn.kind == "dicomweb":
        parts = urlsplit(conn.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(f"--dicomweb {conn.url!r}: not an http(s) URL")
        if parts.username or parts.password:
            raise PacsError(
                "--dicomweb: the URL carries a user name or password; give credentials in "
                f"XDS_PACS_{env_name(conn.name)}_USER/_PASSWORD or a netrc file instead"
            )
    elif conn.kind == "dimse":
        if not conn.host or not conn.port or not conn.aet:
            raise PacsError("--dimse needs HOST:PORT and --aet")
        for what, title in (("--aet", conn.aet), ("--our-aet", conn.our_aet)):
            if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title:
                raise PacsError(f"{what} {title!r}: an AE title is 1 to 16 ASCII characters")
        if conn.retrieve not in ("get", "move"):
            raise PacsError(f"--retrieve {conn.retrieve!r}: use get or move")
        if conn.retrieve == "move" and not conn.move_port:
            raise PacsError("--retrieve move needs --move-port (where the PACS sends images)")
    else:
        raise PacsError(f"unknown PACS kind {conn.kind!r}")
    if conn.timeout <= 0 or conn.retries < 0:
        raise PacsError("--timeout must be positive and --retries at least 0")
    return conn


def env_name(name: str) -> str:
    """A connection name as it appears in environment variable names."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def credentials(conn: Connection) -> tuple[str, str] | str | None:
    """(user, password), a bearer token, or None: from the environment, else netrc."""
    prefix = f"XDS_PACS_{env_name(conn.name)}_"
    if token := os.environ.get(prefix + "TOKEN"):
        return token
    user, password = os.environ.get(prefix + "USER"), os.environ.get(prefix + "PASSWORD")
    if user and password is not None:
        return user, password
    host = urlsplit(conn.url or "").hostname if conn.kind == "dicomweb" else conn.host
    path = Path(os.environ.get("XDS_NETRC") or Path.home() / ".netrc")
    if host and path.is_file():
        import netrc

        try:
            found = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise PacsError(f"{path}: unreadable netrc file ({type(exc).__name__})") from None
        if found and found[0] and found[2] is not None:
            return found[0], found[2]
    return None


def add_pacs(catalog_root: str | os.PathLike, name: str, *, dicomweb: str | None = None,
             dimse: str | None = None, aet: str | None = None, our_aet: str = "XDS",
             retrieve: str = "get", move_port: int | None = None, center: str | None = None,
             dataset: str | None = None, timeout: float = 60.0, retries: int = 3,
             replace: bool = False) -> Connection:  # fmt: skip
    """Store a connection: ``dicomweb`` (a URL) or ``dimse`` ("HOST:PORT", with ``aet``).

    Raises:
        PacsError: neither or both protocols, or an unusable value (one line).
    """
    if (dicomweb is None) == (dimse is None):
        raise PacsError("give --dicomweb URL or --dimse HOST:PORT (one of them)")
    host = port = None
    if dimse is not None:
        host, _, text = dimse.rpartition(":")
        if not host or not text.isdigit():
            raise PacsError(f"--dimse {dimse!r}: expected HOST:PORT")
        port = int(text)
    center = center or name
    conn = Connection(name=name, kind="dicomweb" if dicomweb else "dimse", center=center,
                      dataset=dataset or center, url=dicomweb, host=host, port=port, aet=aet,
                      our_aet=our_aet, retrieve=retrieve, move_port=move_port, timeout=timeout,
                      retries=retries)  # fmt: skip
    PacsStore(catalog_root).add(conn, replace=replace)
    return conn


class PacsStore:
    """The private store of one catalog (see the module's docstring)."""

    def __init__(self, catalog_root: str | os.PathLike):
        self.path = Path(catalog_root) / STORE_FILE

    @contextmanager
    def _db(self):
        old = os.umask(0o077)  # the file and SQLite's journal: owner only
        try:
            con = sqlite3.connect(self.path, timeout=60)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        with closing(con):
            con.executescript(_SCHEMA)
            with con:  # one transaction
                yield con

    # -- connections --------------------------------------------------------------------

    def add(self, conn: Connection, *, replace: bool = False) -> None:
        """Store ``conn``; an existing name is refused unless ``replace``."""
        check_connection(conn)
        with self._db() as con:
            if not replace and con.execute(
                "SELECT 1 FROM connections WHERE name = ?", (conn.name,)
            ).fetchone():
                raise PacsError(f"a PACS named {conn.name!r} exists (--replace to change it)")
            con.execute("INSERT OR REPLACE INTO connections VALUES (?, ?)",
                        (conn.name, json.dumps(asdict(conn))))  # fmt: skip

    def connection(self, name: str) -> Connection:
        """The stored connection ``name``."""
        known = self.connections()
        for conn in known:
            if conn.name == name:
                return conn
        names = ", ".join(c.name for c in known) or "none yet (xds pacs add)"
        raise PacsError(f"no PACS named {name!r} (known: {names})")

    def connections(self) -> list[Connection]:
        """Every stored connection, by name."""
        if not self.path.exists():
            return []
        allowed = {f.name for f in fields(Connection)}
        with self._db() as con:
            rows = con.execute("SELECT spec FROM connections ORDER BY name").fetchall()
        return [Connection(**{k: v for k, v in json.loads(r[0]).items() if k in allowed})
                for r in rows]  # fmt: skip

    # -- series -------------------------------------------------------------------------

    def put_series(self, rows: list[dict]) -> None:
        """Remember where series are: dicts with the ``series`` table's columns."""
        if not rows:
            return
        with self._db() as con:
            con.executemany(
                "INSERT OR REPLACE INTO series VALUES (:series_hash, :pacs, :study_uid, "
                ":series_uid, :n_instances, :instances, :listed_all)",
                [{**r, "instances": json.dumps(r["instances"]),
                  "listed_all": int(r["listed_all"])} for r in rows],  # fmt: skip
            )

    def series(self, hashes: list[str]) -> dict[str, dict]:
        """What the store knows of these series hashes (missing ones are left out)."""
        if not hashes or not self.path.exists():
            return {}
        out = {}
        with self._db() as con:
            for start in range(0, len(hashes), 500):
                part = hashes[start : start + 500]
                marks = ",".join("?" * len(part))
                for row in con.execute(
                    "SELECT series_hash, pacs, study_uid, series_uid, n_instances, instances, "
                    f"listed_all FROM series WHERE series_hash IN ({marks})",
                    part,
                ):
                    out[row[0]] = {
                        "series_hash": row[0], "pacs": row[1], "study_uid": row[2],
                        "series_uid": row[3], "n_instances": row[4],
                        "instances": [tuple(i) for i in json.loads(row[5])],
                        "listed_all": bool(row[6]),
                    }  # fmt: skip
        return out

    # -- watermarks ---------------------------------------------------------------------

    def watermark(self, pacs: str) -> dict:
        """Where the last index of ``pacs`` stopped (change-feed sequence, date)."""
        if not self.path.exists():
            return {}
        with self._db() as con:
            row = con.execute("SELECT state FROM watermarks WHERE pacs = ?", (pacs,)).fetchone()
        return json.loads(row[0]) if row else {}

    def set_watermark(self, pacs: str, state: dict) -> None:
        """Record where this index stopped."""
        with self._db() as con:
            con.execute("INSERT OR REPLACE INTO watermarks VALUES (?, ?)",
                        (pacs, json.dumps(state)))  # fmt: skip
