"""FHIR Subscriptions' rules in storage, on both backends: owners, matches recorded once,
deliveries claimed by one process at a time, backoff, status error, and deletion.

The notifier that runs these rules against a real receiver is tested in
`tests/gateway/test_fhir_subscription.py` and `tests/e2e/test_subscription_restart.py`; here two
"processes" are two owner strings over one database, as in `test_commitment_claims.py`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from storage.archive import Archive
from storage.errors import Conflict, Gone, NotAuthorized, NotFound
from storage.index.models import Subscription, SubscriptionDelivery
from storage.workflow import subscriptions as subs
from tests.kit.principals import ADMIN, CLINICIAN_A, INTEGRATOR_A, INTEGRATOR_B, ctx

SPEC = subs.Spec(criteria="ImagingStudy?modality=CT", endpoint="http://127.0.0.1:9/hook")
RETRY = subs.Retry(first=1.0, longest=4.0, failures=3)
NOW = datetime.now(UTC)


def made(archive: Archive, spec: subs.Spec = SPEC) -> subs.Record:
    with archive.db.write() as session:
        return subs.create(session, ctx(INTEGRATOR_A), spec)


def matched(archive: Archive, subscription: int, *uids: str) -> None:
    with archive.db.write() as session:
        subs.record_matches(session, subscription, [(uid, NOW) for uid in uids], NOW)


def claim(archive: Archive, owner: str) -> list[subs.Due]:
    with archive.db.write() as session:
        return subs.claim_due(session, owner)


def rows(archive: Archive) -> list[SubscriptionDelivery]:
    with archive.db.read() as session:
        return list(session.scalars(select(SubscriptionDelivery).order_by(SubscriptionDelivery.id)))


def test_a_study_version_is_recorded_once_however_often_it_is_matched(archive: Archive) -> None:
    sub = made(archive)
    matched(archive, sub.id, "1.2.3", "1.2.4")
    matched(archive, sub.id, "1.2.3", "1.2.4", "1.2.5")  # a second round, or another process
    with archive.db.read() as session:
        assert subs.unrecorded(session, sub.id, [("1.2.3", NOW), ("1.2.6", NOW)]) == [("1.2.6", NOW)]
    assert sorted(d.study_uid for d in rows(archive)) == ["1.2.3", "1.2.4", "1.2.5"]
    later = NOW + timedelta(seconds=1)  # the same study changed again: a new notification
    with archive.db.write() as session:
        subs.record_matches(session, sub.id, [("1.2.3", later)], later)
    assert [d.study_uid for d in rows(archive)].count("1.2.3") == 2


def test_a_delivery_is_claimed_by_one_process_until_its_claim_lapses_or_its_holder_dies(archive: Archive) -> None:
    sub = made(archive)
    matched(archive, sub.id, "1.2.3")
    first = claim(archive, "host-a:1")
    assert [d.study_uid for d in first] == ["1.2.3"] and first[0].owner == INTEGRATOR_A
    assert claim(archive, "host-b:2") == []  # held
    with archive.db.write() as session:  # the lease runs out
        session.execute(update(SubscriptionDelivery).values(claimed_until=NOW - timedelta(seconds=1)))
    assert [d.id for d in claim(archive, "host-b:2")] == [first[0].id]
    # a holder that is a dead process of this host loses its claim at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with archive.db.write() as session:
        session.execute(update(SubscriptionDelivery).values(claimed_by=f"{socket.gethostname()}:{dead.pid}"))
    assert len(claim(archive, "host-c:3")) == 1


def test_failures_back_off_then_put_the_subscription_in_error_and_an_update_resumes_it(archive: Archive) -> None:
    sub = made(archive)
    matched(archive, sub.id, "1.2.3")
    owner = "host-a:1"
    gave_up = []
    for attempt in range(1, 4):
        with archive.db.write() as session:  # due now
            session.execute(update(SubscriptionDelivery).values(due_at=NOW - timedelta(seconds=1)))
        (due,) = claim(archive, owner)
        assert due.attempts == attempt - 1
        with archive.db.write() as session:
            gave_up.append(subs.failed(session, due, owner, "the endpoint answered HTTP 500", RETRY))
        (row,) = rows(archive)
        wait = (_aware(row.due_at) - datetime.now(UTC)).total_seconds()
        assert RETRY.wait(attempt) - 1 < wait <= RETRY.wait(attempt)  # 1, 2, 4 s
    assert gave_up == [False, False, True]
    with archive.db.read() as session:
        erred = subs.get(session, ctx(INTEGRATOR_A), sub.id)
    assert erred.status == subs.ERROR and "3 notifications failed in a row" in erred.error
    with archive.db.write() as session:
        session.execute(update(SubscriptionDelivery).values(due_at=NOW - timedelta(seconds=1)))
    assert claim(archive, owner) == []  # in error: nothing is sent
    with archive.db.write() as session:
        resumed = subs.replace(session, ctx(INTEGRATOR_A), sub.id, SPEC)
    assert resumed.status == subs.ACTIVE and resumed.error == ""
    (due,) = claim(archive, owner)
    with archive.db.write() as session:
        subs.delivered(session, due, owner)
    (row,) = rows(archive)
    assert (row.state, row.attempts, row.claimed_by) == (subs.DELIVERED, 4, None)
    with archive.db.read() as session:
        assert session.scalar(select(Subscription.failures).where(Subscription.id == sub.id)) == 0


def test_retry_waits_double_up_to_the_longest() -> None:
    assert [RETRY.wait(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert subs.Retry(5.0, 600.0, 8).wait(10_000) == 600.0  # no overflow for a long outage


def test_a_subscription_is_its_organizations_and_a_deleted_one_is_gone(archive: Archive) -> None:
    sub = made(archive)
    matched(archive, sub.id, "1.2.3")
    with archive.db.read() as session:
        with pytest.raises(NotFound):
            subs.get(session, ctx(INTEGRATOR_B), sub.id)
        assert subs.get(session, ctx(ADMIN), sub.id).id == sub.id
        assert subs.get(session, ctx(CLINICIAN_A), sub.id).id == sub.id
    with archive.db.write() as session, pytest.raises(NotAuthorized):
        subs.create(session, ctx(CLINICIAN_A), SPEC)
    with archive.db.write() as session, pytest.raises(NotFound):
        subs.delete(session, ctx(INTEGRATOR_B), sub.id)
    with archive.db.write() as session:
        subs.delete(session, ctx(INTEGRATOR_A), sub.id)
    with archive.db.read() as session, pytest.raises(Gone):
        subs.get(session, ctx(INTEGRATOR_A), sub.id)
    assert [(d.state, d.last_error) for d in rows(archive)] == [(subs.DROPPED, "subscription deleted")]
    with archive.db.read() as session:
        assert subs.to_match(session, datetime.now(UTC)) == []
        assert subs.search(session, ctx(INTEGRATOR_A)) == []


def test_an_organization_holds_a_bounded_number(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subs, "MAX_PER_ORG", 2)
    made(archive), made(archive)
    with pytest.raises(Conflict):
        made(archive)
    with archive.db.write() as session:  # another organization counts its own
        subs.create(session, ctx(INTEGRATOR_B), SPEC)


def test_an_ended_subscription_is_off_and_neither_matched_nor_sent(archive: Archive) -> None:
    sub = made(archive, subs.Spec(criteria="ImagingStudy", endpoint="http://x/", end=NOW + timedelta(hours=1)))
    matched(archive, sub.id, "1.2.3")
    with archive.db.write() as session:
        session.execute(update(Subscription).values(end_at=NOW - timedelta(seconds=1)))
    with archive.db.read() as session:
        assert subs.get(session, ctx(INTEGRATOR_A), sub.id).status == subs.OFF
        assert subs.to_match(session, datetime.now(UTC)) == []
    assert claim(archive, "host-a:1") == []


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
