"""What every export shares: which scans go where, with which label, and placing the files.

:func:`plan_export` turns (cohort, split, fold, classes) into :class:`ExportCase` records: the
scan's role, its image and best source label in the catalog, the lookup table that maps the
label's indices to the exported classes, the classes its label map annotates, and the
metadata columns stratified evaluation needs. Each exporter (nnU-Net, MONAI datalist,
Hugging Face, TorchIO) only decides where the files go and what index file describes them.

:func:`place_files` writes the files: a label whose lookup table is the identity and whose
voxels are stored as integers needs no conversion, so it is hard-linked like the images
(symlinked across file systems, copied with ``copy=True``); the others are remapped to uint8
in worker processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from xds.io.parallel import progress_map
from xds.labels.mapping import identity_label, remap_label
from xds.schemas.errors import ExportError


@dataclass(kw_only=True)
class ExportResult:
    """Where an export went and what it holds (each exporter adds its own fields)."""

    path: str
    classes: list[str]
    files: dict[str, int] = field(default_factory=dict)  # linked/copied/converted -> count

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


# -- the target and its files ------------------------------------------------------------------


@contextlib.contextmanager
def writing_target(*paths: Path, force: bool):
    """Write an export into ``paths``; a failure removes what was written, not half of it.

    Refuses a non-empty target unless ``force`` (which clears it first), or unless the
    target is the partial output of an export that was killed before it finished: a
    marker beside each target (``.<name>.xds-incomplete``, holding the writer's process
    id) says so until the export completes, and a re-run replaces such a target without
    ``--force``. A target whose writer still runs is refused.

    Raises:
        ExportError: a target exists and is not empty, without ``force``, or another
            export is writing it now.
    """
    from xds.io.images import process_alive

    markers = [_marker(path) for path in paths]
    for path, marker in zip(paths, markers, strict=True):
        writer = _writer_of(marker)
        if writer and writer != os.getpid() and process_alive(writer):
            raise ExportError(f"{path} is being written by another export (process {writer})")
        busy = path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))
        if busy and not force and writer is None:
            raise ExportError(f"{path} exists and is not empty (use --force to replace it)")
    for path, marker in zip(paths, markers, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()}\n")
        _remove(path)
    try:
        yield
    except BaseException:
        for path in paths:
            _remove(path)
        for marker in markers:
            marker.unlink(missing_ok=True)
        raise
    for marker in markers:
        marker.unlink(missing_ok=True)


def _marker(path: Path) -> Path:
    return path.parent / f".{path.name}.xds-incomplete"


def _writer_of(marker: Path) -> int | None:
    """The process id a marker names, or None when there is no marker."""
    try:
        text = marker.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class FileJob:
    """Place one file: link (or copy) ``src`` to ``dst``, remapping labels through ``lut``."""

    src: str
    dst: str
    lut: tuple[int, ...] | None = None  # None: an image, placed as it is
    copy: bool = False


def place_files(jobs: list[FileJob], *, workers: int = 1, description: str = "export") -> dict:
    """Place the files; return counts of what was done (linked, copied, converted...).

    Links and copies run here, one after the other (they cost a system call or a disk-bound
    copy); labels that need remapping go to ``workers`` processes with a progress bar, and
    to this process when there are too few to pay for a pool.
    """
    for parent in {Path(j.dst).parent for j in jobs}:
        parent.mkdir(parents=True, exist_ok=True)
    done, converting = Counter(), []
    for job in jobs:
        if job.lut is not None and not identity_label(job.src, job.lut):
            converting.append(job)
        else:
            done[_place(job)] += 1
    workers = workers if len(converting) >= MIN_POOL_JOBS else 1
    progress_map(_convert, converting, jobs=workers, description=description)
    done["converted"] += len(converting)
    return dict(sorted((k, n) for k, n in done.items() if n))


MIN_POOL_JOBS = 16
"""Fewer conversions than this run in this process: starting workers costs about a second."""


def _convert(job: FileJob) -> None:
    Path(job.dst).unlink(missing_ok=True)
    convert_label(job.src, job.dst, job.lut)


def _place(job: FileJob) -> str:
    """Link or copy one file that needs no conversion; say which."""
    dst = Path(job.dst)
    dst.unlink(missing_ok=True)
    if job.copy:
        shutil.copyfile(job.src, dst)
        return "copied"
    try:
        os.link(job.src, dst)
        done = "linked"
    except OSError:  # another file system, or links not allowed there
        os.symlink(os.path.abspath(job.src), dst)
        done = "symlinked"
    # The export and the catalog now share one file: editing it in place would change the
    # catalog's content behind its hash. Take the write bits off (a tool that saves a new
    # file replaces the link and is unaffected; --copy gives independent files).
    mode = os.stat(job.src).st_mode
    os.chmod(job.src, mode & ~0o222)
    return done


def convert_label(src: str, dst: str, lut: tuple[int, ...]) -> None:
    """Write ``src`` remapped through ``lut`` to ``dst`` (see :func:`remap_label`)."""
    nib.save(remap_label(src, lut), dst)
