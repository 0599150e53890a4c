"""Kept storage commitment requests: claimed by one process at a time, over both databases.

`pacs.commitment` keeps each acknowledged request until its report is out; every SCP process
sweeps for the due ones. These tests play several processes against one real database: a
live holder keeps its claim, a dead one (a pid that has exited, on this host) or one whose
lease ran out loses it, and two sweeps at once never take the same request.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from datetime import timedelta

from storage.archive import Archive
from storage.workflow.commitment import Pending, Reference, Request, any_due, claim_due, keep, postpone, settle
from tests.kit import dicom_factory as f
from tests.kit.principals import CT_A, ctx

LEASE = timedelta(minutes=2)
MODALITY = ctx(CT_A)


def dead_owner() -> str:
    """The owner name of a process of this host that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def kept(archive: Archive, owner: str, lease: timedelta = LEASE) -> int:
    req = Request(f.uid(), (Reference("1.2.840.10008.5.1.4.1.1.2", f.uid()),))
    with archive.db.write() as s:
        return keep(s, MODALITY, req, owner, lease)


def claim(archive: Archive, owner: str) -> list[Pending]:
    with archive.db.write() as s:
        return claim_due(s, owner, LEASE)


def test_a_live_claim_is_kept_and_a_dead_one_taken_over(archive: Archive) -> None:
    live = kept(archive, archive.owner)  # this process: alive
    gone_owner = dead_owner()
    gone = kept(archive, gone_owner)
    taken = claim(archive, "elsewhere:1")
    assert [(p.id, p.previous_owner) for p in taken] == [(gone, gone_owner)]
    assert taken[0].principal == CT_A and taken[0].attempts == 0
    assert claim(archive, "elsewhere:2") == []  # now held by a live claim, as `live` is
    assert live not in [p.id for p in claim(archive, "elsewhere:3")]


def test_an_expired_claim_is_taken_over(archive: Archive) -> None:
    job = kept(archive, "otherhost:42", lease=timedelta(seconds=-1))  # another host: only its lease counts
    assert [p.id for p in claim(archive, "elsewhere:1")] == [job]


def test_postpone_releases_until_due_and_settle_forgets(archive: Archive) -> None:
    me = archive.owner
    job = kept(archive, me)
    with archive.db.write() as s:
        postpone(s, job, me, attempts=1, delay=3600)
    assert claim(archive, me) == []  # not due for an hour
    with archive.db.read() as s:
        assert not any_due(s)  # an idle sweep stops at this read
    with archive.db.write() as s:
        settle(s, job, me)  # not ours any more: nothing happens
    job2 = kept(archive, me)
    with archive.db.write() as s:
        postpone(s, job2, me, attempts=2, delay=0)
    with archive.db.read() as s:
        assert any_due(s)
    [again] = claim(archive, me)
    assert (again.id, again.attempts, again.previous_owner) == (job2, 2, None)
    with archive.db.write() as s:
        settle(s, job2, me)
    with archive.db.write() as s:
        postpone(s, job, "nobody:1", attempts=5, delay=0)  # not the holder: unchanged
    assert claim(archive, me) == []  # `job` is still an hour away


def test_two_sweeps_at_once_never_share_a_request(archive: Archive) -> None:
    jobs = {kept(archive, dead_owner()) for _ in range(12)}
    got: dict[str, list[int]] = {}
    start = threading.Barrier(2)

    def sweep(owner: str) -> None:
        start.wait()
        got[owner] = [p.id for p in claim(archive, owner)]

    threads = [threading.Thread(target=sweep, args=(f"sweeper:{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    first, second = got["sweeper:1"], got["sweeper:2"]
    assert not set(first) & set(second)
    assert set(first) | set(second) == jobs
