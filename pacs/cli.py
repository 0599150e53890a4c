"""The `pacs` command line: the composition root of every process.

It is the one place that builds `Settings` (flags over `PACS_*` variables over defaults),
configures logging, and wires the archive into the SCP and the gateway. Each command parses
and answers; what it does lives in `pacs.serving`, `pacs.importer` and `storage`.

Every command but `serve` works on an archive that exists: run from another folder, it would
otherwise create a new empty index next to the operator's shell and report success. So a
command whose index, objects or token key live in the data folder stops when that folder does
not exist, and says how to name the right one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from pacs.logconfig import configure_logging
from storage.settings import Settings

if TYPE_CHECKING:
    from storage.archive import Archive

app = typer.Typer(
    help="Municipal PACS: DICOM archive, DICOMweb/FHIR gateway and cross-institution patient index.",
    no_args_is_help=True,
    add_completion=False,
)
org_app = typer.Typer(help="Institutions and the AE titles of their modalities and workstations.", no_args_is_help=True)
db_app = typer.Typer(help="The index database.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens: issue one (pacs token --org ID --role ROLE) or revoke them.")
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)
out = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (env PACS_DATA_DIR, default ./var)")]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]configuration error[/red] {'.'.join(map(str, err['loc']))}: {err['msg']}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line; the exit for the caller to raise."""
    console.print(f"[red]error[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


INDEX, OBJECTS, KEY = "index", "objects", "token key"


def existing_archive(settings: Settings, *needs: str) -> Settings:
    """`settings`, if what the command `needs` (`INDEX`, `OBJECTS`, `KEY`) from the data folder is there.

    Raises
    ------
    typer.Exit
        The data folder holds the index, the objects or the key, and does not exist.
    """
    folder = settings.data_dir
    local = [what for what, inside in settings.kept_in_data_dir().items() if inside and what in needs]
    if local and not folder.is_dir():
        raise fail(
            f"no archive at {folder} (its {' and '.join(local)} would be made there): run this command where"
            " `pacs serve` keeps its data, or name it with --data-dir or PACS_DATA_DIR"
            " (to start a new archive, create the folder first)"
        )
    return settings


class Service(StrEnum):
    """What `pacs serve --only` runs."""

    DICOM = "dicom"
    HTTP = "http"


@app.command()
def serve(
    data_dir: DataDir = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (env PACS_DICOM_PORT, default 11112)")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (env PACS_HTTP_PORT, default 8080)")] = None,
    http_host: Annotated[str | None, typer.Option(help="HTTP address (env PACS_HTTP_HOST, default 127.0.0.1)")] = None,
    ae_title: Annotated[str | None, typer.Option(help="Called AE title (env PACS_AE_TITLE, default MUNIPACS)")] = None,
    dicom_workers: Annotated[
        int | None, typer.Option(help="SCP processes sharing the DICOM port (env PACS_DICOM_WORKERS, default 1)")
    ] = None,
    dicom_tls_port: Annotated[
        int | None, typer.Option(help="DICOM TLS port (env PACS_DICOM_TLS_PORT, default 2762)")
    ] = None,
    dicom_tls_cert: Annotated[
        Path | None,
        typer.Option(help="PEM certificate (chain) of the DICOM TLS port; turns TLS on (env PACS_DICOM_TLS_CERT)"),
    ] = None,
    dicom_tls_key: Annotated[
        Path | None, typer.Option(help="PEM private key of that certificate, unencrypted (env PACS_DICOM_TLS_KEY)")
    ] = None,
    dicom_tls_ca: Annotated[
        Path | None,
        typer.Option(
            help="PEM CA certificate(s): clients must present a certificate it signed (env PACS_DICOM_TLS_CA)"
        ),
    ] = None,
    dicom_tls_only: Annotated[
        bool | None,
        typer.Option("--dicom-tls-only/--dicom-plain", help="Close the plain DICOM port (env PACS_DICOM_TLS_ONLY)"),
    ] = None,
    only: Annotated[
        Service | None,
        typer.Option(
            help="Run one service: dicom (the SCP; its HTTP port answers the health probes) or http"
            " (the gateway), to scale them apart (env PACS_ONLY)"
        ),
    ] = None,
) -> None:
    """Run the DICOM SCP and the HTTP gateway together, on embedded defaults unless configured."""
    settings = load_settings(
        data_dir=data_dir,
        dicom_port=dicom_port,
        http_port=http_port,
        http_host=http_host,
        ae_title=ae_title,
        dicom_workers=dicom_workers,
        dicom_tls_port=dicom_tls_port,
        dicom_tls_cert=dicom_tls_cert,
        dicom_tls_key=dicom_tls_key,
        dicom_tls_ca=dicom_tls_ca,
        dicom_tls_only=dicom_tls_only,
        only=only.value if only is not None else None,
    )
    configure_logging(settings.log_level)
    from pacs.ports import Unavailable
    from pacs.serving import serve as run
    from storage.errors import OutOfResources

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        run(settings, out)
    except (Unavailable, OutOfResources) as exc:
        raise fail(str(exc), 1) from None


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (searched recursively)", exists=True)],
    data_dir: DataDir = None,
    org: Annotated[str | None, typer.Option(help="Attribute the studies to this organization")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=0, max=64, help="Worker processes (0: one per core)")] = 0,
) -> None:
    """Bulk-import DICOM files through the same ingest pipeline as C-STORE and STOW-RS."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX, OBJECTS)
    configure_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    from pacs.importer import UnknownOrganization, WorkerLost, run_import

    try:
        code = run_import(settings, paths, org=org, console=out, jobs=jobs or os.cpu_count() or 1)
    except UnknownOrganization as exc:
        raise fail(str(exc)) from None
    except WorkerLost as exc:
        raise fail(str(exc), 1) from None
    raise typer.Exit(code)


@app.command()
def reindex(data_dir: DataDir = None) -> None:
    """Rebuild the index from the stored objects alone, into an empty database: the recovery of
    last resort when the database is lost (owners and counts come back; shares, consents, links
    decided by hand and the audit trail do not: restore those from a database backup)."""
    settings = existing_archive(load_settings(data_dir=data_dir), OBJECTS)
    configure_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from storage.errors import Conflict
    from storage.ingest.reindex import reindex as rebuild

    with _archive(settings) as archive:
        columns = (TextColumn("[bold]reindex"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("reindex", total=None)
            try:
                report = rebuild(archive, progress=lambda done, total: bar.update(task, completed=done, total=total))
            except Conflict as exc:
                raise fail(exc.detail, 1) from None
    out.print(
        f"reindexed {report.indexed} instances of {report.objects} objects"
        f" ({report.duplicates} second copies left aside, {report.unreadable} unreadable,"
        f" {report.unattributed} without their sender: unassigned);"
        f" {report.organizations} organizations recreated by id: register their names and AEs again",
        highlight=False,
    )
    raise typer.Exit(1 if report.unreadable else 0)


@org_app.command("add")
def org_add(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID, e.g. spital-sf-spiridon")],
    name: Annotated[str | None, typer.Option(help="Display name (required the first time)")] = None,
    ae: Annotated[
        list[str] | None, typer.Option("--ae", help="AE title of a node, AET or AET@host:port (repeatable)")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Address or network (10.0.0.0/24) the --ae nodes must call from"),
    ] = None,
    tls_subject: Annotated[
        str | None,
        typer.Option("--tls-subject", help="CN of the client certificate the --ae nodes must present over TLS"),
    ] = None,
    address_check: Annotated[
        bool | None,
        typer.Option("--address-check/--no-address-check", help="Hold its AEs to their addresses (default on)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register an institution and its AE titles; run again with the same ID to add AEs."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from dataclasses import replace

    from storage.access.orgs import AeSpec, add_org, check_network, check_org_id, update_org

    try:
        check_org_id(org_id)
        network = check_network(from_) if from_ else None
        specs = [replace(AeSpec.parse(a), allowed_from=network, tls_subject=tls_subject) for a in ae or []]
    except ValueError as exc:
        raise fail(str(exc)) from None
    with _archive(settings) as archive:
        try:
            with archive.db.write() as session:
                summary = add_org(session, org_id, name, specs)
                if address_check is not None:
                    summary = update_org(session, org_id, check_ae_address=address_check)
        except ValueError as exc:
            raise fail(str(exc), 1) from None
        _record(archive, "org add", f"{org_id}: {', '.join(str(a) for a in specs) or 'no AE'}")
    out.print(f"organization [bold]{summary.id}[/bold] ({summary.name})", highlight=False)
    for a in summary.aes:
        bound = "" if a.bound() or not summary.check_ae_address else " (accepted from any address: give --from)"
        out.print(f"  AE {a}{bound}", highlight=False, markup=False)


@org_app.command("list")
def org_list(data_dir: DataDir = None) -> None:
    """The institutions, their AEs and studies, and the studies no institution has claimed."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.access.orgs import list_orgs, unassigned

    with _archive(settings) as archive, archive.db.read() as session:
        orgs, waiting = list_orgs(session), unassigned(session)
    table = Table("ID", "name", "AEs", "studies", "state", box=None, pad_edge=False)
    for org in orgs:
        state = "disabled" if org.disabled else ("enabled" if org.check_ae_address else "enabled, any address")
        aes = ", ".join(str(a) + ("" if a.bound() else " (unbound)") for a in org.aes) or "-"
        table.add_row(org.id, org.name, aes, str(org.studies), state)
    out.print(table)
    for w in waiting:
        out.print(
            f"unassigned: {w.studies} stud{'y' if w.studies == 1 else 'ies'} from AE {w.ae_title or '(none)'}"
            f" (pacs org claim ORG --ae {w.ae_title})",
            highlight=False,
            markup=False,
        )


@org_app.command("disable")
def org_disable(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID")],
    data_dir: DataDir = None,
) -> None:
    """Disable an institution: its tokens and AEs are refused from their next request or association."""
    _set_disabled(org_id, True, data_dir)


@org_app.command("enable")
def org_enable(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID")],
    data_dir: DataDir = None,
) -> None:
    """Enable a disabled institution again (its revoked tokens stay revoked)."""
    _set_disabled(org_id, False, data_dir)


def _set_disabled(org_id: str, disabled: bool, data_dir: Path | None) -> None:
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.access.orgs import update_org

    with _archive(settings) as archive:
        try:
            with archive.db.write() as session:
                update_org(session, org_id, disabled=disabled)
        except KeyError:
            raise fail(f"organization {org_id!r} is not registered (pacs org list shows them)", 1) from None
        _record(archive, "org disable" if disabled else "org enable", org_id)
    out.print(f"organization {org_id} {'disabled' if disabled else 'enabled'}", highlight=False)


@org_app.command("remove-ae")
def org_remove_ae(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID")],
    ae_title: Annotated[str, typer.Argument(metavar="AET", help="AE title to unregister")],
    data_dir: DataDir = None,
) -> None:
    """Unregister an AE title of an institution; its next association is an unknown AE's."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.access.orgs import remove_ae

    with _archive(settings) as archive:
        try:
            with archive.db.write() as session:
                remove_ae(session, org_id, ae_title)
        except KeyError:
            raise fail(f"organization {org_id!r} has no AE {ae_title!r} (pacs org list shows them)", 1) from None
        _record(archive, "org remove-ae", f"{org_id}: {ae_title.strip()}")
    out.print(f"AE {ae_title.strip()} removed from {org_id}", highlight=False)


@org_app.command("claim")
def org_claim(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID")],
    ae: Annotated[str, typer.Option("--ae", help="The AE title whose unassigned studies become the organization's")],
    data_dir: DataDir = None,
) -> None:
    """Assign to an institution the studies its AE sent before it was registered."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.access.context import Context
    from storage.access.principal import Principal
    from storage.ingest.claim import claim

    with _archive(settings) as archive:
        try:
            n = claim(ae, org_id, Context.console(Principal.system("pacs-org-claim")), archive=archive)
        except ValueError as exc:
            raise fail(str(exc), 1) from None
    out.print(f"{n} unassigned stud{'y' if n == 1 else 'ies'} of AE {ae.strip()} now belong to {org_id}")


@token_app.callback(invoke_without_command=True)
def token(
    typer_ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Organization the token speaks for")] = None,
    role: Annotated[list[str] | None, typer.Option(help="clinician, integrator or admin (repeatable)")] = None,
    ttl: Annotated[str, typer.Option(help="Lifetime: 30s, 15m, 8h, 7d")] = "8h",
    sub: Annotated[str | None, typer.Option(help="Subject (user or system); default ROLE@ORG")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a signed bearer token for a provider's user or system (`pacs token revoke` ends tokens)."""
    if typer_ctx.invoked_subcommand is not None:
        return
    if not org or not role:
        raise fail("a token needs --org ID and at least one --role (clinician, integrator, admin)")
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX, KEY)
    from storage.access.orgs import get_org
    from storage.access.tokens import issue, parse_ttl

    try:
        seconds = parse_ttl(ttl)
        with _archive(settings) as archive, archive.db.read() as session:
            summary = get_org(session, org)
        if summary.disabled:
            raise fail(f"organization {org!r} is disabled: pacs org enable {org} first")
        signed = issue(settings, sub=sub or f"{role[0]}@{org}", org=org, roles=role, ttl_seconds=seconds)
    except KeyError:
        raise fail(f"organization {org!r} is not registered: pacs org add {org} --name ...") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    out.print(signed, soft_wrap=True, highlight=False)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str | None, typer.Option("--id", help="The token's ID (its jti claim)")] = None,
    sub: Annotated[str | None, typer.Option("--sub", help="Every token of this subject issued until now")] = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke one token or a subject's tokens; every server refuses them from the next request."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.access.standing import revoke_tokens

    with _archive(settings) as archive:
        try:
            with archive.db.write() as session:
                revoke_tokens(session, token_id=token_id, sub=sub, by="pacs-token-revoke")
        except ValueError as exc:
            raise fail(str(exc)) from None
        _record(archive, "token revoke", f"id {token_id}" if token_id else f"sub {sub}")
    out.print(f"revoked: {'token ' + token_id if token_id else 'every token of ' + str(sub) + ' issued until now'}")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Check the audit trail's hash chains; exit 1 naming the first broken record of each broken chain."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    from storage.audit.records import verify_trail

    with _archive(settings) as archive:
        result = verify_trail(archive.db)
    for b in result.breaks:
        out.print(f"[red]broken[/red] record {b.id} (chain {b.chain}, seq {b.seq}): {b.why}", highlight=False)
    verdict = "intact" if not result.breaks else f"{len(result.breaks)} chain(s) broken"
    out.print(f"{result.records} records in {result.chains} chain(s): {verdict}", highlight=False)
    if result.breaks:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply the schema migrations (SQLite or PostgreSQL)."""
    settings = existing_archive(load_settings(data_dir=data_dir), INDEX)
    configure_logging(settings.log_level)
    from storage.index.db import make_engine, redacted
    from storage.index.migrate import current, upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    out.print(f"database at revision {current(engine)}: {redacted(settings.database_url)}", highlight=False)
    engine.dispose()


@contextmanager
def _archive(settings: Settings) -> Iterator[Archive]:
    """The archive of a console command, migrated to the current schema, closed after."""
    from storage.archive import Archive
    from storage.index.migrate import upgrade

    archive = Archive.open(settings)
    try:
        upgrade(archive.db.engine)
        yield archive
    finally:
        archive.close()


def _record(archive: Archive, action: str, detail: str) -> None:
    """Put an operator's change of who may do what (organizations, AEs, tokens) in the audit trail."""
    from storage.access.context import Context
    from storage.access.principal import Principal

    ctx = Context.console(Principal.system("pacs-cli"), audit=archive.audit)
    archive.audit.record(ctx.event(action, "ok", detail=detail))


if __name__ == "__main__":
    app()
