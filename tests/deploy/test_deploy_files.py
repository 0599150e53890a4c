"""The deployment files work as written, although no container engine runs here: each is checked
by the tool its runtime would use, and every setting they name is one the archive reads.

* docker-compose.yml: the Compose Specification's JSON schema (check-jsonschema's vendored copy)
  and Debian's docker-compose (`config`: interpolation, anchors, references), with .env.example;
* deploy/k8s/: kubernetes-validate (the API's own schemas), strictly: an unknown field fails;
* deploy/Dockerfile: hadolint;
* deploy/nginx/pacs.conf.template and deploy/haproxy/haproxy.cfg: `nginx -t` and `haproxy -c`
  from Debian's packages, filled in as deploy/local-cluster.sh fills them in;
* every PACS_* variable of the compose file, the manifests, the Dockerfile and .env.example is a field of
  `storage.settings.Settings`, and every `pacs` command line they run parses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from storage.settings import Settings
from tests.kit.tools import missing, require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    """A checker installed with the dev extras (`pip install -e '.[dev]'`)."""
    path = VENV_BIN / name
    if not path.exists():
        missing(f"{name} (pip, the dev extras)", f"{name} from PyPI")
    return str(path)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ----- docker-compose.yml ----------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification() -> None:
    run(venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))


def test_docker_compose_reads_it_with_the_example_environment(tmp_path: Path) -> None:
    compose = require_tool("docker-compose", "docker-compose", python_script=True)
    config = run(compose, "-f", str(COMPOSE), "--env-file", str(ROOT / ".env.example"), "config", cwd=tmp_path)
    resolved = yaml.safe_load(config.stdout)
    services = resolved["services"]
    assert {"postgres", "s3", "dicom-1", "dicom-2", "http-1", "http-2", "haproxy", "nginx", "ohif"} <= set(services)
    for name in ("dicom-1", "dicom-2"):
        assert services[name]["command"] == ["serve", "--only", "dicom"]
    for name in ("http-1", "http-2"):
        assert services[name]["command"] == ["serve", "--only", "http"]
    env = services["http-1"]["environment"]
    assert env["PACS_DATABASE_URL"].startswith("postgresql+psycopg://pacs:change-me-postgres@postgres:5432/")
    assert env["PACS_STORAGE_URL"] == "s3://pacs?endpoint=http://s3:7070&region=us-east-1"
    assert "minio" not in COMPOSE.read_text().lower()  # MinIO's community edition is unmaintained


def test_a_missing_secret_stops_compose_with_a_message(tmp_path: Path) -> None:
    compose = require_tool("docker-compose", "docker-compose", python_script=True)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = subprocess.run(
        [compose, "-f", str(COMPOSE), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "S3_", "PACS_"))},
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "set it in .env" in done.stderr


# ----- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if m.name != "kustomization.yaml"], ids=lambda p: p.name)
def test_each_kubernetes_manifest_validates_strictly(manifest: Path) -> None:
    run(venv_tool("kubernetes-validate"), "--strict", "--quiet", str(manifest))


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = documents(DEPLOY / "k8s" / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {m.name for m in MANIFESTS} - {"kustomization.yaml", "secret.example.yaml"}


def test_the_pods_probe_run_as_non_root_and_read_secrets_by_reference() -> None:
    deployments = [d for m in MANIFESTS for d in documents(m) if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"pacs-dicom", "pacs-http"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(container)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]
        secrets = [e for e in container["env"] if "valueFrom" in e]
        assert {e["name"] for e in secrets} >= {"PACS_DATABASE_URL", "PACS_JWT_SECRET", "PACS_S3_SECRET_KEY"}
        assert all("value" not in e for e in container["env"])  # nothing secret written inline
    budgets = [d for m in MANIFESTS for d in documents(m) if d["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 2


# ----- the Dockerfile --------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    run(venv_tool("hadolint"), str(DEPLOY / "Dockerfile"))
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M) and text.count("FROM ") == 2
    assert "dcmtk" not in re.sub(r"#.*", "", text)


# ----- nginx and HAProxy, with the values local-cluster.sh gives --------------------------------


def test_nginx_accepts_the_gateway_template(tmp_path: Path) -> None:
    nginx = require_tool("nginx", "nginx")
    certs = tmp_path / "certs"
    run(sys.executable, str(DEPLOY / "dev_cert.py"), str(certs))
    values = {
        "PACS_GATEWAY_1": "127.0.0.1:18201",
        "PACS_GATEWAY_2": "127.0.0.1:18202",
        "PACS_VIEWER": "127.0.0.1:18203",
        "PACS_TLS_PORT": "18443",
        "PACS_TLS_DIR": str(certs),
        "PACS_OHIF_CONFIG": str(DEPLOY / "ohif" / "app-config.js"),
    }
    conf = tmp_path / "pacs.conf"
    conf.write_text(fill(DEPLOY / "nginx" / "pacs.conf.template", values))
    main = tmp_path / "nginx.conf"
    main.write_text(
        "pid nginx.pid;\nerror_log stderr;\nevents {}\n"
        f"http {{\n  client_body_temp_path {tmp_path}/t;\n  proxy_temp_path {tmp_path}/p;\n  include {conf};\n}}\n"
    )
    run(nginx, "-t", "-p", str(tmp_path), "-c", str(main))


def test_haproxy_accepts_its_configuration() -> None:
    haproxy = require_tool("haproxy", "haproxy")
    env = {
        "PACS_LB_BIND": "127.0.0.1:11112",
        "PACS_SCP_1": "127.0.0.1:11201",
        "PACS_SCP_2": "127.0.0.1:11202",
        "PACS_SCP_1_HEALTH": "8201",
        "PACS_SCP_2_HEALTH": "8202",
    }
    run(haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg"), env=env)


def fill(template: Path, values: dict[str, str]) -> str:
    """`${NAME}` replaced as envsubst (and the nginx image) would; every one must be given."""
    text = template.read_text()
    named = set(re.findall(r"\$\{(PACS_\w+)\}", text))
    assert named == set(values), named ^ set(values)
    return re.sub(r"\$\{(PACS_\w+)\}", lambda m: values[m.group(1)], text)


# ----- every setting they name exists ----------------------------------------------------------


def named_settings() -> dict[str, set[str]]:
    """PACS_* variable -> the files that set it."""
    found: dict[str, set[str]] = {}
    for path in [COMPOSE, ROOT / ".env.example", DEPLOY / "Dockerfile", *MANIFESTS]:
        for name in re.findall(r"^\s*(?:- name: |#?\s*)?(PACS_[A-Z0-9_]+)\s*[:=]", path.read_text(), re.M):
            found.setdefault(name, set()).add(path.name)
        for name in re.findall(r"name: (PACS_[A-Z0-9_]+)", path.read_text()):
            found.setdefault(name, set()).add(path.name)
    return found


#: variables of the deployment files that are theirs, not the archive's
DEPLOYMENT_ONLY = {
    "PACS_IMAGE",
    "PACS_BUCKET",
    "PACS_LB_BIND",
    "PACS_SCP_1",
    "PACS_SCP_2",
    "PACS_SCP_1_HEALTH",
    "PACS_SCP_2_HEALTH",
    "PACS_GATEWAY_1",
    "PACS_GATEWAY_2",
    "PACS_VIEWER",
    "PACS_TLS_PORT",
    "PACS_TLS_DIR",
    "PACS_OHIF_CONFIG",
}


def test_every_archive_setting_the_files_name_is_one_it_reads() -> None:
    fields = {f"PACS_{name.upper()}" for name in Settings.model_fields}
    named = named_settings()
    assert len(named) >= 12, named
    unknown = {name: files for name, files in named.items() if name not in fields | DEPLOYMENT_ONLY}
    assert not unknown, f"not settings of the archive (storage/settings.py): {unknown}"


def test_the_commands_they_run_parse() -> None:
    helped = run(str(VENV_BIN / "pacs"), "serve", "--help", env={"COLUMNS": "200"}).stdout
    assert "--only" in helped and "dicom" in helped
