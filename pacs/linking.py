"""The patient index's linker as a process of its own, one per `pacs serve`.

Linking compares names with Jaro-Winkler and reads blocks of up to 200 identities: a few
milliseconds of Python per identity. In a thread of the serving process it took its turns at
the interpreter lock from the ingest threads (2,000 one-instance studies: 63.8 against 67.5
instances/s with the linker idle); in a process of its own, at a lower priority (`NICENESS`), it
runs on what ingest leaves of the cores, and its commits hold no lock while it scores
(`storage.patients.linker.link_next`). Linkers of several `pacs serve` on one database take turns
(`storage.patients.linker.link_next`). The process stops with its parent: when stopped, and on
its own when the parent is gone (killed without stopping it).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.synchronize import Event

from storage.index.db import Database
from storage.logs import event
from storage.patients.linker import link_until, log, model_of
from storage.settings import Settings

#: seconds `stop` waits for the process to finish its turn before it is terminated
STOP_SECONDS = 10.0
#: how much lower than the serving process the linker runs (nice(2) increment): ingest's
#: threads get a core first, the linker takes what they leave
NICENESS = 10


class LinkerProcess:
    """The linker process of this `pacs serve`."""

    def __init__(self, settings: Settings) -> None:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process holding threads and sockets
        self._stop = spawn.Event()
        self._process = spawn.Process(
            target=run, args=(settings, os.getpid(), self._stop), name="pacs-linker", daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        self._process.join(STOP_SECONDS)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_SECONDS)


def start(settings: Settings) -> LinkerProcess:
    """The linker process of this `pacs serve`, started."""
    process = LinkerProcess(settings)
    process.start()
    return process


def run(settings: Settings, parent_pid: int, stop: Event) -> None:
    """Entry point of the linker process."""
    from pacs.logconfig import configure_logging

    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    os.nice(NICENESS)
    db = Database.connect(settings.database_url, pool_size=2)
    event(log, "mpi.linker.started", pid=os.getpid())
    try:
        link_until(db, model_of(settings), settings.mpi_interval, lambda: stop.is_set() or os.getppid() != parent_pid)
    finally:
        db.dispose()
