"""The migration on the real PostgreSQL server matches the models, and unique keys hold."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError

from labelloop.db.models import Base, Image
from labelloop.db.session import Database

pytestmark = pytest.mark.integration


def test_postgres_schema_matches_models(service_env, pg_url):
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_content_hash_is_unique_on_postgres(service_env, pg_url):
    db = Database(pg_url)
    with db.session() as s:
        s.add(Image(sha256="f" * 64, blob_key="k", width=1, height=1, format="png"))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Image(sha256="f" * 64, blob_key="k2", width=1, height=1, format="png"))
    with db.session() as s:
        assert s.query(Image).filter_by(sha256="f" * 64).one().blob_key == "k"
        s.query(Image).filter_by(sha256="f" * 64).delete()
    db.dispose()
