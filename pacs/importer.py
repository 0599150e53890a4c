"""`pacs import`: walk folders, ingest every file, show progress, then a summary.

Files go through `storage.ingest.pipeline.ingest` one by one, exactly as a C-STORE would; what is
refused is listed with its reason so an operator can fix or discard it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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
from storage.settings import Settings

MAX_LISTED = 50


class UnknownOrganization(ValueError):
    """`--org` names no registered organization: nothing is imported."""


def walk(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name


def run_import(settings: Settings, paths: list[Path], *, org: str | None, console: Console) -> int:
    """Import everything under `paths`; exit code 0 if nothing was rejected, else 1.

    Raises
    ------
    UnknownOrganization
        `org` is not registered (checked before any file is read: every one would be refused).
    """
    archive = Archive.open(settings)
    upgrade(archive.db.engine)
    if org is not None:
        try:
            with archive.db.read() as session:
                get_org(session, org)
        except KeyError:
            archive.close()
            raise UnknownOrganization(
                f"organization {org!r} is not registered: pacs org add {org} --name ..."
            ) from None
    files = list(walk(paths))
    ctx = Context.console(Principal.system("pacs-import", org), audit=archive.audit)
    counts: Counter[str] = Counter()
    rejected: list[tuple[Path, StorageError]] = []
    try:
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
            for path in files:
                try:
                    result = ingest(Source(path=path), ctx, archive=archive)
                    counts[result.outcome.value] += 1
                except StorageError as exc:
                    counts["rejected"] += 1
                    rejected.append((path, exc))
                progress.update(task, advance=1, status=_status(counts))
    finally:
        archive.close()
    _summary(console, counts, rejected)
    return 1 if rejected else 0


def _status(counts: Counter[str]) -> str:
    stored, present = counts[Outcome.STORED.value], counts[Outcome.ALREADY_PRESENT.value]
    return f"stored {stored}  present {present}  rejected {counts['rejected']}"


def _summary(console: Console, counts: Counter[str], rejected: list[tuple[Path, StorageError]]) -> None:
    present = counts[Outcome.ALREADY_PRESENT.value]
    if present and present == sum(counts.values()):
        console.print(f"all {present} file{'s' if present > 1 else ''} already present: nothing new was stored")
    elif not counts:
        console.print("no files found")
    table = Table(title="import summary", show_header=False)
    table.add_row("stored", str(counts[Outcome.STORED.value]))
    table.add_row("already present", str(counts[Outcome.ALREADY_PRESENT.value]))
    table.add_row("rejected", str(counts["rejected"]))
    console.print(table)
    if rejected:
        console.print("[bold]rejected[/bold] (file: reason: detail)")
        for path, exc in rejected[:MAX_LISTED]:
            console.print(f"  {path}: {exc.reason}: {exc.detail}", soft_wrap=True, highlight=False, markup=False)
        if len(rejected) > MAX_LISTED:
            console.print(f"... and {len(rejected) - MAX_LISTED} more")
