"""Schema and migrations: a new store is at the newest revision and matches the models; an old one upgrades."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from datablame.influence.errors import DatablameError
from datablame.store.db import current_revision, default_url, head_revision, make_engine, migrate, open_db
from datablame.store.schema import Base, Dataset, Example

from store_helpers import dataset, db, make_examples, store_url  # noqa: F401 (fixtures)


def test_new_store_is_at_head_in_wal_mode_and_matches_models(tmp_path):
    db = open_db(default_url(tmp_path))
    assert (tmp_path / "datablame.db").is_file()
    assert current_revision(db.engine) == head_revision() == "0004"
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.close()
    open_db(default_url(tmp_path)).close()  # reopening an up-to-date store is a no-op


def test_migrations_give_the_models_tables(store_url):
    db = open_db(store_url)
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.close()


def test_upgrade_keeps_data(store_url):
    from datablame.store.scans import ensure_dataset

    engine = make_engine(store_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001" and "flags" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        first = conn.execute(Dataset.__table__.insert().values(
            path="p", fingerprint="f", text_columns=["text"], label_column="label", label_names=["a"],
            created_at=func.current_timestamp())).inserted_primary_key[0]
        conn.execute(Example.__table__.insert().values(dataset_id=first, id=0, text="hello", label=0))
    engine.dispose()
    db = open_db(store_url)
    assert current_revision(db.engine) == "0004" and "flags" in inspect(db.engine).get_table_names()
    with db.transaction() as session:
        assert session.scalar(select(Example.text)) == "hello"
    assert ensure_dataset(db, make_examples()) == 2


def test_registering_twice_keeps_one_dataset(db):
    from datablame.store.scans import ensure_dataset

    first = ensure_dataset(db, make_examples())
    assert ensure_dataset(db, make_examples()) == first
    with db.engine.connect() as conn:
        assert conn.execute(text("select count(*) from examples")).scalar() == 20


@pytest.mark.parametrize("url", ["not a url", "nosuchdialect://x/y"])
def test_bad_url_is_a_user_error(url):
    with pytest.raises(DatablameError, match="database URL"):
        open_db(url)


def test_unreachable_database_is_a_user_error(tmp_path):
    with pytest.raises(DatablameError, match="cannot open database"):
        open_db(f"sqlite:///{tmp_path}/missing-folder/x.db")



def test_upgrading_a_reviewed_store_keeps_its_flags_and_review_log(store_url):
    from sqlalchemy import text

    from datablame.store.schema import Flag, ReviewEvent

    engine = make_engine(store_url)
    migrate(engine, "0003")
    with engine.begin() as conn:  # a reviewed flag and its log entry as revision 0003 stored them
        ds = conn.execute(Dataset.__table__.insert().values(
            path="p", fingerprint="f", text_columns=["text"], label_column="label", label_names=["a", "b"],
            created_at=func.current_timestamp())).inserted_primary_key[0]
        conn.execute(Example.__table__.insert().values(dataset_id=ds, id=0, text="hello", label=0))
        conn.execute(text("INSERT INTO flags (dataset_id, example_id, kind, source, status, note, who, created_at, "
                          "updated_at, version) VALUES (:d, 0, 'mislabeled', 'user', 'accepted', '', 'ann', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 2)"), {"d": ds})
        flag = conn.execute(text("SELECT id FROM flags")).scalar_one()
        conn.execute(text("INSERT INTO review_events (dataset_id, flag_id, batch, action, who, at, after) "
                          "VALUES (:d, :f, 'b1', 'accept', 'ann', CURRENT_TIMESTAMP, '{}')"), {"d": ds, "f": flag})
    engine.dispose()
    db = open_db(store_url)
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ReviewEvent)) == 1
        assert session.execute(select(Flag.status, Flag.rank)).one() == ("accepted", None)
    db.close()
