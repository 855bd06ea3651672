"""One way to run per-item work: in this process or a local process pool, with progress.

Every per-scan job (phantoms, ingest, export) goes through :func:`progress_map`, so the
executor can grow (dask, DESIGN §7) in one place.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xds.io.optional import optional

T = TypeVar("T")
R = TypeVar("R")


def progress_map(
    fn: Callable[[T], R], items: Iterable[T], *, jobs: int = 1, description: str = "working"
) -> list[R]:
    """``[fn(x) for x in items]`` with a progress bar, in ``jobs`` processes, order kept.

    The bar goes to stderr and only when it is a terminal (``XDS_PROGRESS=1`` forces it), so
    ``--json`` output and logs stay clean. ``fn`` must be picklable when ``jobs > 1``.
    """
    return list(progress_imap(fn, items, jobs=jobs, description=description))


def progress_imap(
    fn: Callable[[T], R], items: Iterable[T], *, jobs: int = 1, description: str = "working"
) -> Iterator[R]:
    """Like :func:`progress_map`, but yields each result, in order, as soon as it is ready.

    The caller can act on results while later items are still running (ingest commits them
    in batches), and one worker pool serves the whole iteration.
    """
    items = list(items)
    jobs = max(1, min(jobs, len(items) or 1))
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(items))
        if jobs == 1:
            for item in items:
                result = fn(item)
                bar.advance(task)
                yield result
            return
        with process_pool(jobs, fn.__module__) as pool:
            for result in pool.map(fn, items, chunksize=max(1, len(items) // (jobs * 8))):
                bar.advance(task)
                yield result


def process_pool(jobs: int, module: str) -> ProcessPoolExecutor:
    """A pool of ``jobs`` worker processes that die with this one.

    They fork from a server that has imported ``module`` (the workers' functions) once.
    """
    # forkserver, not fork: the parent may hold DuckDB and Delta (tokio) threads, and a
    # forked child inherits their locks in whatever state they were.
    context = multiprocessing.get_context("forkserver")
    # The server imports the module once and every worker forks from it, instead of each
    # worker importing xds (about 0.6 s) again. Only the first pool sets this.
    context.set_forkserver_preload([module])
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=die_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip


def thread_map(
    fn: Callable[[T], R], items: Iterable[T], *, jobs: int = 1, description: str = "working"
) -> list[R]:
    """``[fn(x) for x in items]`` in ``jobs`` threads, order kept, with a progress bar.

    For work that waits on a network (a PACS's answers), where processes would only add
    start-up time; the first exception is raised once the running calls have ended.
    """
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    with progress_bar() as bar, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        task = bar.add_task(description, total=len(items))
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            future.add_done_callback(lambda _: bar.advance(task))
        return [f.result() for f in futures]


def die_with_parent(parent: int | None = None) -> None:
    """Make this process end when ``parent`` (default: its parent) does.

    A worker pool's processes otherwise outlive a ``kill -9`` of the command that started
    them and go on writing into the catalog. On Linux the kernel sends SIGKILL when the
    parent exits (``PR_SET_PDEATHSIG``); with a fork server the parent is the server, so a
    thread also watches the command's own process and ends this one within half a second.
    """
    import signal
    import threading
    import time

    set_parent_death_signal(signal.SIGKILL)
    parent = parent or os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="xds-parent-watch", daemon=True).start()


_PRCTL: list = []  # libc's prctl, resolved once per process (empty: not yet; [None]: none)


def set_parent_death_signal(sig: int) -> None:
    """Linux: ask the kernel to send ``sig`` to this process when its parent exits.

    After the first call it only calls libc, so it is safe between fork and exec.
    """
    if not _PRCTL:
        prctl = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                prctl = None
        _PRCTL.append(prctl)
    if _PRCTL[0] is not None:
        _PRCTL[0](1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG


def default_jobs() -> int:
    """Worker processes to use when the user gives none: the usable CPUs."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def progress_bar() -> Progress:
    """A rich progress display on stderr, shown only on a terminal (or XDS_PROGRESS=1)."""
    from rich.console import Console

    console = Console(stderr=True)
    show = os.environ.get("XDS_PROGRESS") == "1" or console.is_terminal
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=False,
    )


def resolve_device(spec: str = "auto") -> str:
    """The torch device to run on: ``cuda`` when asked or when ``auto`` finds a GPU, else cpu.

    Torch is imported here, so only callers that compute with it pay for it.

    Raises:
        DeviceError: ``cuda`` asked for where there is none.
    """
    torch = optional("torch", "choosing a compute device", "train")

    from xds.schemas.errors import DeviceError

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r}: no CUDA device is available here")
    return spec
