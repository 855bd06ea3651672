"""Walk a center's DICOM folder: every file, read in chunks by worker processes."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from xds.ingest.dicom.headers import read_header
from xds.io.images import process_alive

WORK_FOLDER = ".xds-tmp"


HEADER_CHUNK = 256


def walk_files(root: Path) -> list[str]:
    """Every non-hidden file under ``root`` (relative, sorted), following linked folders once."""
    out, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        out.extend(
            (rel / f).as_posix()
            for f in files
            if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
        )
    return sorted(out)


def read_headers(args: tuple[str, list[str]]) -> list[dict]:
    """Worker: the headers of one chunk of files, (root, relative paths)."""
    root, rels = args
    seen: set[str] = set()
    with warnings.catch_warnings():  # pydicom warns on every odd value; problems are returned
        warnings.simplefilter("ignore")
        return [read_header(Path(root), rel, seen) for rel in rels]


def sweep_workdirs(tmp_root: Path) -> None:
    """Remove conversion folders left by ingests that died (their process is gone)."""
    if not tmp_root.is_dir():
        return
    for folder in tmp_root.iterdir():
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
