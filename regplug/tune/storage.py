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

import dataclasses
import hashlib
import json
import re
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

__all__ = ["storage_file", "check_storage_url", "looks_like_journal", "check_study_name",
           "open_storage", "STUDY_SETTINGS_ATTR", "study_settings", "run_settings",
           "space_settings", "data_fingerprint", "settings_differences", "claim_or_check"]

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
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new storage (an empty file is one another process has just created)
    if what == "SQLite file":
        with path.open("rb") as fh:
            if fh.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise SearchError(f"--storage {url!r}: {str(path)!r} is not an SQLite database "
                                  "(it does not start with SQLite's header); give a new file "
                                  "or an existing database")
    elif not looks_like_journal(path):
        raise SearchError(f"--storage {url!r}: {str(path)!r} is not an Optuna journal file "
                          "(its first line is not a journal record); give a new file or an "
                          "existing journal")


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


def open_storage(url: str | None) -> Any:
    """``None`` (each study in memory), or the storage ``url`` names, opened now so that a
    storage that cannot be used fails before any training."""
    if url is None:
        return None
    check_storage_url(url)
    optuna = import_optuna()
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            if url.startswith(_JOURNAL):
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend(url[len(_JOURNAL):]))
            return optuna.storages.RDBStorage(url)
        except ImportError as err:
            raise ImportError(f"--storage {url!r}: its database driver is not installed "
                              f"({err.name or err}); pip install it") from None
        except Exception as err:  # SQLAlchemy's and the journal's errors have no common base
            # Processes started together race to create a new database's tables (one of
            # them meets the other's rows): a moment later the tables are there.
            if attempt + 1 < _OPEN_ATTEMPTS and type(err).__name__ in _RACES:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = (str(err).strip().splitlines() or [""])[0]
            raise SearchError(f"--storage {url!r} cannot be opened: {type(err).__name__}: "
                              f"{first}") from None
    raise AssertionError("unreachable")  # pragma: no cover


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
