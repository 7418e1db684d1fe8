"""A throwaway PostgreSQL server, for the store's tests and benchmarks (and yours): Debian's ``postgresql``
package run from a temporary folder, reached through its Unix socket there (so it needs no free TCP port),
stopped and deleted afterwards.

    with temporary_postgres() as url:          # postgresql+psycopg://datablame@/postgres?host=FOLDER
        db = open_db(new_database(url))

:class:`PostgresUnavailable` says why none can be started (no psycopg, no initdb, or root without a
``postgres`` user and ``runuser`` to run it as: initdb refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why and what to install."""


def _initdb() -> str:
    if importlib.util.find_spec("psycopg") is None:
        raise PostgresUnavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian keeps them off the PATH
    initdb = shutil.which("initdb") or (found[-1] if found else None)
    if initdb is None:
        raise PostgresUnavailable("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    return initdb


def _run_as(folder: str) -> list[str]:
    """The command prefix that runs the server's programs: none, or ``runuser -u postgres --`` for root."""
    if os.geteuid() != 0:
        return []
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("initdb refuses root and there is no postgres user to run the server as") from None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("initdb refuses root and runuser (util-linux) is missing to run it as postgres")
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server (fsync off: for tests), yield the SQLAlchemy URL of its ``postgres`` database, then stop it
    and delete its folder."""
    initdb = _initdb()
    folder = tempfile.mkdtemp(prefix="datablame-pg-")
    try:
        as_user = _run_as(folder)
        data, pg_ctl = f"{folder}/data", str(Path(initdb).with_name("pg_ctl"))
        subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "datablame", "-N", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", data, "-l", f"{folder}/log", "-w", "-t", "60", "-o",
                        f"-k {folder} -c listen_addresses='' -c fsync=off", "start"], check=True, capture_output=True)
        try:
            yield f"postgresql+psycopg://datablame@/postgres?host={folder}"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_database(url: str) -> str:
    """The URL of a new, empty database on the server of ``url`` (a ``temporary_postgres`` URL)."""
    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.replace("/postgres?", f"/{name}?")
