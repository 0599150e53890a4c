"""The one settings object of the service.

Every `PACS_*` variable of DESIGN.md lives here and nowhere else: the command line builds a
`Settings` once (flags override the environment) and hands it to whatever it starts, so no
module reads the environment on its own and tests build their own instances.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


class Settings(BaseSettings):
    """Configuration from `PACS_*` environment variables and `pacs serve` flags."""

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore", validate_default=True)

    data_dir: Path = Path("./var")
    database_url: str = ""
    storage_url: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")

    ae_title: str = "MUNIPACS"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_workers: int = Field(default=1, ge=1, le=64)
    #: the largest PDU the SCP receives (PS3.8 D.1); announced, and enforced on every PDU read
    max_pdu: int = Field(default=1_048_576, ge=4096, le=128 * 1024 * 1024)
    max_associations: int = Field(default=64, ge=1)
    #: what one host (peer address), one calling AE title may hold at once, so that one
    #: misbehaving node cannot take every association slot from the modalities
    dicom_max_per_address: int = Field(default=32, ge=1)
    dicom_max_per_ae: int = Field(default=16, ge=1)
    #: TCP connections waiting to be accepted (the listen backlog)
    dicom_backlog: int = Field(default=128, ge=1, le=65535)
    #: seconds a connection has to ask for its association (and a TLS client its handshake)
    dicom_acse_timeout: float = Field(default=10.0, gt=0, le=600)
    #: seconds an association may stay silent (and a peer take to answer a request)
    dicom_idle_timeout: float = Field(default=60.0, gt=0, le=86400)
    #: the largest object a C-STORE may send (its transfer is aborted beyond) and a STOW-RS part
    #: (413 beyond); `pacs import` reads files an operator chose and has no limit
    dicom_max_object_size: ByteSize = Field(default=ByteSize(4 * 1024**3), ge=1024)
    http_max_object_size: ByteSize = Field(default=ByteSize(2 * 1024**3), ge=1024)
    #: C-STORE data sets read by the association's reader thread straight into their file
    #: (`pacs.wire.direct_store`); off: pynetdicom's path for every message, as before [10/10]
    dicom_direct_store: bool = True
    #: DICOM TLS (PS3.15 B.1, BCP 195): on when a certificate and its key are given; 2762 is
    #: DICOM's registered port for it. A CA file makes client certificates required (mutual TLS).
    dicom_tls_port: int = Field(default=2762, ge=0, le=65535)
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    dicom_tls_only: bool = False

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = ""

    jwt_secret: SecretStr = SecretStr("")
    oidc_issuer: str = ""
    oidc_audience: str = ""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: the audit trail (DESIGN.md "Access, shares, emergency access, consent and audit"):
    #: off only to measure what it costs (benchmarks); a server without it keeps no record
    audit: bool = True
    #: where to forward each audit record as RFC 5424 syslog carrying a DICOM audit message
    #: (PS3.15 A.5): `tcp://host:port` or `tls://host:port`; empty: not forwarded
    audit_syslog: str = ""
    #: CA bundle that signs the syslog target's certificate (`tls://`); empty: the system's
    audit_syslog_ca: Path | None = None
    #: requests a token subject may make per second, sustained (bursts of 10 seconds' worth: a
    #: viewer opening a series asks for its frames at once); 0: no limit
    http_rate_limit: float = Field(default=200.0, ge=0)
    #: C-FIND, C-MOVE, C-GET and commitment requests a calling AE may make per second, sustained
    #: (bursts of 2 seconds' worth); 0: no limit
    dicom_rate_limit: float = Field(default=50.0, ge=0)

    #: the patient index (DESIGN.md "Patients across institutions", storage/patients/model.py):
    #: a score (bits) at which two identities link, and at which a reviewer is asked; how often
    #: each `pacs serve` links what ingest queued (seconds)
    mpi_link_at: float = 25.0
    mpi_review_at: float = 12.0
    mpi_interval: float = Field(default=2.0, gt=0, le=3600)
    #: a provider also sees the other organizations' studies of a person of whom it holds a
    #: study or an open worklist step, unless the person opted out (DESIGN.md); false: shares only
    care_relationship: bool = True

    #: FHIR Subscriptions (`storage.workflow.subscriptions`): seconds without a new instance
    #: after which a study counts as arrived and is notified (Orthanc's StableAge, 60 there);
    #: the first retry's wait, doubling up to the longest; failed sends in a row that put a
    #: subscription in status error; the URL prefixes a rest-hook may post to (empty: any
    #: http or https URL)
    subscription_quiet: float = Field(default=10.0, ge=0, le=86400)
    subscription_retry: float = Field(default=5.0, gt=0, le=3600)
    subscription_retry_max: float = Field(default=600.0, gt=0, le=86400)
    subscription_failures: int = Field(default=8, ge=1, le=1000)
    subscription_endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: which service this `pacs serve` runs: both (""), the SCP only ("dicom": its HTTP port then
    #: answers the health probes and /metrics only) or the gateway only ("http")
    only: Literal["", "dicom", "http"] = ""
    #: addresses whose X-Forwarded-For and X-Forwarded-Proto are believed (the load balancer's:
    #: the audit trail then names the client, not the proxy); "*" for any (behind a proxy only)
    forwarded_allow_ips: str = "127.0.0.1"
    #: seconds SIGTERM leaves in-flight associations and requests to finish before they are cut
    shutdown_grace: float = Field(default=30.0, ge=0, le=3600)
    #: seconds start-up waits for the database and the object store to answer
    startup_timeout: float = Field(default=120.0, ge=0, le=86400)

    log_level: str = "INFO"
    #: set by `pacs serve` when worker processes share Prometheus metrics through files
    metrics_dir: Path | None = None
    recovery_grace_seconds: int = Field(default=600, ge=0)

    @model_validator(mode="after")
    def _check_mpi_thresholds(self) -> Settings:
        if self.mpi_review_at > self.mpi_link_at:
            raise ValueError("PACS_MPI_REVIEW_AT must not be above PACS_MPI_LINK_AT")
        return self

    @field_validator("cors_origins", "subscription_endpoints", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not AE_TITLE_RE.match(value):
            raise ValueError("an AE title is 1 to 16 printable ASCII characters without a backslash")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        # Heroku-style and libpq-style URLs name no driver; the project ships psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value and urlparse(value).scheme not in ("file", "s3"):
            raise ValueError("PACS_STORAGE_URL must start with file:// or s3://")
        return value

    @field_validator("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca", mode="before")
    @classmethod
    def _absolute(cls, value: object) -> object:
        # An empty variable means unset; a relative path is made absolute so that worker
        # processes and the log name one file wherever they run from.
        if value is None or value == "":
            return None
        return Path(str(value)).expanduser().resolve()

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        # A half-configured TLS port would come up without the protection the operator asked for,
        # or not come up at all hours later: refuse the configuration at start instead.
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("DICOM TLS needs both PACS_DICOM_TLS_CERT and PACS_DICOM_TLS_KEY")
        if not self.dicom_tls and (self.dicom_tls_ca is not None or self.dicom_tls_only):
            raise ValueError("PACS_DICOM_TLS_CA and PACS_DICOM_TLS_ONLY need a certificate and key")
        for path in (self.dicom_tls_cert, self.dicom_tls_key, self.dicom_tls_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"DICOM TLS file {path} does not exist")
        if self.dicom_tls and not self.dicom_tls_only and self.dicom_tls_port == self.dicom_port != 0:
            raise ValueError("the DICOM TLS port must differ from the plain DICOM port")
        return self

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        self.data_dir = data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'index.db'}"
        if not self.storage_url:
            self.storage_url = f"file://{data_dir / 'objects'}"
        if not self.public_url:
            host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
            self.public_url = f"http://{host}:{self.http_port}"
        self.public_url = self.public_url.rstrip("/")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def dicom_tls(self) -> bool:
        """Whether the SCP also listens with TLS."""
        return self.dicom_tls_cert is not None

    def kept_in_data_dir(self) -> dict[str, bool]:
        """Which parts of the archive this configuration keeps in the data folder: the index
        (SQLite), the objects (a folder) and the local token key (no PACS_JWT_SECRET)."""
        folder = self.data_dir
        index = self.database_url.partition(":///")[2].partition("?")[0]  # sqlite:///PATH (absolute: ////)
        objects = urlparse(self.storage_url)
        return {
            "index": self.is_sqlite and Path(index).resolve().is_relative_to(folder),
            "objects": objects.scheme == "file"
            and Path(objects.netloc + objects.path).resolve().is_relative_to(folder),
            "token key": not self.jwt_secret.get_secret_value(),
        }

    @property
    def run_dir(self) -> Path:
        """Per-instance runtime state (metrics of worker processes, generated keys)."""
        return self.data_dir / "run"
