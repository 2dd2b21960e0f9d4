"""Properties of setting aside a journal's cut-off last record (Hypothesis): wherever a
writer was killed inside a record, every whole record before it stays, Optuna reads them
and a record appended afterwards, and the copy holds the file as it was."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.experiment.arguments import MAX_BATCH_SIZE, batch_size
from regplug.tune.storage import journal_backend, set_aside_cut_record

optuna.logging.set_verbosity(optuna.logging.ERROR)


def journal_with_trials(folder: Path, trials: int) -> Path:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = folder / "study.log"
    study = optuna.create_study(study_name="s",
                                storage=JournalStorage(JournalFileBackend(str(path))))
    for value in range(trials):
        study.add_trial(optuna.trial.create_trial(value=float(value)))
    return path


@settings(max_examples=25, deadline=None)
@given(trials=st.integers(0, 4), cut=st.floats(0.0, 1.0, exclude_max=True),
       record=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_a_record_cut_anywhere_is_set_aside_and_every_whole_record_still_reads(
        trials, cut, record):
    with tempfile.TemporaryDirectory() as folder:
        path = journal_with_trials(Path(folder), trials)
        whole = path.read_bytes()
        line = json.dumps({"op_code": 4, **record}, separators=(",", ":")).encode()
        partial = line[:max(1, int(len(line) * cut))]
        path.write_bytes(whole + partial)
        url = f"journal:{path}"
        note = set_aside_cut_record(path, url)
        assert note is not None and f"{len(partial)} bytes without a line end" in note
        (backup,) = Path(folder).glob("study.log.cut-*")
        assert backup.read_bytes() == whole + partial
        assert path.read_bytes() == whole
        assert set_aside_cut_record(path, url) is None  # whole lines: nothing to do

        from optuna.storages.journal import JournalStorage

        path.write_bytes(whole + partial)  # cut again: the next append sets it aside itself
        storage = JournalStorage(journal_backend(path, url))
        study = optuna.load_study(study_name="s", storage=storage)
        study.add_trial(optuna.trial.create_trial(value=99.0))
        from optuna.storages.journal import JournalFileBackend

        fresh = JournalStorage(JournalFileBackend(str(path)))
        values = [t.value for t in optuna.load_study(study_name="s", storage=fresh).trials]
        assert values == [*map(float, range(trials)), 99.0]


@given(st.integers(-2**40, 2**40))
def test_batch_sizes_are_accepted_from_1_to_the_limit_and_refused_outside(value):
    if 1 <= value <= MAX_BATCH_SIZE:
        assert batch_size(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be from 1 to "
                                                             f"{MAX_BATCH_SIZE:,}, got"):
            batch_size(str(value))
