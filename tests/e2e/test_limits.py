"""Rate limits per token subject and per calling AE, and the security headers of every answer.

With a low limit (`PACS_HTTP_RATE_LIMIT=2`: bursts of 20; `PACS_DICOM_RATE_LIMIT=1`: bursts of
2), one caller going over it gets 429 with `Retry-After` (HTTP) or 0xA700 with an Error Comment
(C-FIND), while another caller is still served, and the refusal is audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from pacs.server import RunningScp, start
from storage.archive import Archive
from storage.settings import Settings
from tests.kit.backends import migrated_archive, settings_for
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.dimse import STUDY_ROOT, keys, pyfind
from tests.kit.seed import seed_orgs


@pytest.fixture()
def limited(tmp_path: Path) -> Iterator[tuple[Gateway, RunningScp, Archive]]:
    settings: Settings = settings_for(tmp_path / "var", http_rate_limit=2, dicom_rate_limit=1)
    with migrated_archive(settings) as archive:
        seed_orgs(archive)
        scp = start(settings, archive)
        gen = serve_gateway(settings, archive)
        try:
            yield next(gen), scp, archive
        finally:
            gen.close()
            scp.shutdown()


def test_one_token_over_its_rate_gets_429_and_others_are_served(limited: tuple[Gateway, RunningScp, Archive]) -> None:
    gateway, _, _ = limited
    greedy = gateway.headers(org="hosp-a")
    answers = [httpx.get(f"{gateway.dicomweb}/studies", headers=greedy) for _ in range(30)]
    statuses = [r.status_code for r in answers]
    assert statuses[:10] == [200] * 10 and 429 in statuses, statuses  # bursts of 20, 2 more a second
    # The refusal itself is inspected, not a later request: a slow machine refills the bucket between calls.
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{gateway.dicomweb}/studies", headers=gateway.headers(org="clinic-b")).status_code == 200
    admin = gateway.headers(org=None, roles=("admin",))
    limited_records = httpx.get(f"{gateway.url}/api/audit", params={"outcome": "limited"}, headers=admin).json()
    assert limited_records and {r["actor"] for r in limited_records} == {"clinician@hosp-a"}


def test_one_ae_over_its_rate_gets_a700_and_others_are_served(limited: tuple[Gateway, RunningScp, Archive]) -> None:
    _, scp, _ = limited
    statuses = [pyfind(scp.port, keys("STUDY", StudyInstanceUID=""), aet="CT1")[-1][0] for _ in range(4)]
    assert statuses[:2] == [0x0000, 0x0000] and 0xA700 in statuses, [hex(s) for s in statuses]
    ae = AE(ae_title="CT1")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    try:
        status = [status for status, _ in assoc.send_c_find(keys("STUDY", StudyInstanceUID=""), STUDY_ROOT)][-1]
    finally:
        assoc.release()
    assert status.Status == 0xA700 and "retry in" in status.ErrorComment
    assert pyfind(scp.port, keys("STUDY", StudyInstanceUID=""), aet="US-B")[-1][0] == 0x0000


def test_security_headers_on_every_answer(limited: tuple[Gateway, RunningScp, Archive]) -> None:
    gateway, _, _ = limited
    answers = {
        "data": httpx.get(f"{gateway.dicomweb}/studies", headers=gateway.headers(org="clinic-b")),
        "problem": httpx.get(f"{gateway.dicomweb}/studies"),
        "health": httpx.get(f"{gateway.url}/healthz"),
    }
    for name, r in answers.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["referrer-policy"] == "no-referrer", name
        assert r.headers["content-security-policy"].startswith("default-src 'none'"), name
    assert answers["data"].headers["cache-control"] == "no-store"
    assert answers["problem"].headers["cache-control"] == "no-store"
    docs = httpx.get(f"{gateway.url}/docs", headers=gateway.headers(org="clinic-b"))
    assert docs.status_code == 200 and "script-src" in docs.headers["content-security-policy"]


def test_a_token_in_the_url_is_not_a_credential(limited: tuple[Gateway, RunningScp, Archive]) -> None:
    gateway, _, _ = limited
    token = gateway.token("hosp-a")
    for name in ("access_token", "token"):
        assert httpx.get(f"{gateway.dicomweb}/studies", params={name: token}).status_code == 401
