"""The Alembic migrations build the schema the models declare, on both databases.

A model changed without its migration (a new table, column or index) would work in tests
that create tables from the models and fail on a deployed database upgraded by `pacs db
upgrade`; `compare_metadata` (Alembic's autogenerate) lists any difference.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.archive import Archive
from storage.index.models import Base

#: PostgreSQL's text_pattern_ops indexes (migration 0002): declared with `ddl_if(dialect=...)`,
#: which autogenerate does not read, so on SQLite it reports them missing.
POSTGRESQL_ONLY = {"ix_studies_accession_pattern", "ix_studies_patient_id_pattern", "ix_studies_patient_name_pattern"}
#: and the other way round: SQLite's name index with the date (migration 0008)
SQLITE_ONLY = {"ix_studies_name_date"}


def test_the_migrated_schema_is_the_models_schema(archive: Archive) -> None:
    with archive.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        diff = [d for d in diff if not (d[0] == "add_index" and d[1].name in POSTGRESQL_ONLY)]
    else:
        diff = [d for d in diff if not (d[0] == "add_index" and d[1].name in SQLITE_ONLY)]
    assert diff == []
