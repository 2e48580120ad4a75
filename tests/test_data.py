import pickle

import numpy as np
import pytest
import torch

from pipeline.sources.data import DataSourceError, load_splits


def _indices_disjoint(*sets):
    seen = set()
    for s in sets:
        rows = {tuple(x.flatten().tolist()) for x, _ in s}
        assert not rows & seen
        seen |= rows


def test_digits_splits_are_stratified_disjoint_and_upsampled():
    s = load_splits("digits", val_fraction=0.2, test_fraction=0.2, seed=3)
    assert s.num_classes == 10 and s.input_shape == (1, 32, 32)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert abs(len(s.test) - 0.2 * 1797) < 15
    for split in (s.train, s.val, s.test):  # every class in every split
        assert set(int(y) for _, y in split) == set(range(10))
    _indices_disjoint(s.train, s.val, s.test)


def test_digits_limit_and_image_size():
    s = load_splits("digits", image_size=16, limit=200)
    assert s.input_shape == (1, 16, 16)
    assert 190 <= len(s.train) + len(s.val) + len(s.test) <= 200  # per-class rounding


def _write_cifar_batches(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    root.mkdir()
    for name, n in (
        ("data_batch_1", n_train // 2),
        ("data_batch_2", n_train // 2),
        ("test_batch", n_test),
    ):
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(i % 10) for i in range(n)],
        }
        with (root / name).open("wb") as f:
            pickle.dump(batch, f)


def test_cifar10_python_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(root)
    s = load_splits(f"cifar10:{root}", val_fraction=0.25)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert len(s.test) == 20  # the official test batch is the test split
    assert len(s.train) + len(s.val) == 40
    x, _ = s.test[0]
    assert x.dtype == torch.float32 and float(x.min()) > -3 and float(x.max()) < 3


def test_cifar10_errors_name_the_problem(tmp_path):
    with pytest.raises(DataSourceError, match="not a directory"):
        load_splits(f"cifar10:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no data_batch_"):
        load_splits(f"cifar10:{tmp_path / 'empty'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataSourceError, match="unreadable"):
        load_splits(f"cifar10:{tmp_path / 'broken'}")


def _write_images(root, classes=("cat", "dog"), per_class=6):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder_flat_and_with_train_test(tmp_path):
    flat = tmp_path / "flat"
    _write_images(flat)
    s = load_splits(f"imagefolder:{flat}", image_size=16, val_fraction=0.25, test_fraction=0.25)
    assert s.input_shape == (3, 16, 16) and s.num_classes == 2
    assert len(s.train) + len(s.val) + len(s.test) == 12

    split = tmp_path / "split"
    _write_images(split / "train")
    _write_images(split / "test", per_class=2)
    s = load_splits(f"imagefolder:{split}", image_size=8)
    assert len(s.test) == 4 and len(s.train) + len(s.val) == 12


def test_imagefolder_needs_two_classes(tmp_path):
    _write_images(tmp_path / "one", classes=("only",))
    with pytest.raises(DataSourceError, match="at least 2 class folders"):
        load_splits(f"imagefolder:{tmp_path / 'one'}")


def test_callable_source_returns_loaders():
    s = load_splits("tests.helpers:tiny_loaders")
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
    assert s.num_classes == 2 and s.input_shape == (1, 8, 8)


def test_callable_source_errors():
    with pytest.raises(DataSourceError, match="cannot be imported"):
        load_splits("tests.helpers:missing_function")
    with pytest.raises(DataSourceError, match=r"\(train, val, test\)"):
        load_splits("tests.helpers:tiny_cnn")


class Stream(torch.utils.data.IterableDataset):
    """No len() and no indexing: a stream cannot be split or counted up front."""

    def __iter__(self):
        yield torch.zeros(1, 8, 8), 0


def streams():
    return Stream(), Stream(), Stream()


def test_callable_source_must_give_map_style_datasets():
    with pytest.raises(DataSourceError, match="map-style datasets.*got Stream"):
        load_splits("tests.test_data:streams")
