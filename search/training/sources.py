"""Reading CIFAR-10 and CIFAR-100 from disk: the official archive, its folder, or an npz.

`load_cifar` finds the first readable copy and returns it as numpy arrays (`RawCifar`);
`read_npz` reads any npz of images and labels. Batch files are read with our own
restricted unpickler, so copies that differ from the official files byte for byte are
fine and no file can run code.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "AUTOSEARCH_DATA"


CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class CifarLayout:
    """Where one of the CIFAR datasets keeps what, in its official python format."""

    name: str  # cifar10 or cifar100: the --data value and the default folder's name
    folder: str  # folder inside the official archive
    archive: str  # the official python archive
    npz: str  # x_train, y_train, x_test, y_test (uint8 NHWC, int64)
    train: tuple[str, ...]  # pickled training batches
    test: str  # the pickled test batch
    meta: str  # the pickle holding the class names
    names_key: str  # the meta key of the class names
    labels_key: str  # the batch key of the labels
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    npz="cifar10.npz",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    names_key="label_names",
    labels_key="labels",
    num_classes=10,
)


CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    npz="cifar100.npz",
    train=("train",),
    test="test",
    meta="meta",
    names_key="fine_label_names",  # the 100 fine classes, not the 20 coarse ones
    labels_key="fine_labels",
    num_classes=100,
)


LAYOUTS = {layout.name: layout for layout in (CIFAR10, CIFAR100)}


# CIFAR-10's names, kept for the callers that spelled them out.
BATCHES_DIR, ARCHIVE_NAME, NPZ_NAME = CIFAR10.folder, CIFAR10.archive, CIFAR10.npz


def default_dirs(layout: CifarLayout = CIFAR10) -> list[Path]:
    """Folders searched when neither an argument nor the environment names one."""
    return [Path("data"), Path.home() / ".cache" / "autosearch" / layout.name]


class DataNotFoundError(FileNotFoundError):
    """No readable copy of the data was found, and downloading one failed or was disabled."""


@dataclass
class RawCifar:
    """A labelled image dataset as read from disk, in numpy: CIFAR or the user's own.

    Images are NHWC uint8, (N, S, S, 3) with one square side S for both splits (32 for
    CIFAR), the layout of the npz files and of image libraries; labels are (N,) int64
    class indices into `classes`. `source` says which file or folder they came from.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
                raise ValueError(
                    f"{split}_x must be uint8 (N, S, S, 3) square RGB images, got {x.dtype} "
                    f"{tuple(x.shape)}"
                )
            if y.shape != (len(x),):
                raise ValueError(f"{split}_y must have shape ({len(x)},), got {tuple(y.shape)}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(
                    f"{split}_y holds labels outside [0, {len(self.classes)}): "
                    f"{int(y.min())}..{int(y.max())}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"train images are {self.train_x.shape[1:3]} but test images "
                f"{self.test_x.shape[1:3]}; both splits need one size"
            )

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1])


# --------------------------------------------------------------------------- readers


class _ArrayUnpickler(pickle.Unpickler):
    # Unpickling can run arbitrary code and data folders come from anywhere, so only the
    # numpy pieces that a batch file legitimately needs may be reconstructed.
    # numpy.core was renamed numpy._core; both spellings occur in files
    _NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        numpy_part = module.split(".")[0] == "numpy" and name in self._NUMPY
        # protocol-2 pickles written by Python 3 rebuild bytes through _codecs.encode
        if numpy_part or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(blob: bytes) -> dict[str, Any]:
    # latin1 reads the official Python 2 pickles; their keys then arrive as bytes or str
    # depending on who wrote the file.
    entry = _ArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _decode_batch(blob: bytes, name: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(blob)
    if "data" not in entry or labels_key not in entry:
        raise ValueError(
            f"CIFAR batch {name} lacks 'data' or {labels_key!r} (keys: {sorted(entry)})"
        )
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR batch {name}: 'data' must be (N, 3072), got {data.shape}")
    # rows are channel-major: 1024 red, then 1024 green, then 1024 blue values
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(entry[labels_key], dtype=np.int64)


def _class_names(blob: bytes, layout: CifarLayout) -> list[str]:
    names = _unpickle(blob).get(layout.names_key)
    if names is None:
        names = CLASSES if layout is CIFAR10 else [str(i) for i in range(layout.num_classes)]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _from_blobs(blobs: dict[str, bytes], source: str, layout: CifarLayout) -> RawCifar:
    parts = [_decode_batch(blobs[n], n, layout.labels_key) for n in layout.train]
    test_x, test_y = _decode_batch(blobs[layout.test], layout.test, layout.labels_key)
    return RawCifar(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=np.concatenate([p[1] for p in parts]),
        test_x=test_x,
        test_y=test_y,
        classes=_class_names(blobs[layout.meta], layout),
        source=source,
    )


def _read_batches_dir(folder: Path, layout: CifarLayout) -> RawCifar:
    return _from_blobs({n: (folder / n).read_bytes() for n in layout.files}, str(folder), layout)


def _read_archive(path: Path, layout: CifarLayout) -> RawCifar:
    # One pass in stream order: random access into a gzip stream rereads it from the start.
    blobs: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in layout.files:
                blobs[name] = tar.extractfile(member).read()
    missing = [n for n in layout.files if n not in blobs]
    if missing:
        raise ValueError(f"archive {path} lacks {', '.join(missing)}")
    return _from_blobs(blobs, str(path), layout)


def read_npz(path: Path, default_classes: tuple[str, ...] | int | None = None) -> RawCifar:
    """An npz holding x_train, y_train, x_test and y_test (and optionally `classes`).

    Images are NHWC uint8; grey (N, S, S) or (N, S, S, 1) images become RGB. Without a
    `classes` array the class names are `default_classes` (names, or a count), else
    the label values as text, up to the largest label.
    """
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)} (it has {', '.join(f.files)})")
        xs = [_rgb(np.asarray(f[k]), f"{path}: {k}") for k in ("x_train", "x_test")]
        ys = [
            np.asarray(f[k]).astype(np.int64, casting="same_kind").reshape(-1)
            for k in ("y_train", "y_test")
        ]
        if "classes" in f:
            classes = [str(c) for c in f["classes"]]
        elif isinstance(default_classes, tuple):
            classes = list(default_classes)
        else:
            top = max((int(y.max()) for y in ys if len(y)), default=0) + 1
            classes = [str(i) for i in range(max(top, default_classes or 0))]
    return RawCifar(xs[0], ys[0], xs[1], ys[1], classes, source=str(path))


def _rgb(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 images (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


Reader = Callable[[Path], RawCifar]


def _find_reader(path: Path, layout: CifarLayout = CIFAR10) -> tuple[Path, Reader] | None:
    """The first readable layout at `path`, fastest first, or None."""
    npz = functools.partial(read_npz, default_classes=CLASSES if layout is CIFAR10 else 100)
    if path.is_file():
        if path.suffix == ".npz":
            return path, npz
        if tarfile.is_tarfile(path):
            return path, functools.partial(_read_archive, layout=layout)
        return None
    if not path.is_dir():
        return None
    if (path / layout.npz).is_file():
        return path / layout.npz, npz
    for folder in (path / layout.folder, path):
        if all((folder / n).is_file() for n in layout.files):
            return folder, functools.partial(_read_batches_dir, layout=layout)
    if (path / layout.archive).is_file():
        return path / layout.archive, functools.partial(_read_archive, layout=layout)
    return None


def _download(root: Path) -> None:
    """Fetch CIFAR-10's official archive into `root` (needs network); raises on failure."""
    from torchvision.datasets import CIFAR10 as Fetch

    # torchvision extracts to root/cifar-10-batches-py; we read that with our own reader
    # afterwards rather than trusting its checksummed loader.
    Fetch(root=str(root), train=True, download=True)


def _download_cifar100(root: Path) -> None:
    """Fetch CIFAR-100's official archive into `root`, as `_download` does CIFAR-10."""
    from torchvision.datasets import CIFAR100 as Fetch

    Fetch(root=str(root), train=True, download=True)


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = True) -> RawCifar:
    """Read CIFAR-10 from the first place that holds it.

    Looks in `data_dir` if given, else in `$AUTOSEARCH_DATA`, else in ./data and
    ~/.cache/autosearch/cifar10. Each place may be a folder holding `cifar10.npz`,
    `cifar-10-batches-py/` or `cifar-10-python.tar.gz`, a `cifar-10-batches-py` folder
    itself, or one such file. Batch files are read with our own reader, so copies that
    differ from the official files byte for byte are fine. With `download=True` and
    nothing found, the official archive is fetched into the first place.

    Example:
        >>> raw = load_cifar10("data", download=False)  # doctest: +SKIP
        >>> raw.train_x.shape, raw.test_x.shape  # doctest: +SKIP
        ((50000, 32, 32, 3), (10000, 32, 32, 3))

    Raises:
        DataNotFoundError: nothing readable was found; the message lists every path tried.
    """
    path, reader = locate_cifar10(data_dir, download=download)
    return reader(path)


def load_cifar(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> RawCifar:
    """Read CIFAR-10 (`name` "cifar10") or CIFAR-100 ("cifar100", fine labels) as
    `load_cifar10` does; CIFAR-100 is `cifar-100-python/`, `cifar-100-python.tar.gz` or
    `cifar100.npz`, and its default folder ~/.cache/autosearch/cifar100."""
    path, reader = locate_cifar(LAYOUTS[name], data_dir, download=download)
    return reader(path)


def locate_cifar10(
    data_dir: str | Path | None = None, *, download: bool = True
) -> tuple[Path, Reader]:
    """Where `load_cifar10` would read CIFAR-10 from, and its reader; nothing is read."""
    return locate_cifar(CIFAR10, data_dir, download=download)


def locate_cifar(
    layout: CifarLayout, data_dir: str | Path | None = None, *, download: bool = True
) -> tuple[Path, Reader]:
    """Where one CIFAR dataset would be read from, and its reader; nothing is read.

    A `data_dir` that does not exist is an error, not a folder to create and download
    into: it is most likely a typo.

    Raises:
        DataNotFoundError: nothing readable was found; the message lists every path tried.
    """
    what = f"{layout.npz}, {layout.folder}/ or {layout.archive}"
    if data_dir is not None:
        places, origin = [Path(data_dir).expanduser()], "the data_dir argument"
        if not places[0].exists():
            raise DataNotFoundError(
                f"data folder {str(data_dir)!r} does not exist; point --data-dir (or "
                f"{ENV_VAR}) at a folder holding {what}"
            )
    elif os.environ.get(ENV_VAR):
        places, origin = [Path(os.environ[ENV_VAR]).expanduser()], f"${ENV_VAR}"
    else:
        places, origin = default_dirs(layout), "the default folders"
    for place in places:
        found = _find_reader(place, layout)
        if found is not None:
            return found

    root = places[0]
    if root.suffix in (".gz", ".tgz", ".npz"):
        root = root.parent
    if download:
        made = not root.exists()
        try:
            (_download if layout is CIFAR10 else _download_cifar100)(root)
            found = _find_reader(root, layout)
            if found is None:
                raise FileNotFoundError(f"no readable copy in {root} after downloading")
            return found
        except Exception as exc:  # no network, a proxy, a full disk: all end the same way
            if made:  # a failed download leaves no empty folder behind
                shutil.rmtree(root, ignore_errors=True)
            why = f"downloading into {root} failed ({type(exc).__name__}: {exc})"
    else:
        why = "downloading was disabled (download=False)"
    tried = ", ".join(str(p.resolve()) for p in places)
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[layout.name]
    raise DataNotFoundError(
        f"{title} not found in {origin}: no {what} in {tried}; "
        f"{' '.join(why.split())}. Point to a copy with --data-dir DIR or by setting "
        f"{ENV_VAR}=DIR."
    )
