"""pydicom's value-validation modes, kept per thread.

pydicom holds `reading_validation_mode` and `writing_validation_mode` in one process-wide
`config.settings`, and `Dataset.to_json_dict(suppress_invalid_tags=True)` (like our
`fastjson`) switches reading to RAISE for its duration with `config.strict_reading()`. In a
server where many threads read DICOM at once that switch leaks: while it lasts, other
threads' reads raise where they should warn, and two overlapping switches restore each
other's RAISE and leave the whole process strict for good (pydicom issue #2220). CI saw
exactly that: a worklist query built after a burst of concurrent ingests failed to parse.

Keeping the two modes in thread-local storage gives every `strict_reading()` and
`disable_value_validation()` the scope its caller meant: its own thread. A thread starts
with the process-wide value pydicom had when `install` ran.
"""

from __future__ import annotations

import threading

from pydicom import config

_local = threading.local()
_UNSET = object()


def _per_thread(name: str) -> property:
    """A data descriptor for `Settings.<name>`: it wins over the instance attribute, whose
    value stays as every thread's default."""

    def get(settings: config.Settings) -> int | None:
        # read on every DataElement pydicom creates: a dict lookup, not a failing getattr
        value = _local.__dict__.get(name, _UNSET)
        return settings.__dict__.get(name) if value is _UNSET else value

    def set_(_settings: config.Settings, value: int | None) -> None:
        setattr(_local, name, value)

    return property(get, set_)


class PerThreadSettings(config.Settings):
    """pydicom's Settings with the validation modes read and written per thread."""

    _reading_validation_mode = _per_thread("_reading_validation_mode")
    _writing_validation_mode = _per_thread("_writing_validation_mode")


def install() -> None:
    """Make pydicom's singleton settings per thread; idempotent.

    The class of the existing object is swapped rather than the object replaced, so modules
    that imported `pydicom.config.settings` by name see the change too.
    """
    if not isinstance(config.settings, PerThreadSettings):
        config.settings.__class__ = PerThreadSettings
