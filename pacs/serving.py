"""`pacs serve`: open the archive, take the ports, start the SCP and the gateway, say how to use them.

Every port is taken before anything starts serving, so a busy port ends the command at once with
one line naming it (`pacs.ports.Unavailable`), and a server that started is always whole. The
banner says where each service listens and what to type next, with this server's own ports,
AE title and data folder, so the README's quick start works as pasted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import uvicorn
from rich.console import Console
from uvicorn.importer import import_from_string

from pacs import linking, ports, server
from storage.access.tokens import issue, parse_ttl
from storage.archive import Archive
from storage.audit.forward import start_forwarder
from storage.index.db import redacted
from storage.index.migrate import upgrade
from storage.ingest.recovery import Sweeper, recover
from storage.logs import event
from storage.settings import Settings

ADMIN_TOKEN_TTL = "7d"
log = logging.getLogger(__name__)


def serve(settings: Settings, out: Console) -> None:
    """Run the DICOM SCP and the HTTP gateway until stopped (or one of them: `settings.only`).

    Start-up waits for the database and the object store (`PACS_STARTUP_TIMEOUT`). SIGTERM or
    Ctrl-C stops accepting at once and lets what is in flight finish for `PACS_SHUTDOWN_GRACE`
    seconds: HTTP requests (uvicorn's graceful shutdown), then DICOM associations (the SCP's
    drain), after which what is left is cut (an association aborted: nothing it had not been
    told was stored is lost).

    Raises
    ------
    pacs.ports.Unavailable
        A port cannot be listened on; nothing was started.
    storage.errors.OutOfResources
        The database or the object store did not answer in time.
    """
    _prepare_metrics_dir(settings)
    http = ports.bind(ports.http(settings.http_host, settings.http_port))
    # uvicorn hands a SIGTERM it caught back to the handler it found once it has shut down: with
    # Python's default one the process would end there, before the SCP drains (kill, docker
    # stop, Kubernetes): this one ends `serve` through its `finally` instead
    signal.signal(signal.SIGTERM, _terminated)
    scp = workers = forwarder = linker = archive = sweeper = None
    try:
        archive = Archive.open_when_reachable(settings, timeout=settings.startup_timeout, waiting=_waiting)
        upgrade(archive.db.engine)  # under PostgreSQL's advisory lock: processes starting together take turns
        report = recover(archive)
        forwarder = start_forwarder(archive.db, settings, owner=archive.owner)  # None unless PACS_AUDIT_SYSLOG
        linker = linking.start(settings)  # links the identities ingest queues, in a process of its own
        sweeper = Sweeper(archive).start()  # writes a failure could not clean up (an outage) are removed
        if settings.only != "http":
            if settings.dicom_workers == 1:
                scp = server.start(settings, archive)
            else:
                workers = server.start_workers(settings)  # spawned processes, in this process group
        # The gateway is found by its import string, so pacs/ never imports gateway/ (DESIGN.md);
        # a DICOM-only process serves the health probes (and /metrics) on its HTTP port.
        factory = "gateway.app:create_health_app" if settings.only == "dicom" else "gateway.app:create_app"
        web = import_from_string(factory)(settings, archive)
        token = _write_admin_token(settings)
        _banner(out, settings, scp, http, token, report.removed)
        server.freeze_startup_heap()
        config = uvicorn.Config(
            web,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=int(settings.shutdown_grace),
        )
        uvicorn.Server(config).run(sockets=[http])
    except Terminated:
        event(log, "serve.stopping", signal="SIGTERM", grace=settings.shutdown_grace)
    finally:
        http.close()
        if workers is not None:
            workers.stop(settings.shutdown_grace)
        if scp is not None:
            scp.shutdown(settings.shutdown_grace)
        if sweeper is not None:
            sweeper.stop()
        if linker is not None:
            linker.stop()
        if forwarder is not None:
            forwarder.stop()
        if archive is not None:
            archive.close()


class Terminated(Exception):
    """SIGTERM reached `pacs serve`: stop as after Ctrl-C."""


def _terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _waiting(component: str, reason: str, retry_in: float) -> None:
    event(log, "startup.waiting", level=logging.WARNING, component=component, reason=reason, retry_in=retry_in)


def _banner(
    out: Console, settings: Settings, scp: server.RunningScp | None, http: socket.socket, token: Path, removed: int
) -> None:
    dicom_port = scp.port if scp is not None and not settings.dicom_tls_only else settings.dicom_port
    http_port = int(http.getsockname()[1])
    url = settings.public_url if settings.http_port else f"http://{settings.http_host}:{http_port}"
    out.print(f"[bold]Municipal PACS[/bold]  data: {settings.data_dir}", highlight=False)
    listens = [] if settings.dicom_tls_only else [f"{settings.dicom_host}:{dicom_port}"]
    if settings.dicom_tls:
        mutual = ", client certificates required" if settings.dicom_tls_ca else ""
        listens.append(f"{settings.dicom_host}:{settings.dicom_tls_port} (TLS{mutual})")
    processes = f"{settings.dicom_workers} SCP process{'es' if settings.dicom_workers > 1 else ''}"
    dicom = f"  DICOM  {settings.ae_title} on {', '.join(listens)} ({processes})"
    web = f"  HTTP   {url}  (DICOMweb {url}/dicomweb, /healthz /readyz /metrics)"
    if settings.only == "dicom":
        web = f"  HTTP   {url}  (the health probes /healthz /readyz and /metrics only: --only dicom)"
    elif settings.only == "http":
        dicom = "  DICOM  not served here (--only http)"
    lines = [
        dicom,
        web,
        f"  index  {redacted(settings.database_url)}   blobs  {settings.storage_url}",
        f"  admin token (valid {ADMIN_TOKEN_TTL}, renewed at each start): {token}",
    ]
    if removed:
        lines.append(f"  recovery removed {removed} unfinished write(s)")
    if not settings.only:
        lines += _next_steps(settings, dicom_port, url, token)
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    sys.stdout.flush()


def _next_steps(settings: Settings, dicom_port: int, url: str, token: Path) -> list[str]:
    """What to type next, with this server's values (the README's quick start, in order)."""
    pacs = _command()
    data = "" if settings.data_dir == Path("var").resolve() else f" --data-dir {settings.data_dir}"
    host = "localhost" if settings.dicom_host in ("0.0.0.0", "::") else settings.dicom_host
    aec = f"-aet CT1 -aec {settings.ae_title}"
    return [
        "  next steps, from another terminal: register a modality, send it a study (dcmtk), find it",
        f"    {pacs} org add spital-a --name 'Spitalul A' --ae CT1{data}",
        f"    storescu {aec} +sd +r {host} {dicom_port} study/",
        f"    findscu -v -S {aec} -k QueryRetrieveLevel=STUDY -k PatientName {host} {dicom_port}",
        f'    curl -H "Authorization: Bearer $(cat {token})" {url}/dicomweb/studies',
    ]


def _command() -> str:
    """How the operator invoked `pacs` (the venv's script when it is not on PATH)."""
    invoked = Path(sys.argv[0])
    on_path = shutil.which("pacs")
    if on_path is not None and Path(on_path).resolve() == invoked.resolve():
        return "pacs"
    try:
        return str(invoked.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(invoked)


def _write_admin_token(settings: Settings) -> Path:
    """An admin token for the operator, in a file only its owner can read."""
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
