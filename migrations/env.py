"""Alembic environment: the engine comes from the app (app.migrate), the metadata from app.models."""

from __future__ import annotations

from alembic import context

import app.models  # noqa: F401  (registers the tables)
from app import migrate
from app.db import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by copy, drop and rename: with foreign keys on, dropping the old
        # table would cascade-delete its children. Off for the migration, checked before it commits. On the driver's
        # connection: through SQLAlchemy the app's "begin" event would open a transaction first, inside which SQLite
        # ignores the pragma (and every rebuild then emptied the tables referencing the rebuilt one).
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    # One transaction for the whole run, begun once no other `db upgrade` is migrating this database (an advisory lock
    # on PostgreSQL, SQLite's write lock): the revision read inside is the one the other left. Alembic runs inside it.
    with migrate.one_at_a_time(connection):
        config.attributes["revision_before"] = migrate.revision_of(connection)
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        context.run_migrations()
        if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
            raise RuntimeError("the migration left rows whose foreign keys point nowhere; rolled back")
    if sqlite:
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # outside a transaction, as above
