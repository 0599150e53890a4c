"""The `pacs` command line: the composition root of every process.

It is the one place that builds `Settings` (flags over `PACS_*` variables over defaults),
configures logging, and wires the archive into the SCP and the gateway.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from pacs.logconfig import configure_logging
from storage.settings import Settings

app = typer.Typer(
    help="Municipal PACS: DICOM archive, DICOMweb/FHIR gateway and cross-institution patient index.",
    no_args_is_help=True,
    add_completion=False,
)
org_app = typer.Typer(help="Institutions and the AE titles of their modalities and workstations.", no_args_is_help=True)
db_app = typer.Typer(help="The index database.", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(db_app, name="db")

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
    )
    configure_logging(settings.log_level)
    _prepare_metrics_dir(settings)
    import uvicorn
    from uvicorn.importer import import_from_string

    from pacs import server
    from storage.archive import Archive
    from storage.index.migrate import upgrade
    from storage.ingest.recovery import recover

    archive = Archive.open(settings)
    upgrade(archive.db.engine)
    report = recover(archive)
    scp = None
    workers = None
    if settings.dicom_workers == 1:
        scp = server.start(settings, archive)
    else:
        workers = server.start_workers(settings)  # spawned processes, in this process group

    # The gateway is found by its import string, so pacs/ never imports gateway/ (DESIGN.md).
    create_app = import_from_string("gateway.app:create_app")
    web = create_app(settings, archive)
    out.print(f"[bold]Municipal PACS[/bold]  data: {settings.data_dir}")
    listens = [] if settings.dicom_tls_only else [f"{settings.dicom_host}:{settings.dicom_port}"]
    if settings.dicom_tls:
        mutual = ", client certificates required" if settings.dicom_tls_ca else ""
        listens.append(f"{settings.dicom_host}:{settings.dicom_tls_port} (TLS{mutual})")
    out.print(
        f"  DICOM  {settings.ae_title} on {', '.join(listens)}"
        f" ({settings.dicom_workers} SCP process{'es' if settings.dicom_workers > 1 else ''})"
    )
    out.print(f"  HTTP   {settings.public_url}  (DICOMweb {settings.public_url}/dicomweb, /healthz /readyz /metrics)")
    out.print(f"  index  {_redact(settings.database_url)}   blobs  {settings.storage_url}")
    out.print(f"  admin token (valid {ADMIN_TOKEN_TTL}, renewed at each start): {_write_admin_token(settings)}")
    if report.removed:
        out.print(f"  recovery removed {report.removed} unfinished write(s)")
    sys.stdout.flush()
    server.freeze_startup_heap()
    try:
        uvicorn.run(web, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False)
    finally:
        if workers is not None:
            workers.stop()
        if scp is not None:
            scp.shutdown()
        archive.close()


ADMIN_TOKEN_TTL = "7d"


def _write_admin_token(settings: Settings) -> Path:
    """An admin token for the operator, in a file only its owner can read."""
    from storage.access.tokens import issue, parse_ttl

    path = settings.data_dir / "admin-token"
    token = issue(settings, sub="admin", org=None, roles=["admin"], ttl_seconds=parse_ttl(ADMIN_TOKEN_TTL))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return path


def _prepare_metrics_dir(settings: Settings) -> None:
    """Worker processes count into files that /metrics adds up (prometheus_client multiprocess)."""
    if settings.dicom_workers <= 1:
        return
    metrics_dir = settings.run_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # prometheus_client reads this variable when it is first imported, in this process and in
    # the spawned workers, which inherit the environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    settings.metrics_dir = metrics_dir


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (searched recursively)", exists=True)],
    data_dir: DataDir = None,
    org: Annotated[str | None, typer.Option(help="Attribute the studies to this organization")] = None,
) -> None:
    """Bulk-import DICOM files through the same ingest pipeline as C-STORE and STOW-RS."""
    settings = load_settings(data_dir=data_dir)
    configure_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    from pacs.importer import run_import

    code = run_import(settings, paths, org=org, console=out)
    raise typer.Exit(code)


@org_app.command("add")
def org_add(
    org_id: Annotated[str, typer.Argument(metavar="ID", help="Organization ID, e.g. spital-sf-spiridon")],
    name: Annotated[str | None, typer.Option(help="Display name (required the first time)")] = None,
    ae: Annotated[
        list[str] | None, typer.Option("--ae", help="AE title of a node, AET or AET@host:port (repeatable)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register an institution and its AE titles; run again with the same ID to add AEs."""
    settings = load_settings(data_dir=data_dir)
    from storage.access.orgs import AeSpec, add_org
    from storage.archive import Archive
    from storage.index.migrate import upgrade

    try:
        specs = [AeSpec.parse(a) for a in ae or []]
    except ValueError as exc:
        console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    archive = Archive.open(settings)
    try:
        upgrade(archive.db.engine)
        with archive.db.write() as session:
            summary = add_org(session, org_id, name, specs)
    except ValueError as exc:
        console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        archive.close()
    out.print(f"organization [bold]{summary.id}[/bold] ({summary.name})")
    for a in summary.aes:
        out.print(f"  AE {a.ae_title}" + (f" at {a.host}:{a.port}" if a.host else ""))


@app.command()
def token(
    org: Annotated[str, typer.Option(help="Organization the token speaks for")],
    role: Annotated[list[str], typer.Option(help="clinician, integrator or admin (repeatable)")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 30s, 15m, 8h, 7d")] = "8h",
    sub: Annotated[str | None, typer.Option(help="Subject (user or system); default ROLE@ORG")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a signed bearer token for a provider's user or system."""
    settings = load_settings(data_dir=data_dir)
    from storage.access.orgs import get_org
    from storage.access.tokens import issue, parse_ttl
    from storage.archive import Archive
    from storage.index.migrate import upgrade

    try:
        seconds = parse_ttl(ttl)
        archive = Archive.open(settings)
        try:
            upgrade(archive.db.engine)
            with archive.db.read() as session:
                get_org(session, org)
        except KeyError:
            raise ValueError(f"organization {org!r} is not registered: pacs org add {org} --name ...") from None
        finally:
            archive.close()
        out.print(
            issue(settings, sub=sub or f"{role[0]}@{org}", org=org, roles=role, ttl_seconds=seconds),
            soft_wrap=True,
            highlight=False,
        )
    except ValueError as exc:
        console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply the schema migrations (SQLite or PostgreSQL)."""
    settings = load_settings(data_dir=data_dir)
    configure_logging(settings.log_level)
    from storage.index.db import make_engine
    from storage.index.migrate import current, upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    out.print(f"database at revision {current(engine)}: {_redact(settings.database_url)}")
    engine.dispose()


if __name__ == "__main__":
    app()
