"""Data sources -> train / validation / test splits.

The search reward uses the validation split, carved (stratified, seeded) from the
training data; the test split is touched once, for the final report.

Sources: ``digits`` (scikit-learn's bundled 8x8 digits, upsampled), ``cifar10:<dir>``
(the standard python-batch format), ``imagefolder:<dir>`` (one folder per class,
optionally under train/ and test/), ``package.module:callable`` returning loaders.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pickle
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pipeline.sources.guard import UserCodeExit, guarded

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".webp"}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class DataSourceError(ValueError):
    """A data source that cannot be read; the message names the source and the problem."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) of one example

    def loaders(
        self, batch_size: int, seed: int = 0, pin_memory: bool = False, workers: int | None = None
    ) -> tuple[DataLoader, DataLoader, DataLoader]:
        """Train (shuffled, seeded), validation and test loaders.

        ``pin_memory`` (for training on CUDA) puts each batch in page-locked memory, so
        ``.to(device, non_blocking=True)`` copies it while the GPU still computes.
        ``workers`` (default: automatic) are loader processes: none for datasets of
        in-memory tensors (every built-in source), where a batch is one indexing operation
        and worker processes would only add pickling between them; with ``pin_memory``, up
        to 4 for datasets that do work per item (a callable source's transforms, decoding).
        """
        g = torch.Generator().manual_seed(seed)
        n = self.workers_for(pin_memory) if workers is None else workers
        extra: dict[str, Any] = {
            "pin_memory": pin_memory,
            "num_workers": n,
            "persistent_workers": n > 0,
        }
        return (
            DataLoader(self.train, batch_size=batch_size, shuffle=True, generator=g, **extra),
            DataLoader(self.val, batch_size=256, **extra),
            DataLoader(self.test, batch_size=256, **extra),
        )

    def workers_for(self, pin_memory: bool) -> int:
        if not pin_memory or _in_memory(self.train):
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def example_inputs(self) -> torch.Tensor:
        return self.val[0][0].unsqueeze(0).clone()


def _in_memory(dataset: Dataset) -> bool:
    """A dataset of tensors already in memory (possibly behind a channel conversion)."""
    while isinstance(dataset, _Channels):
        dataset = dataset.dataset
    return isinstance(dataset, TensorDataset)


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with ``fraction`` of each class carved out."""
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        carved.append(idx[:n])
        kept.append(idx[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def _limit(x: torch.Tensor, y: torch.Tensor, limit: int | None, seed: int):
    if limit is None or limit >= len(y):
        return x, y
    _, keep = _stratified_split(y.numpy(), limit / len(y), seed)
    return x[keep], y[keep]


def _from_arrays(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor | None,
    y_test: torch.Tensor | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Splits:
    if x_test is None or y_test is None:
        rest, test = _stratified_split(y_train.numpy(), test_fraction, seed)
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train = x_train[rest], y_train[rest]
    train, val = _stratified_split(y_train.numpy(), val_fraction, seed + 1)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Splits(
        train=TensorDataset(x_train[train], y_train[train]),
        val=TensorDataset(x_train[val], y_train[val]),
        test=TensorDataset(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_digits_arrays(image_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: 1,797 8x8 grey images, upsampled (32x32 by default) so
    CIFAR-style networks keep their spatial stages."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (_resize(x, image_size or 32) - 0.5) / 0.5
    return x, torch.tensor(bunch.target, dtype=torch.long)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar10_arrays(directory: Path, image_size: int | None):
    """The python-batch format: data_batch_1..5 and test_batch, each a pickled dict with
    b'data' (N x 3072 uint8, channel-major) and b'labels'."""
    train_files = sorted(directory.glob("data_batch_*"))
    test_file = directory / "test_batch"
    if not train_files:
        raise DataSourceError(
            f"cifar10:{directory}: no data_batch_* files (expected the CIFAR-10 python format)"
        )

    def read(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            try:
                batch = _unpickle(f)
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
                raise DataSourceError(
                    f"cifar10:{directory}: {f.name} is unreadable: {err}"
                ) from None
        x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return _resize((x - mean) / std, image_size), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = read(train_files)
    x_test, y_test = read([test_file]) if test_file.exists() else (None, None)
    return x_train, y_train, x_test, y_test


def _read_image_tree(root: Path, classes: list[str], size: int):
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(f) as img:
                arr = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32)
            xs.append(torch.from_numpy(arr).permute(2, 0, 1) / 255.0)
            ys.append(label)
    if not xs:
        raise DataSourceError(f"imagefolder:{root}: no images ({sorted(IMAGE_SUFFIXES)}) found")
    x = (torch.stack(xs) - 0.5) / 0.5
    return x, torch.tensor(ys, dtype=torch.long)


def load_imagefolder_arrays(directory: Path, image_size: int | None):
    """``<dir>/<class>/*.png``, or ``<dir>/train/<class>`` + ``<dir>/test/<class>``."""
    size = image_size or 32
    train_root = directory / "train" if (directory / "train").is_dir() else directory
    test_root = next((directory / n for n in ("test", "val") if (directory / n).is_dir()), None)
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataSourceError(
            f"imagefolder:{directory}: need at least 2 class folders, found {classes}"
        )
    x_train, y_train = _read_image_tree(train_root, classes, size)
    if test_root is not None and train_root != directory:
        x_test, y_test = _read_image_tree(test_root, classes, size)
        return x_train, y_train, x_test, y_test
    return x_train, y_train, None, None


def _from_callable(source: str) -> Splits:
    module_name, _, attr = source.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise DataSourceError(f"data source {source!r} cannot be imported: {err}") from None
    try:
        with guarded(f"data source {source}"):
            result = fn()
    except UserCodeExit as err:
        raise DataSourceError(str(err)) from None
    if isinstance(result, dict):
        result = (result.get("train"), result.get("val"), result.get("test"))
    if not (isinstance(result, tuple) and len(result) == 3 and all(r is not None for r in result)):
        raise DataSourceError(
            f"data source {source!r} must return (train, val, test) DataLoaders or a dict "
            "with keys train, val, test"
        )
    datasets: list[Dataset] = []
    labels: set[int] = set()
    for r in result:
        ds: Dataset = r.dataset if isinstance(r, DataLoader) else r
        if not isinstance(ds, Sized):
            raise DataSourceError(
                f"data source {source!r} must give map-style datasets (len() and indexing), "
                f"got {type(ds).__name__}"
            )
        if len(ds):
            check_sample(source, ds[0])
        labels.update(_class_index(ds[i][1]) for i in range(len(ds)))
        datasets.append(ds)
    train, val, test = datasets
    for name, ds in zip(("train", "val", "test"), datasets, strict=True):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataSourceError(f"data source {source}: the {name} split is empty")
    x0, _ = train[0]
    return Splits(train, val, test, num_classes=max(labels) + 1, input_shape=tuple(x0.shape))


def check_sample(source: str, sample: Any) -> None:
    """A sample is an ``(input, target)`` pair with a tensor input; anything else is named
    with what it is and what is supported."""
    if isinstance(sample, dict):
        shape = f"a dict with keys {sorted(map(str, sample))[:6]}"
    elif not isinstance(sample, tuple | list):
        shape = f"a {type(sample).__name__}"
    elif len(sample) != 2:
        shape = f"a {type(sample).__name__} of {len(sample)} items"
    elif not isinstance(sample[0], torch.Tensor):
        shape = f"an (input, target) pair whose input is a {type(sample[0]).__name__}"
    else:
        return
    raise DataSourceError(
        f"data source {source}: a sample is {shape}; supported: (input tensor, target) "
        "pairs, as TensorDataset(x, y) gives (wrap the dataset to yield them)"
    )


def _class_index(target: Any) -> int:
    """A target's class index; -1 for targets that are none (a custom task's regression
    values or label vectors: num_classes then means nothing and preflight skips it)."""
    t = torch.as_tensor(target)
    if t.numel() != 1 or t.is_floating_point() and float(t) != int(t):
        return -1
    return int(t)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """A batch of images (N, C, ...) with ``channels`` channels: grey repeated to RGB, or
    RGB to grey by ITU-R 601 luma; unchanged when ``channels`` is None or already met."""
    have = x.shape[1]
    if channels is None or have == channels:
        return x
    if have == 1 and channels == 3:
        return x.repeat(1, 3, *([1] * (x.dim() - 2)))
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=x.dtype).reshape(1, 3, *([1] * (x.dim() - 2)))
        return (x * weights).sum(dim=1, keepdim=True)
    raise DataSourceError(f"cannot convert {have}-channel inputs to {channels} channels")


class _Channels(Dataset):
    """A dataset whose inputs are converted to ``channels`` channels on the fly."""

    def __init__(self, dataset: Dataset, channels: int) -> None:
        self.dataset = dataset
        self.channels = channels

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, *rest = self.dataset[i]
        return (convert_channels(x.unsqueeze(0), self.channels)[0], *rest)


def with_channels(splits: Splits, channels: int | None) -> Splits:
    if channels is None or splits.input_shape[0] == channels:
        return splits
    convert_channels(torch.zeros(1, *splits.input_shape), channels)  # fails early if it can't
    return Splits(
        train=_Channels(splits.train, channels),
        val=_Channels(splits.val, channels),
        test=_Channels(splits.test, channels),
        num_classes=splits.num_classes,
        input_shape=(channels, *splits.input_shape[1:]),
    )


@functools.lru_cache(maxsize=4)
def _load_cached(key: str) -> Splits:
    o = json.loads(key)
    return with_channels(_load_source(o), o.get("channels"))


def _load_source(o: dict) -> Splits:
    source, size, seed = o["source"], o["image_size"], o["seed"]
    if source == "digits":
        x, y = load_digits_arrays(size)
        x, y = _limit(x, y, o["limit"], seed)
        return _from_arrays(x, y, None, None, o["val_fraction"], o["test_fraction"], seed)
    scheme, _, rest = source.partition(":")
    if scheme in ("cifar10", "imagefolder"):
        directory = Path(rest)
        if not directory.is_dir():
            raise DataSourceError(f"{source}: {directory} is not a directory")
        loader = load_cifar10_arrays if scheme == "cifar10" else load_imagefolder_arrays
        x_tr, y_tr, x_te, y_te = loader(directory, size)
        x_tr, y_tr = _limit(x_tr, y_tr, o["limit"], seed)
        return _from_arrays(x_tr, y_tr, x_te, y_te, o["val_fraction"], o["test_fraction"], seed)
    return _from_callable(source)


def load_splits(
    source: str,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    limit: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> Splits:
    """The splits for a data source (cached per process: candidate tasks reload often),
    with inputs converted to ``channels`` channels when given."""
    key = json.dumps(
        dict(
            source=source,
            image_size=image_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            limit=limit,
            seed=seed,
            channels=channels,
        ),
        sort_keys=True,
    )
    return _load_cached(key)
