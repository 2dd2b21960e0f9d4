"""``--storage`` and ``--study-name``: where ``regplug tune`` keeps its studies, checked
before any training, and what a study shared by several runs records and refuses.

A storage is an Optuna RDB URL (``sqlite:///study.db``, a database server) or
``journal:PATH``; a file's folder must exist and an existing file must be what the URL says
(:func:`check_storage_url`, without importing Optuna). A study in a storage records what its
trials were run with (:func:`study_settings`); a run whose settings differ is refused,
naming each difference (:func:`claim_or_check`).

Docs: docs/tune.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ranges import apply_value
from .errors import SearchError, import_optuna

if TYPE_CHECKING:
    from ..experiment.datasets import Splits
    from ..experiment.frameworks import FrameworkRunner, TrainSettings
    from ..experiment.models import ModelChoice
    from .search import Objective
    from .strategy_space import StrategySpace

__all__ = ["storage_file", "foreign_tables", "journal_backend", "set_aside_cut_record",
           "check_journal_records", "check_storage_url", "looks_like_journal", "check_study_name",
           "open_storage", "STUDY_SETTINGS_ATTR", "study_settings", "run_settings",
           "space_settings", "data_fingerprint", "settings_differences", "claim_or_check"]

log = logging.getLogger(__name__)

_JOURNAL = "journal:"
#: Opening a storage is tried this often when the error is one of ``_RACES`` (SQLAlchemy's
#: errors of two processes creating the same database's tables at once).
_OPEN_ATTEMPTS = 5
_RACES = ("IntegrityError", "OperationalError")
_RDB_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SQLITE_FILE = re.compile(r"^sqlite(\+\w+)?:///(?P<path>[^?]*)")
#: The first bytes of every SQLite 3 database file.
_SQLITE_HEADER = b"SQLite format 3\x00"
#: How Optuna's ``JournalFileBackend`` starts every line: one JSON record, ``op_code`` first
#: (``json.dumps({"op_code": ..., ...}, separators=(",", ":"))``, Optuna 3.1 to 5).
_JOURNAL_RECORD_START = b'{"op_code":'
#: How much of an existing journal is read to find its first record (a study's creation,
#: some hundred bytes).
_JOURNAL_PEEK = 1 << 16
#: Tables every Optuna RDB storage has (``alembic_version`` since Optuna 2, ``version_info``
#: since 1): a database with tables but none of these is another program's.
_OPTUNA_TABLES = {"alembic_version", "version_info", "studies"}
#: The study user attribute recording what its trials were run with (:func:`study_settings`).
STUDY_SETTINGS_ATTR = "regplug.settings"
#: How the refusal names each recorded setting (the command line's spelling where it has one).
_SETTING_LABELS = {"framework": "--framework", "data": "--data", "model": "--model",
                   "epochs": "--epochs", "batch_size": "--batch-size",
                   "learning_rate": "--lr", "momentum": "momentum", "seed": "--seed",
                   "train_rows": "--train-rows", "label_noise": "--label-noise",
                   "objective": "--objective", "space": "search space",
                   "strategy": "fixed strategy arguments"}


def storage_file(url: str) -> Path | None:
    """The file a ``--storage`` URL keeps the studies in: ``sqlite:///relative.db``,
    ``sqlite:////absolute.db`` or ``journal:PATH``; ``None`` for a database server.

    >>> [str(storage_file(url)) for url in ("sqlite:///runs/study.db",
    ...                                     "sqlite:////tmp/s.db?timeout=9", "journal:s.log")]
    ['runs/study.db', '/tmp/s.db', 's.log']
    >>> storage_file("postgresql://user@host/db") is None
    True
    """
    if url.startswith(_JOURNAL):
        return Path(url[len(_JOURNAL):])
    found = _SQLITE_FILE.match(url)
    return Path(found["path"]) if found and found["path"] else None


def check_storage_url(url: str) -> None:
    """Refuse a ``--storage`` that is neither an RDB URL (``sqlite:///study.db``) nor
    ``journal:PATH``, whose file's folder does not exist, or whose existing, non-empty file is
    not what it should be — an SQLite database, an Optuna journal — (without importing Optuna,
    and before anything is written to the file: Optuna would append a journal record to any
    file, and then fail to read it back).

    >>> check_storage_url("sqlite:///study.db"); check_storage_url("journal:study.log")
    >>> check_storage_url("study.db")
    Traceback (most recent call last):
    regplug.tune.errors.SearchError: --storage 'study.db': expected an Optuna RDB URL (sqlite:///study.db, postgresql://user@host/db) or journal:PATH (a journal file several processes can share)
    """  # noqa: E501
    if url.startswith(_JOURNAL):
        what = "journal file"
    elif _RDB_URL.match(url):
        if not url.startswith("sqlite:"):
            return
        rest = url.partition(":///")[2]
        if not rest or rest == ":memory:":
            raise SearchError(f"--storage {url!r}: an in-memory SQLite database is not shared "
                              "with other processes; give a file, sqlite:///study.db")
        what = "SQLite file"
    else:
        raise SearchError(f"--storage {url!r}: expected an Optuna RDB URL (sqlite:///study.db, "
                          "postgresql://user@host/db) or journal:PATH (a journal file several "
                          "processes can share)")
    path = storage_file(url)
    if path is None or not str(path) or path.is_dir():
        raise SearchError(f"--storage {url!r}: the {what} must be a file path")
    if not path.absolute().parent.is_dir():
        raise SearchError(f"--storage {url!r}: the folder of the {what} "
                          f"({str(path.absolute().parent)!r}) does not exist")
    kind = _not_regular(path)
    if kind is not None:  # reading a FIFO would wait for a writer; a device never ends
        raise SearchError(f"--storage {url!r}: {str(path)!r} is not a regular file ({kind}); "
                          "give a file path")
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new storage (an empty file is one another process has just created)
    if what == "SQLite file":
        with path.open("rb") as fh:
            if fh.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise SearchError(f"--storage {url!r}: {str(path)!r} is not an SQLite database "
                                  "(it does not start with SQLite's header); give a new file "
                                  "or an existing database")
        foreign = foreign_tables(path)
        if foreign:
            raise SearchError(f"--storage {url!r}: {str(path)!r} is another program's SQLite "
                              f"database (tables: {', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}; no Optuna tables); give "
                              "a new file or an Optuna study database")
    elif not looks_like_journal(path):
        raise SearchError(f"--storage {url!r}: {str(path)!r} is not an Optuna journal file "
                          "(its first line is not a journal record); give a new file or an "
                          "existing journal")


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file (``"a FIFO"``), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"  # pragma: no cover - no other kind on POSIX


def foreign_tables(path: Path) -> list[str]:
    """The tables of the SQLite database ``path`` when none of them is Optuna's (another
    program's database, which Optuna would silently add its tables to); ``[]`` for an
    Optuna database, an empty one, or one that cannot be read (Optuna then says why)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro",
                                                   uri=True)) as db:
            names = [row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    except sqlite3.Error:
        return []
    if not names or _OPTUNA_TABLES & set(names):
        return []
    return [n for n in names if not n.startswith("sqlite_")]


def looks_like_journal(path: Path) -> bool:
    """Whether the non-empty file ``path`` starts with an Optuna journal record: a JSON
    object with an ``op_code``, or the start of one that another process is still writing."""
    with path.open("rb") as fh:
        head = fh.read(_JOURNAL_PEEK)
    line, newline, _ = head.partition(b"\n")
    if not newline:
        return head.startswith(_JOURNAL_RECORD_START)
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and "op_code" in record


def check_study_name(name: str) -> None:
    """Refuse an empty or blank ``--study-name`` (it would name no study of its own)."""
    if not name.strip():
        raise SearchError(f"--study-name {name!r}: the studies' name must not be empty; give "
                          "one (run1), or leave --study-name out for 'regplug-tune'")


def open_storage(url: str | None, notes: list[str] | None = None) -> Any:
    """``None`` (each study in memory), or the storage ``url`` names, opened now so that a
    storage that cannot be used fails before any training. A journal is checked first
    (:func:`check_journal_records`, :func:`set_aside_cut_record`: what was done is appended
    to ``notes``) and appended to only after a line that is whole (:func:`journal_backend`)."""
    if url is None:
        return None
    check_storage_url(url)
    optuna = import_optuna()
    backend: Any = None
    if url.startswith(_JOURNAL):
        path = Path(url[len(_JOURNAL):])
        _check_writable(path, url)
        backend = journal_backend(path, url)
        with backend.locked():
            note = set_aside_cut_record(path, url)
        if note is not None and notes is not None:
            notes.append(note)
        check_journal_records(path, url)
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            if url.startswith(_JOURNAL):
                from optuna.storages.journal import JournalStorage

                return JournalStorage(backend)
            return optuna.storages.RDBStorage(_with_driver(url))
        except ImportError as err:
            raise ImportError(f"--storage {url!r}: its database driver is not installed "
                              f"({err.name or err}); pip install it") from None
        except Exception as err:  # SQLAlchemy's and the journal's errors have no common base
            # Processes started together race to create a new database's tables (one of
            # them meets the other's rows): a moment later the tables are there.
            if attempt + 1 < _OPEN_ATTEMPTS and _is_race(err):
                time.sleep(0.2 * (attempt + 1))
                continue
            first = (str(err).strip().splitlines() or [""])[0]
            raise SearchError(f"--storage {url!r} cannot be opened: {type(err).__name__}: "
                              f"{first}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _is_race(err: Exception) -> bool:
    """Whether opening failed because another process was creating the same tables: one of
    ``_RACES``, or PostgreSQL's "already exists" for a type or table the other process made
    between our check and our ``CREATE`` (SQLAlchemy's ``ProgrammingError``)."""
    name = type(err).__name__
    return name in _RACES or (name == "ProgrammingError" and "already exists" in str(err))


def _with_driver(url: str) -> str:
    """``postgresql://...`` with psycopg (3) where it is installed and psycopg2 (SQLAlchemy's
    default driver for that scheme) is not: ``pip install 'regplug[postgres]'`` is enough.

    >>> _with_driver("sqlite:///s.db")
    'sqlite:///s.db'
    """
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


# -- journals: never make a readable one unreadable ------------------------------------------

def _check_writable(path: Path, url: str) -> None:
    """Refuse a journal this process cannot append to (or create), naming ``--storage``."""
    try:
        with path.open("ab"):
            pass
    except OSError as err:
        raise SearchError(f"--storage {url!r}: the journal file cannot be written "
                          f"({err.strerror or err})") from None


def journal_backend(path: Path, url: str) -> Any:
    """Optuna's ``JournalFileBackend`` for ``path`` (its default lock), whose every append
    first sets aside a last record that another writer left cut off
    (:func:`set_aside_cut_record`), under the same lock: appending after a partial line
    would join both into a line no reader can parse, and every trial after it would be lost
    to Optuna."""
    import_optuna()
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class _WholeLinesJournal(JournalFileBackend):
        def __init__(self) -> None:
            self._regplug_lock = JournalFileSymlinkLock(str(path))
            super().__init__(str(path), lock_obj=self._regplug_lock)

        @contextlib.contextmanager
        def locked(self) -> Any:
            self._regplug_lock.acquire()
            try:
                yield
            finally:
                self._regplug_lock.release()

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            lines = b"".join(json.dumps(entry, separators=(",", ":")).encode() + b"\n"
                             for entry in logs)
            with self.locked():
                note = set_aside_cut_record(path, url)
                if note is not None:
                    log.warning("%s", note)
                with path.open("ab") as fh:
                    fh.write(lines)
                    fh.flush()
                    os.fsync(fh.fileno())

    return _WholeLinesJournal()


def set_aside_cut_record(path: Path, url: str) -> str | None:
    """Remove an incomplete last line (a record whose writer was killed mid-write) from the
    journal ``path``, after copying the whole file to ``PATH.cut-<time>``; what was done, as
    a note, or ``None`` where the journal ends with a whole line.

    Call it holding the journal's lock (Optuna's writers append whole lines under it): a
    partial line seen then is no write in progress. Only bytes after the last newline are
    removed, so the offsets other readers keep of whole lines stay valid."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with path.open("rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        keep, position = 0, size
        while position > 0:  # the last newline, read backwards a block at a time
            start = max(0, position - _JOURNAL_PEEK)
            fh.seek(start)
            block = fh.read(position - start)
            found = block.rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            position = start
    backup = path.with_name(f"{path.name}.cut-{time.strftime('%Y%m%d-%H%M%S')}")
    serial = 1
    while backup.exists():
        serial += 1
        backup = backup.with_name(f"{path.name}.cut-{time.strftime('%Y%m%d-%H%M%S')}-{serial}")
    shutil.copyfile(path, backup)
    os.truncate(path, keep)
    return (f"--storage {url!r}: its last record was cut off ({size - keep} bytes without a "
            f"line end: a writer killed mid-write); removed it, the whole file is kept as "
            f"{backup.name}")


def check_journal_records(path: Path, url: str) -> None:
    """Refuse a journal with a whole line that is not a journal record (Optuna stops reading
    there, and every trial after it is lost to it), naming the line; the file is untouched."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                return  # a record another process is writing now
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and "op_code" in record):
                shown = line[:40].decode("utf-8", "replace").rstrip()
                raise SearchError(
                    f"--storage {url!r}: line {number} is not an Optuna journal record "
                    f"({shown!r}); Optuna cannot read the trials after it: remove that line "
                    "(keep a copy of the file first) or give another journal")


# -- what makes one study's trials comparable --------------------------------------------

def study_settings(*, runner: FrameworkRunner, splits: Splits, model: ModelChoice,
                   settings: TrainSettings, objective: Objective,
                   space: StrategySpace) -> dict[str, Any]:
    """What a study's trials must share for their values to be ranked on one objective: the
    framework, the data (its description and a SHA-256 of its rows), the model, the training
    settings, the objective, the search space and the strategy's fixed arguments — as a
    storage gives them back (JSON)."""
    return space_settings(run_settings(runner=runner, splits=splits, model=model,
                                         settings=settings, objective=objective), space)


def run_settings(*, runner: FrameworkRunner, splits: Splits, model: ModelChoice,
                  settings: TrainSettings, objective: Objective) -> dict[str, Any]:
    """The part of :func:`study_settings` every strategy of a run shares (the data hashed
    once per run, not once per strategy)."""
    return {"framework": runner.name,
            "data": f"{splits.describe()}, rows sha256 {data_fingerprint(splits)}",
            **_training_rows(splits),
            "model": str(model), **dataclasses.asdict(settings),
            "objective": objective.metric}


#: What a study recorded before ``--train-rows`` and ``--label-noise`` existed meant these.
_UNRECORDED_DEFAULTS = {"train_rows": "all", "label_noise": 0.0}


def _training_rows(splits: Splits) -> dict[str, Any]:
    """``--train-rows`` and ``--label-noise``, recorded only where given (so a study made
    before they existed, without them, still matches a run that gives neither)."""
    found: dict[str, Any] = {}
    if splits.train_rows_of is not None:
        found["train_rows"] = len(splits.x_train)
    if splits.label_noise:
        found["label_noise"] = splits.label_noise
    return found


def space_settings(run: Mapping[str, Any], space: StrategySpace) -> dict[str, Any]:
    """:func:`study_settings` of ``space``, given the run's part."""
    recorded = {**run, "space": "; ".join(p.describe() for p in space.parameters),
                "strategy": _fixed_arguments(space)}
    return dict(json.loads(json.dumps(recorded)))


def data_fingerprint(splits: Splits) -> str:
    """The first 16 hex digits of a SHA-256 of every row, label, shape and dtype."""
    digest = hashlib.sha256()
    for array in (splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test,
                  splits.y_test):
        rows = np.asarray(array)
        digest.update(f"{rows.dtype.str}{rows.shape}".encode())
        digest.update(rows.tobytes())
    return digest.hexdigest()[:16]


def _fixed_arguments(space: StrategySpace) -> str:
    """The strategy's plugin configs and model options, each searched value masked."""
    plugins = [dict(p) for p in space.strategy.plugins]
    dropout: Any = space.strategy.dropout
    for parameter in space.parameters:
        if parameter.plugin is None:
            dropout = "searched"
        else:
            plugins[parameter.plugin] = apply_value(plugins[parameter.plugin], parameter.key,
                                                    "searched")
    # an object without a JSON form is named by its type (its repr may hold an address)
    return json.dumps({"plugins": plugins, "dropout": dropout,
                       "batch_norm": space.strategy.batch_norm}, sort_keys=True,
                      default=lambda o: f"<{type(o).__module__}.{type(o).__qualname__}>")


_NOT_RECORDED = object()


def settings_differences(recorded: Mapping[str, Any], ours: Mapping[str, Any]) -> str | None:
    """``None`` where ``recorded`` (a study's :func:`study_settings`) equals ``ours``, else
    both sides of each difference, as the refusal shows them.

    >>> settings_differences({"epochs": 2, "seed": 0}, {"epochs": 10, "seed": 0})
    'was run with --epochs 2, this run has --epochs 10'
    >>> settings_differences({"epochs": 2}, {"epochs": 2}) is None
    True
    """
    keys = [k for k in dict.fromkeys([*ours, *recorded])
            if recorded.get(k, _NOT_RECORDED) != ours.get(k, _NOT_RECORDED)]
    if not keys:
        return None

    def show(key: str, value: Any) -> str:
        label = _SETTING_LABELS.get(key, key)
        if value is _NOT_RECORDED and key in _UNRECORDED_DEFAULTS:
            value = _UNRECORDED_DEFAULTS[key]
        if value is _NOT_RECORDED:
            return f"no {label} recorded"
        text = str(value)
        return f"{label} {text!r}" if not text or any(c.isspace() for c in text) \
            else f"{label} {text}"

    there = " and ".join(show(k, recorded.get(k, _NOT_RECORDED)) for k in keys)
    here = " and ".join(show(k, ours.get(k, _NOT_RECORDED)) for k in keys)
    return f"was run with {there}, this run has {here}"


def claim_or_check(study: Any, study_id: str, ours: dict[str, Any]) -> None:
    """Record ``ours`` in a study that has no record and no trials, then refuse the run if
    the study's record is not ``ours`` (see :class:`~regplug.tune.search.Search`)."""
    recorded = study.user_attrs.get(STUDY_SETTINGS_ATTR)
    if recorded is None:
        trials = len(study.get_trials(deepcopy=False))
        if trials:
            raise SearchError(f"study {study_id!r} in the storage has {trials} trial(s) but no "
                              "record of the settings they were run with (made by Optuna "
                              "itself, another program or an earlier regplug): use another "
                              "--study-name")
        study.set_user_attr(STUDY_SETTINGS_ATTR, ours)
        # read back: another process creating the study at the same moment may have won
        recorded = study.user_attrs.get(STUDY_SETTINGS_ATTR, ours)
    differences = settings_differences(recorded if isinstance(recorded, Mapping) else {}, ours)
    if differences is not None:
        raise SearchError(f"study {study_id!r} in the storage {differences}: use another "
                          "--study-name or the same settings")
