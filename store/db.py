"""Opening the store: an engine for any SQLAlchemy URL, SQLite in WAL mode by default, migrated to the latest schema.

The default database is ``WORKDIR/datablame.db``. SQLite connections run every transaction as ``BEGIN
IMMEDIATE`` (writers queue behind one another for up to :data:`BUSY_TIMEOUT_S` instead of failing or
interleaving), with foreign keys on. The schema is versioned by Alembic; the scripts live in
``store/migrations/versions`` and run programmatically when the store is opened.

Opening checks the store first, so that hostile or foreign files give one-line :class:`DatablameError`\\ s
instead of tracebacks: a file that is not SQLite, an SQLite database of another program, a schema revision newer
than this datablame knows, and a read-only SQLite store (``mode=ro`` in the URL, or a file or folder this user
cannot write). A read-only store serves readers (``open_db(..., write=False)``) through a read-only connection
that neither migrates nor writes journal settings; writers are refused before they start.
"""

from __future__ import annotations

import contextlib
import functools
import os
import urllib.parse
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, exc, inspect, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import asbool

from datablame.influence.errors import DatablameError
from datablame.influence.workdir import Workdir

BUSY_TIMEOUT_S = 60
MIGRATIONS = Path(__file__).parent / "migrations"
# SQLite's primary result codes (extended codes carry them in their low byte) and PostgreSQL's SQLSTATE for a
# write in a read-only transaction
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_NOTADB = 8, 11, 26
PG_READ_ONLY_SQL_TRANSACTION = "25006"
COPY_HINT = "or review a copy: copy the file and pass --db sqlite:///PATH/TO/COPY"


def default_url(workdir: str | os.PathLike) -> str:
    """``sqlite:///ABSOLUTE/WORKDIR/datablame.db``."""
    return f"sqlite:///{Workdir(workdir).store_path.resolve()}"


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def _scripts() -> ScriptDirectory:
    """The migration scripts, read once per process."""
    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    """The newest schema revision shipped with this version of datablame."""
    return _scripts().get_current_head()


def known_revisions() -> set[str]:
    """Every schema revision this version of datablame can read or upgrade from."""
    return {script.revision for script in _scripts().walk_revisions()}


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


def _bad_url(url: str | URL, error: Exception) -> DatablameError:
    return DatablameError(f"cannot use database URL {str(url)!r} ({str(error).splitlines()[0]})",
                          "give an SQLAlchemy URL such as sqlite:///path/to/file.db or "
                          "postgresql+psycopg://user@host/db, with its driver installed")


def sqlite_file(url: str | URL) -> Path | None:
    """The file of an SQLite URL, a plain path or a ``file:`` URI (``?uri=true``); None for an in-memory SQLite
    database and for other databases."""
    url = make_url(url)
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    if asbool(url.query.get("uri", False)) and name.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        name = name[len("file:"):]
        if name.startswith("//"):  # file://[localhost]/path
            name = name[name.find("/", 2):]
        name = urllib.parse.unquote(name)
    return Path(name)


def _read_only_reason(url: URL, path: Path) -> str | None:
    """Why the SQLite store ``path`` of ``url`` cannot be written, and the fix; None when it can (or does not exist
    yet). Decided from the URL and from :func:`os.access`, before SQLite gets to fail halfway through a write."""
    if asbool(url.query.get("uri", False)) and (url.query.get("mode") == "ro"
                                                or asbool(url.query.get("immutable", False))):
        return "the --db URL opens it read-only (mode=ro); drop mode=ro from the URL to change the store"
    if not path.exists():
        return None
    if not os.access(path, os.W_OK):
        return f"the file is not writable; make it writable (chmod u+w {path}) {COPY_HINT}"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return ("its folder is not writable, and SQLite keeps its -wal and -shm files beside the store; make the "
                f"folder writable {COPY_HINT}")
    return None


def _read_only_url(url: URL, path: Path) -> URL:
    """A ``file:`` URI that opens ``path`` read-only. Immutable (no locks, no -shm file) when its folder is not
    writable and it has no -wal file: SQLite cannot read a WAL-mode store there otherwise, and without a -wal file
    no writer is at work on it."""
    query = {**url.query, "uri": "true", "mode": "ro"}
    if not os.access(path.parent, os.W_OK | os.X_OK) and not Path(f"{path}-wal").exists():
        query["immutable"] = "1"
    return URL.create(url.drivername, database="file:" + urllib.parse.quote(str(path.resolve())), query=query)


def _read_only_error(name: str, reason: str) -> DatablameError:
    return DatablameError(f"the store {name} is read-only", reason)


def _refused_as_read_only(error: exc.DBAPIError) -> bool:
    """Whether the database refused a write because it is read-only (SQLite's file or connection, or a read-only
    PostgreSQL transaction)."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == SQLITE_READONLY
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state == PG_READ_ONLY_SQL_TRANSACTION


def make_engine(url: str | URL, read_only: bool = False) -> Engine:
    """An engine for ``url``; for SQLite: WAL journal, foreign keys, immediate transactions, a busy timeout.

    read_only: for a connection SQLite opens read-only (:func:`open_db` decides): plain ``BEGIN`` (a reader takes
    no write lock) and no journal mode change (SQLite refuses to switch a read-only rollback-journal file to WAL)."""
    try:
        engine = create_engine(url)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
        raise _bad_url(url, e) from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            if not read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
    return engine


class Database:
    """An engine and its sessions. ``transaction()`` commits on success and rolls back on any exception.

    name: the store as messages show it (its file for SQLite, else its URL without password); path: its SQLite
    file (None for other databases); read_only: None when it can be written, else why not and the fix. A write
    the database refuses as read-only raises a one-line DatablameError.
    """

    def __init__(self, engine: Engine, name: str | None = None, read_only: str | None = None):
        self.engine = engine
        self.path = sqlite_file(engine.url)
        self.name = name or (str(self.path) if self.path else engine.url.render_as_string(hide_password=True))
        self.read_only = read_only
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        try:
            with self.sessions.begin() as session:
                yield session
        except exc.DBAPIError as e:
            if not _refused_as_read_only(e):
                raise
            raise _read_only_error(self.name, self.read_only or "the database refused to write; check its "
                                   "permissions, or pass --db to use another store") from None

    def close(self) -> None:
        self.engine.dispose()


def _check_schema(engine: Engine, name: str, read_only: str | None, upgrade: bool) -> None:
    """Refuse a database that is not a store or is from a newer datablame; upgrade an older one (when ``upgrade``
    and writable)."""
    head = head_revision()
    with engine.connect() as conn:
        found = MigrationContext.configure(conn).get_current_revision()
        tables = inspect(conn).get_table_names() if found is None else []
    if found == head:
        return
    if found is not None and found not in known_revisions():
        raise DatablameError(f"the store {name} is at schema revision {found!r}, from a newer datablame (the "
                             f"newest this one knows is {head!r})",
                             "upgrade datablame (pip install -U datablame), or pass --db to use another store")
    if found is None and tables:
        raise DatablameError(f"{name} is a database but not a datablame store (it has tables "
                             f"{', '.join(tables[:5])}{', …' if len(tables) > 5 else ''} and no schema revision)",
                             "move it aside, or pass --db to use another store")
    if read_only:
        raise DatablameError(f"the store {name} is read-only and at schema revision {found or 'none'}, older than "
                             f"this datablame's {head}",
                             "open it once with write access (e.g. 'datablame flags WORKDIR list') to upgrade it")
    if upgrade:
        migrate(engine)


def _unreadable(name: str, path: Path | None, error: exc.DBAPIError) -> DatablameError:
    detail = str(error.orig if error.orig is not None else error).splitlines()[0]
    code = getattr(error.orig, "sqlite_errorcode", None)
    if path is not None and code is not None and code & 0xFF in (SQLITE_NOTADB, SQLITE_CORRUPT):
        return DatablameError(f"{path} is not a datablame store ({detail})",
                              "move it aside to start a new store there, or pass --db to use another one")
    return DatablameError(f"cannot open database {name} ({detail})",
                          "check the --db URL, the server and its permissions")


def open_db(url: str | URL, upgrade: bool = True, write: bool = True) -> Database:
    """Open the store at ``url``, creating it or (``upgrade``) upgrading its schema.

    write: whether the caller will write. A read-only SQLite store is refused with a one-line DatablameError when
    it will; else it is opened read-only, as it is (a store that would need a schema upgrade is refused).
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise _bad_url(url, e) from None
    path = sqlite_file(parsed)
    name = str(path) if path is not None else parsed.render_as_string(hide_password=True)
    read_only = _read_only_reason(parsed, path) if path is not None else None
    if read_only and write:
        raise _read_only_error(name, read_only)
    engine = make_engine(_read_only_url(parsed, path) if read_only else parsed, read_only=read_only is not None)
    try:
        _check_schema(engine, name, read_only, upgrade)
    except exc.DBAPIError as e:
        engine.dispose()
        raise _unreadable(name, path, e) from None
    except DatablameError:
        engine.dispose()
        raise
    return Database(engine, name, read_only)
