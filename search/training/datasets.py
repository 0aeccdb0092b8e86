"""Which data a run trains on: one `--data` value, read by one loader.

`--data` is ``cifar10`` (the default), ``cifar100``, ``folder:PATH`` (an ImageFolder
layout, resized once to ``--image-size`` pixels) or ``npz:PATH`` (x_train, y_train,
x_test, y_test). `parse_data` turns it into a `DataSource`; `describe_source` says what
a study must know before any image is decoded (its identity, class count and image
size); `load_source` reads the images as uint8 `RawCifar` arrays.

The identity is what a study records of its data: ``cifar10``, ``cifar100``,
``folder:<digest>@<size>px`` (the file list and sizes) or ``npz:<digest>`` (the file's
bytes). It does not depend on where the data lives, so workers on machines that keep
the same data in other places agree on it.

Example:
    >>> source = parse_data("folder:~/photos", image_size=64)  # doctest: +SKIP
    >>> describe_source(source).num_classes  # doctest: +SKIP
    5
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from autosearch.models.spec import INPUT_SIZE, MAX_INPUT_SIZE, MIN_INPUT_SIZE
from autosearch.search.training.folders import folder_identity, list_folder, load_folder
from autosearch.search.training.sources import (
    LAYOUTS,
    DataNotFoundError,
    RawCifar,
    locate_cifar,
    read_npz,
)

KINDS = ("cifar10", "cifar100", "folder", "npz")

DATA_HELP = "cifar10, cifar100, folder:PATH (one sub-folder per class) or npz:PATH"


CIFAR_TRAIN_IMAGES = 50_000


def default_val_size(train_images: int | None) -> int:
    """The validation images held out when none is asked: a fifth (10,000 of CIFAR's
    50,000, assumed when `train_images` is None)."""
    return (CIFAR_TRAIN_IMAGES if train_images is None else train_images) // 5


class DataError(ValueError):
    """A --data value, image size or data file that cannot be used."""


@dataclass(frozen=True)
class DataSource:
    """Where a run's images come from.

    `path` is the data folder for CIFAR (None: `$AUTOSEARCH_DATA` and the default
    folders), the image folder for ``folder`` and the file for ``npz``. `image_size` is
    the side ``folder`` images are resized to; CIFAR and npz images keep their own.
    """

    kind: str = "cifar10"
    path: str | None = None
    image_size: int = INPUT_SIZE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown data source {self.kind!r}; use {DATA_HELP}")
        if self.kind in ("folder", "npz") and not self.path:
            raise DataError(f"--data {self.kind}: needs a path, as in {self.kind}:PATH")
        _check_size(self.image_size, "--image-size")

    @property
    def spec(self) -> str:
        """The --data value that names this source (CIFAR without its folder)."""
        return self.kind if self.kind in LAYOUTS else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class SourceInfo:
    """What a study needs to know of its data before any image is decoded."""

    identity: str
    num_classes: int
    image_size: int
    train_images: int | None = None  # None: CIFAR, whose count is known by its name


def _check_size(size: object, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise DataError(f"{what} must be a whole number of pixels, got {size!r}")
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise DataError(
            f"{what} {size} is outside {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels "
            f"(the networks downsample up to five times)"
        )
    return size


def parse_data(
    text: str | DataSource | None = None,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
) -> DataSource:
    """The `DataSource` a --data value names; `DataError` naming the value if none.

    `data_dir` (--data-dir) locates CIFAR; ``folder:`` and ``npz:`` carry their own
    path, made absolute here. `image_size` (default 32) applies to ``folder:`` only.
    """
    if isinstance(text, DataSource):
        return text
    text = (text or "cifar10").strip()
    kind, sep, path = text.partition(":")
    kind = kind.lower()
    if kind not in KINDS or (kind in LAYOUTS and sep):
        raise DataError(f"unknown data source {text!r}; use {DATA_HELP}")
    if kind in LAYOUTS:
        if image_size not in (None, INPUT_SIZE):
            raise DataError(
                f"--image-size {image_size} resizes folder: images only; {kind} is 32 pixels"
            )
        return DataSource(kind, data_dir)
    if data_dir is not None:
        raise DataError(f"--data-dir locates CIFAR; --data {kind}:PATH names its own path")
    if kind == "npz" and image_size not in (None, INPUT_SIZE):
        raise DataError(f"--image-size {image_size} resizes folder: images only, not npz")
    resolved = str(Path(path).expanduser().resolve()) if path else ""
    return DataSource(kind, resolved, INPUT_SIZE if image_size is None else image_size)


def _npz_header(path: Path, key: str) -> tuple[int, ...]:
    """The shape of one array in an npz, read from its header alone."""
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        return tuple(read(f)[0])


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_npz(path: Path) -> SourceInfo:
    if not path.is_file():
        raise DataNotFoundError(f"npz file {str(path)!r} does not exist")
    try:
        shape = _npz_header(path, "x_train")
        with np.load(path, allow_pickle=False) as f:
            ys = [np.asarray(f[k]).reshape(-1) for k in ("y_train", "y_test")]
            names = len(f["classes"]) if "classes" in f else 0
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{path} is not an npz with x_train, y_train, x_test and y_test: {e}"
        ) from None
    if len(shape) < 3 or shape[1] != shape[2]:
        raise DataError(f"{path}: x_train must hold square images (N, S, S, 3), got {shape}")
    top = max((int(y.max()) + 1 for y in ys if len(y)), default=0)
    return SourceInfo(
        identity=f"npz:{_file_digest(path)[:16]}",
        num_classes=max(names, top),
        image_size=_check_size(int(shape[1]), f"{path}: the image size"),
        train_images=len(ys[0]),
    )


def describe_source(
    source: DataSource, *, download: bool = True, locate: bool = True
) -> SourceInfo:
    """Identity, class count and image size of `source`; nothing is decoded.

    CIFAR is located (and downloaded, with `download`, when nowhere to be found; not at
    all without `locate`: its name says all), a folder listed, an npz's headers and
    labels read.

    Raises:
        DataNotFoundError: the data is not there.
        DataError: it is there but unusable (too few classes, a bad image size).
    """
    if source.kind in LAYOUTS:
        layout = LAYOUTS[source.kind]
        if locate:
            locate_cifar(layout, source.path, download=download)
        return SourceInfo(layout.name, layout.num_classes, INPUT_SIZE)
    path = Path(source.path)
    if source.kind == "npz":
        return _describe_npz(path)
    try:
        listing = list_folder(path)
    except FileNotFoundError as e:
        raise DataNotFoundError(str(e)) from None
    except ValueError as e:
        raise DataError(str(e)) from None
    return SourceInfo(
        folder_identity(listing, source.image_size),
        len(listing.classes),
        source.image_size,
        len(listing.train),
    )


def load_source(source: DataSource, *, download: bool = True) -> RawCifar:
    """The images and labels of `source`, as uint8 NHWC arrays."""
    if source.kind in LAYOUTS:
        path, reader = locate_cifar(LAYOUTS[source.kind], source.path, download=download)
        return reader(path)
    if source.kind == "folder":
        try:
            return load_folder(source.path, source.image_size)
        except FileNotFoundError as e:
            raise DataNotFoundError(str(e)) from None
    path = Path(source.path)
    if not path.is_file():
        raise DataNotFoundError(f"npz file {str(path)!r} does not exist")
    raw = read_npz(path)
    _check_size(raw.image_size, f"{path}: the image size")
    return raw
