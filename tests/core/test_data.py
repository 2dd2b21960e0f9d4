"""Data loading for the examples: embedded digits, MNIST-style .npz; nothing downloaded."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.data import load_digits, load_npz


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_digits_are_split_scaled_and_flat():
    pytest.importorskip("sklearn")
    data = load_digits(test_fraction=0.25, seed=1)
    assert data.x_train.shape[1] == 64 and data.n_classes == 10
    assert len(data.x_train) + len(data.x_test) == 1797
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64


def test_mnist_style_npz_is_flattened_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "mnist.npz",
                  x_train=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_train=np.arange(10),
                  x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), y_test=np.arange(4))
    data = load_npz(path)
    assert data.name == "mnist" and data.x_train.shape == (10, 784) and data.x_test.shape == (4, 784)
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
    with pytest.raises(ValueError, match="cannot be read as .npz"):
        load_npz(path)
