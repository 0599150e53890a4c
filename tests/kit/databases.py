"""Throwaway PostgreSQL databases in the session's cluster: created empty, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def new_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database in the cluster of `admin_url`: its URL, and how to drop it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop
