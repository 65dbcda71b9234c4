"""Alembic environment: runs corral's migrations on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from corral.store.models import ALEMBIC_VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:  # invoked by the alembic CLI: build an engine from the ini URL
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, version_table=ALEMBIC_VERSION_TABLE)
        context.run_migrations()
else:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=ALEMBIC_VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
