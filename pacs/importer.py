"""`pacs import`: walk folders, ingest every file, show progress, then a summary.

Files go through `storage.ingest.pipeline.ingest`, exactly as a C-STORE would; what is refused is
listed with its reason so an operator can fix or discard it. `--jobs N` (default: every core)
ingests with N worker processes, each with its own archive, batches of files handed out in
order and their results read back in order for the progress bar; one job ingests in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from storage.access.context import Context
from storage.access.orgs import get_org
from storage.access.principal import Principal
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import StorageError
from storage.index.migrate import upgrade
from storage.ingest.pipeline import Outcome, ingest
from storage.logs import event
from storage.settings import Settings

MAX_LISTED = 50
log = logging.getLogger(__name__)


class UnknownOrganization(ValueError):
    """`--org` names no registered organization: nothing is imported."""


class WorkerLost(RuntimeError):
    """A worker process of a parallel import died: the import stopped part way."""


def walk(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name


@dataclass(frozen=True, slots=True)
class FileResult:
    """What became of one file: `outcome` is an `Outcome` value or "rejected" (with its reason)."""

    path: str
    outcome: str
    reason: str = ""
    detail: str = ""


def run_import(settings: Settings, paths: list[Path], *, org: str | None, console: Console, jobs: int = 1) -> int:
    """Import everything under `paths` with `jobs` processes; exit code 0 if nothing was
    rejected, else 1.

    Raises
    ------
    UnknownOrganization
        `org` is not registered (checked before any file is read: every one would be refused).
    """
    _prepare(settings, org)
    files = [str(path) for path in walk(paths)]
    counts: Counter[str] = Counter()
    rejected: list[FileResult] = []
    # the workers are forked (if they are) here, before the progress bar starts its thread
    with _ingesting(settings, files, org, jobs) as results:
        with Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("import", total=len(files), status="")
            for result in results:
                counts[result.outcome] += 1
                if result.outcome == REJECTED:
                    rejected.append(result)
                progress.update(task, advance=1, status=_status(counts))
    _summary(console, counts, rejected)
    return 1 if rejected else 0


REJECTED = "rejected"
#: files one task of a worker process takes: few enough that the progress bar moves, enough
#: that sending them and their results between processes costs nothing next to their ingest
BATCH = 8


def _prepare(settings: Settings, org: str | None) -> None:
    """Bring the index to the current schema and check `org`, with an archive closed afterwards:
    nothing of it (a connection, a thread) is left for worker processes to inherit."""
    archive = Archive.open(settings)
    try:
        upgrade(archive.db.engine)
        if org is not None:
            with archive.db.read() as session:
                get_org(session, org)
    except KeyError:
        raise UnknownOrganization(f"organization {org!r} is not registered: pacs org add {org} --name ...") from None
    finally:
        archive.close()


@contextmanager
def _ingesting(settings: Settings, files: list[str], org: str | None, jobs: int) -> Iterator[Iterator[FileResult]]:
    """Each file's result, in the order of `files`: ingested here (one job, or few files), or by
    `jobs` worker processes (the interpreter lock makes threads no faster: parsing is Python)."""
    if jobs <= 1 or len(files) <= BATCH:
        archive = Archive.open(settings)
        try:
            ctx = _context(archive, org)
            yield (ingest_file(path, ctx, archive) for path in files)
        finally:
            archive.close()
        return
    batches = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    start = worker_start_method()
    event(log, "import.workers", level=logging.DEBUG, jobs=jobs, start=start)
    context = multiprocessing.get_context(start)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(settings, org)) as pool:
        # submitted at once: a forking pool starts all its workers with the first task
        yield _in_order(pool.map(_ingest_batch, batches))


def worker_start_method() -> str:
    """The start method of import workers: "fork" where it is safe, else "spawn".

    A forked worker starts with this process's modules already imported; a spawned one imports
    them again, which took two workers 2 s of wall time and 4 s of CPU on the 2-core benchmark
    machine (a fifth of a 2,000-file import). Forking is safe only while this process runs
    one thread (a lock another thread holds would stay held in the child forever) and has no
    connection open (`_prepare` closes its own); anything else gets spawned workers.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _in_order(batches: Iterator[list[FileResult]]) -> Iterator[FileResult]:
    try:
        for batch in batches:
            yield from batch
    except BrokenProcessPool:
        raise WorkerLost(
            "an import worker process died (killed, or out of memory): what was stored stays;"
            " run the same import again (stored files count as already present), or with -j 1"
        ) from None


def _context(archive: Archive, org: str | None) -> Context:
    return Context.console(Principal.system("pacs-import", org), audit=archive.audit)


def ingest_file(path: str, ctx: Context, archive: Archive) -> FileResult:
    """One file through the pipeline, as a C-STORE would send it."""
    try:
        result = ingest(Source(path=Path(path)), ctx, archive=archive)
    except StorageError as exc:
        return FileResult(path, REJECTED, exc.reason, exc.detail)
    return FileResult(path, result.outcome.value)


#: a worker process's archive and request context (`_start_worker`)
_worker: dict[str, Any] = {}


def _start_worker(settings: Settings, org: str | None) -> None:
    archive = Archive.open(settings, pool_size=2)
    _worker["archive"], _worker["ctx"] = archive, _context(archive, org)
    # A pool's worker ends through multiprocessing's exit, which runs its finalizers but not
    # `atexit`: the archive is closed there, so that its last files' pending rows and its
    # unused reserved keys' are dropped now, not by the next start's recovery.
    Finalize(archive, archive.close, exitpriority=10)


def _ingest_batch(paths: list[str]) -> list[FileResult]:
    return [ingest_file(path, _worker["ctx"], _worker["archive"]) for path in paths]


def _status(counts: Counter[str]) -> str:
    stored, present = counts[Outcome.STORED.value], counts[Outcome.ALREADY_PRESENT.value]
    return f"stored {stored}  present {present}  rejected {counts[REJECTED]}"


def _summary(console: Console, counts: Counter[str], rejected: list[FileResult]) -> None:
    present = counts[Outcome.ALREADY_PRESENT.value]
    if present and present == sum(counts.values()):
        console.print(f"all {present} file{'s' if present > 1 else ''} already present: nothing new was stored")
    elif not counts:
        console.print("no files found")
    table = Table(title="import summary", show_header=False)
    table.add_row("stored", str(counts[Outcome.STORED.value]))
    table.add_row("already present", str(counts[Outcome.ALREADY_PRESENT.value]))
    table.add_row("rejected", str(counts[REJECTED]))
    console.print(table)
    if rejected:
        console.print("[bold]rejected[/bold] (file: reason: detail)")
        for r in rejected[:MAX_LISTED]:
            console.print(f"  {r.path}: {r.reason}: {r.detail}", soft_wrap=True, highlight=False, markup=False)
        if len(rejected) > MAX_LISTED:
            console.print(f"... and {len(rejected) - MAX_LISTED} more")
