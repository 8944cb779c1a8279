"""Alembic environment of hpo-infer's own tables.

Optuna keeps its revision in the table ``alembic_version`` of the same database; ours lives in
``hpo_infer_alembic_version``, and autogenerate only ever sees our tables (``include_object``),
so neither history touches the other's tables.

The database comes from the connection ``hpo_infer.db.schema`` hands over, or, when run as
``alembic -x url=postgresql://... upgrade head`` from the repo top, from ``-x url``,
``sqlalchemy.url`` in alembic.ini, or ``HPO_INFER_STORAGE``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from hpo_infer.db.tables import VERSION_TABLE, Base, include_object
from hpo_infer.storage_url import normalise

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("HPO_INFER_STORAGE")
    if not url:
        raise SystemExit("no database: pass -x url=postgresql://... or set HPO_INFER_STORAGE")
    return normalise(url)


def run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
