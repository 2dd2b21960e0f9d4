"""Workers started together on a new database race to create its tables; opening the storage
retries such errors (a moment later the other worker's tables are there) and no other."""

from __future__ import annotations

import pytest

from regplug.tune import storage


def _error(name: str, message: str) -> Exception:
    return type(name, (Exception,), {})(message)


@pytest.mark.parametrize("err, race", [
    (_error("IntegrityError", "duplicate key value violates unique constraint"), True),
    (_error("OperationalError", "database is locked"), True),
    # PostgreSQL: CREATE TYPE for an enum another worker created between check and create
    (_error("ProgrammingError", '(psycopg.errors.DuplicateObject) type "studydirection" '
                                "already exists"), True),
    (_error("ProgrammingError", 'relation "studies" already exists'), True),
    (_error("ProgrammingError", "permission denied for schema public"), False),
    (_error("ValueError", "already exists"), False),
])
def test_only_table_creation_races_are_retried(err, race):
    assert storage._is_race(err) is race


def test_a_race_that_clears_opens_the_storage(monkeypatch, tmp_path):
    import optuna

    calls = []
    real = optuna.storages.RDBStorage

    def flaky(url, *args, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise _error("ProgrammingError", 'type "studydirection" already exists')
        return real(url, *args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    opened = storage.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert len(calls) == 2 and opened is not None
