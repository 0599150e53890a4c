"""pydicom's validation modes are per thread once `storage` is imported (pydicom #2220)."""

from __future__ import annotations

import threading

import pytest
from pydicom import config
from pydicom.dataelem import DataElement

import storage  # noqa: F401  (installs the per-thread settings)
from storage.dicom import threads as pydicom_threads


def _in_strict_thread(inside: threading.Event, leave: threading.Event) -> threading.Thread:
    def hold() -> None:
        with config.strict_reading():
            assert config.settings.reading_validation_mode == config.RAISE
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(10)
    return thread


def test_strict_reading_in_one_thread_does_not_make_another_strict() -> None:
    inside, leave = threading.Event(), threading.Event()
    thread = _in_strict_thread(inside, leave)
    try:
        assert config.settings.reading_validation_mode == config.WARN
        with pytest.warns(UserWarning, match="Invalid value for VR DA"):
            element = DataElement(0x00400002, "DA", "2026-11-23")  # read-mode validation
        assert element.value == "2026-11-23"
    finally:
        leave.set()
        thread.join()


def test_overlapping_strict_scopes_leave_the_default_behind() -> None:
    """The interleaving that left the whole process strict: A enters, B enters, A leaves, B leaves."""
    first_in, first_out = threading.Event(), threading.Event()
    first = _in_strict_thread(first_in, first_out)
    second_in, second_out = threading.Event(), threading.Event()
    second = _in_strict_thread(second_in, second_out)
    first_out.set()
    first.join()
    second_out.set()
    second.join()
    assert config.settings.reading_validation_mode == config.WARN
    assert config.settings.writing_validation_mode == config.WARN


def test_install_is_idempotent_and_keeps_other_settings() -> None:
    size = config.settings.buffered_read_size
    pydicom_threads.install()
    assert isinstance(config.settings, pydicom_threads.PerThreadSettings)
    assert config.settings.buffered_read_size == size
