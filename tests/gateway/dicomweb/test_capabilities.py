"""GET /dicomweb describes what is mounted, and the OpenAPI description documents STOW and DELETE."""

from __future__ import annotations

import httpx
import pytest

from tests.kit.dicomweb import Gateway

pytestmark = pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)  # no storage involved


def test_capabilities_name_the_mounted_transactions(gateway: Gateway) -> None:
    assert httpx.get(gateway.dicomweb).status_code == 401
    r = httpx.get(gateway.dicomweb, headers=gateway.headers())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    caps = r.json()
    assert caps["root"] == gateway.dicomweb
    routes = {(t["method"], t["path"]): t for t in caps["transactions"]}
    stow = routes[("POST", "/dicomweb/studies")]
    assert stow["service"] == "STOW-RS"
    assert stow["request_media_types"] == ['multipart/related; type="application/dicom"']
    assert stow["response_media_types"] == ["application/dicom+json"]
    assert ("POST", "/dicomweb/studies/{study}") in routes
    assert routes[("DELETE", "/dicomweb/studies/{study}/series/{series}")]["summary"].endswith("(admin)")
    assert caps["store"]["failure_reasons"]["truncated"] == "0xC000"
    assert caps["store"]["failure_reasons"]["study_mismatch"] == "0xA900"
    # honest: every transaction it lists answers something else than 404/405
    openapi = httpx.get(f"{gateway.url}/openapi.json", headers=gateway.headers()).json()
    for method, path in routes:
        assert method.lower() in openapi["paths"][path]


def test_openapi_documents_stow_and_delete(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/openapi.json").status_code == 401
    paths = httpx.get(f"{gateway.url}/openapi.json", headers=gateway.headers()).json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}"):
        op = paths[path]["post"]
        assert op["summary"].startswith("Store instances")
        assert 'multipart/related; type="application/dicom"' in op["requestBody"]["content"]
        for code in ("200", "202", "409"):
            assert list(op["responses"][code]["content"]) == ["application/dicom+json"], code
        assert {"400", "406", "415"} <= set(op["responses"])
    for path in ("/dicomweb/studies/{study}", "/dicomweb/studies/{study}/series/{series}"):
        op = paths[path]["delete"]
        assert "admin" in op["summary"] and {"200", "403", "404"} <= set(op["responses"])
        assert set(op["responses"]["200"]["content"]["application/json"]["schema"]) == {"$ref"}


def test_openapi_says_what_each_route_answers(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", headers=gateway.headers()).json()

    def success(path: str) -> set[str]:
        return set(spec["paths"][path]["get"]["responses"]["200"]["content"])

    instance = "/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    assert "application/dicom+json" in success("/dicomweb/studies")
    assert success("/dicomweb/studies/{study}") == {'multipart/related; type="application/dicom"'}
    assert success("/dicomweb/studies/{study}/metadata") == {"application/dicom+json"}
    assert success(instance + "/frames/{frames}") == {'multipart/related; type="application/octet-stream"'}
    assert {"image/jpeg", "image/png"} <= success(instance + "/rendered")
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path  # bad input is a 400 problem here
            if not path.startswith(("/healthz", "/readyz")):
                assert "401" in operation["responses"], path
