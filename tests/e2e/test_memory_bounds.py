"""The server's memory stays bounded under the probes of issue [5/10], measured from /proc.

A `pacs serve` process per backend pair; before each probe its peak resident set (VmHWM) is
reset (`/proc/<pid>/clear_refs`, 5) and its resident set (VmRSS) read; after, the peak may
exceed that baseline by at most `BOUND`, and the resident set must come back within it.

What the probes cost before the fixes: a PDU announcing 0xFFFFFFF0 bytes was buffered as it
arrived (+1,035 MB after 1 GiB); four frame requests of 20,000 entries peaked at 5.69 GB with
2.8 GB held afterwards. Here the hostile PDUs carry 4 x 256 MiB, the large answers are four
parallel reads of a 100 MiB multi-frame instance (its frames, its study), and the metadata of
a 300-instance study.
"""

from __future__ import annotations

import signal
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, serve_env
from tests.kit.servers import ServerProcess, start_server

MiB = 1024 * 1024
BOUND = 100 * MiB
FRAMES, SIDE = 200, 512  # 200 frames of 512 x 512 x 16 bits: 100 MiB of pixel data
SMALL_STUDY = 300


@dataclass
class Served:
    server: ServerProcess
    big: Dataset  # the 100 MiB instance, without its pixel data
    small_study: str

    def url(self, path: str) -> str:
        return f"{self.server.url}/dicomweb{path}"

    def headers(self) -> dict[str, str]:
        return self.server.admin()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def within_bound(pid: int, probe: Callable[[], None]) -> dict[str, int]:
    """Run `probe`; the growth of `pid`'s peak and of its resident set over the baseline."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak resident set := current
    baseline = memory(pid)["VmRSS"]
    probe()
    after = memory(pid)
    return {"peak": after["VmHWM"] - baseline, "held": after["VmRSS"] - baseline}


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`pacs serve` over a backend pair, holding the 100 MiB instance and the 300-instance study."""
    tmp = tmp_path_factory.mktemp(f"memory-{request.param}")
    env, drop = serve_env(request, request.param)
    server = start_server(tmp / "var", env=env)
    try:
        big = f.ct_dataset(rows=SIDE, columns=SIDE, frames=FRAMES)
        study, series = f.uid(), f.uid()
        _store(server, [big, *(f.ct_dataset(study_uid=study, series_uid=series) for _ in range(SMALL_STUDY))])
        del big.PixelData
        yield Served(server, big, study)
    finally:
        server.kill(signal.SIGTERM)
        drop()


def _store(server: ServerProcess, datasets: list[Dataset]) -> None:
    assoc = AE(ae_title="CT1").associate(
        "127.0.0.1", server.dicom_port, [build_context(CTImageStorage)], ae_title="MUNIPACS"
    )
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def _flood(port: int, amount: int) -> None:
    """An A-ASSOCIATE-RQ announcing 0xFFFFFFF0 bytes, then `amount` bytes until the SCP hangs up."""
    chunk = b"\x00" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0))
            for _ in range(amount // MiB):
                sock.sendall(chunk)
        except OSError:
            return  # aborted and closed by the SCP: what should happen


def _drain(url: str, headers: dict[str, str]) -> int:
    """GET `url` and read its body as a client streaming it to disk would; its size."""
    size = 0
    with httpx.stream("GET", url, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()[:300]
        for chunk in r.iter_bytes():
            size += len(chunk)
    return size


def _parallel(n: int, job: Callable[[], object]) -> list[object]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: job(), range(n)))


def _still_answers(served: Served) -> None:
    assert httpx.get(f"{served.server.url}/healthz", timeout=10).status_code == 200
    assoc = AE(ae_title="CT1").associate(
        "127.0.0.1", served.server.dicom_port, [build_context(Verification)], ae_title="MUNIPACS"
    )
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_hostile_pdus_do_not_grow_the_server(served: Served) -> None:
    growth = within_bound(
        served.server.proc.pid, lambda: _parallel(4, lambda: _flood(served.server.dicom_port, 256 * MiB))
    )
    print(growth)
    assert growth["peak"] < BOUND, growth
    _still_answers(served)


def test_four_parallel_full_frame_lists_are_streamed(served: Served) -> None:
    big = served.big
    frames = ",".join(str(n) for n in range(1, FRAMES + 1))
    url = served.url(f"/studies/{big.StudyInstanceUID}/series/{big.SeriesInstanceUID}/instances/{big.SOPInstanceUID}")
    sizes: list[object] = []
    growth = within_bound(
        served.server.proc.pid,
        lambda: sizes.extend(_parallel(4, lambda: _drain(f"{url}/frames/{frames}", served.headers()))),
    )
    assert all(size > FRAMES * SIDE * SIDE * 2 for size in sizes)  # each answer carried every frame
    print(growth)
    assert growth["peak"] < BOUND and growth["held"] < BOUND, growth
    _still_answers(served)


def test_four_parallel_study_retrievals_are_streamed(served: Served) -> None:
    url = served.url(f"/studies/{served.big.StudyInstanceUID}")
    growth = within_bound(served.server.proc.pid, lambda: _parallel(4, lambda: _drain(url, served.headers())))
    print(growth)
    assert growth["peak"] < BOUND and growth["held"] < BOUND, growth


def test_metadata_of_a_large_study_returns_its_memory(served: Served) -> None:
    url = served.url(f"/studies/{served.small_study}/metadata")
    growth = within_bound(served.server.proc.pid, lambda: _parallel(4, lambda: _drain(url, served.headers())))
    print(growth)
    assert growth["peak"] < BOUND and growth["held"] < BOUND, growth
