"""Opening the store: an engine for any SQLAlchemy URL, SQLite in WAL mode by default, migrated to the latest schema.

The default database is ``WORKDIR/datablame.db``. SQLite connections run every transaction as ``BEGIN
IMMEDIATE`` (writers queue behind one another for up to :data:`BUSY_TIMEOUT_S` instead of failing or
interleaving), with foreign keys on. The schema is versioned by Alembic; the scripts live in
``store/migrations/versions`` and run programmatically when the store is opened.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from datablame.influence.errors import DatablameError

DB_NAME = "datablame.db"
BUSY_TIMEOUT_S = 60
MIGRATIONS = Path(__file__).parent / "migrations"


def default_url(workdir: str | os.PathLike) -> str:
    """``sqlite:///ABSOLUTE/WORKDIR/datablame.db``."""
    return f"sqlite:///{(Path(workdir) / DB_NAME).resolve()}"


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest schema revision shipped with this version of datablame."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` in one transaction (a no-op when it is there already)."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite: WAL journal, foreign keys, immediate transactions, a busy timeout."""
    try:
        engine = create_engine(url)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
        raise DatablameError(f"cannot use database URL {url!r} ({str(e).splitlines()[0]})",
                             "give an SQLAlchemy URL such as sqlite:///path/to/file.db or "
                             "postgresql+psycopg://user@host/db, with its driver installed") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


class Database:
    """An engine and its sessions. ``transaction()`` commits on success and rolls back on any exception."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def open_db(url: str, upgrade: bool = True) -> Database:
    """Open (and by default create or upgrade) the store at ``url``."""
    engine = make_engine(url)
    try:
        if upgrade and current_revision(engine) != head_revision():
            migrate(engine)
    except exc.OperationalError as e:
        engine.dispose()
        raise DatablameError(f"cannot open database {engine.url!r} ({str(e.orig).splitlines()[0]})",
                             "check the --db URL, the server and its permissions") from None
    return Database(engine)
