"""Reading CIFAR-10 from disk: the official archive, its folder, or an npz file.

`load_cifar10` finds the first readable copy and returns it as numpy arrays
(`RawCifar`). Batch files are read with our own restricted unpickler, so copies that
differ from the official files byte for byte are fine and no file can run code.
"""

from __future__ import annotations

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

BATCHES_DIR = "cifar-10-batches-py"  # folder name inside the official archive

ARCHIVE_NAME = "cifar-10-python.tar.gz"  # the official python archive

NPZ_NAME = "cifar10.npz"  # x_train, y_train, x_test, y_test (uint8 NHWC, int64)

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

TEST_BATCH = "test_batch"

META = "batches.meta"

BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH, META)


CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def default_dirs() -> list[Path]:
    """Folders searched when neither an argument nor the environment names one."""
    return [Path("data"), Path.home() / ".cache" / "autosearch" / "cifar10"]


class DataNotFoundError(FileNotFoundError):
    """No readable copy of CIFAR-10 was found, and downloading one failed or was disabled."""


@dataclass
class RawCifar:
    """CIFAR-10 as read from disk, in numpy.

    Images are NHWC uint8, (N, 32, 32, 3), the layout of the npz files and of image
    libraries; labels are (N,) int64 class indices into `classes`. `source` says which
    file or folder the arrays came from.
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
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(
                    f"{split}_x must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}"
                )
            if y.shape != (len(x),):
                raise ValueError(f"{split}_y must have shape ({len(x)},), got {tuple(y.shape)}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(
                    f"{split}_y holds labels outside [0, {len(self.classes)}): "
                    f"{int(y.min())}..{int(y.max())}"
                )


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


def _decode_batch(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(blob)
    if "data" not in entry or "labels" not in entry:
        raise ValueError(f"CIFAR batch {name} lacks 'data' or 'labels' (keys: {sorted(entry)})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR batch {name}: 'data' must be (N, 3072), got {data.shape}")
    # rows are channel-major: 1024 red, then 1024 green, then 1024 blue values
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(entry["labels"], dtype=np.int64)


def _from_blobs(blobs: dict[str, bytes], source: str) -> RawCifar:
    parts = [_decode_batch(blobs[n], n) for n in TRAIN_BATCHES]
    test_x, test_y = _decode_batch(blobs[TEST_BATCH], TEST_BATCH)
    names = _unpickle(blobs[META]).get("label_names", CLASSES)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return RawCifar(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=np.concatenate([p[1] for p in parts]),
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        source=source,
    )


def _read_batches_dir(folder: Path) -> RawCifar:
    return _from_blobs({n: (folder / n).read_bytes() for n in BATCH_FILES}, str(folder))


def _read_archive(path: Path) -> RawCifar:
    # One pass in stream order: random access into a gzip stream rereads it from the start.
    blobs: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in BATCH_FILES:
                blobs[name] = tar.extractfile(member).read()
    missing = [n for n in BATCH_FILES if n not in blobs]
    if missing:
        raise ValueError(f"archive {path} lacks {', '.join(missing)}")
    return _from_blobs(blobs, str(path))


def _read_npz(path: Path) -> RawCifar:
    with np.load(path, allow_pickle=False) as f:
        classes = [str(c) for c in f["classes"]] if "classes" in f else list(CLASSES)
        return RawCifar(
            train_x=np.ascontiguousarray(f["x_train"], dtype=np.uint8),
            train_y=np.asarray(f["y_train"], dtype=np.int64).reshape(-1),
            test_x=np.ascontiguousarray(f["x_test"], dtype=np.uint8),
            test_y=np.asarray(f["y_test"], dtype=np.int64).reshape(-1),
            classes=classes,
            source=str(path),
        )


def _is_batches_dir(folder: Path) -> bool:
    return all((folder / n).is_file() for n in BATCH_FILES)


def _find_reader(path: Path) -> tuple[Path, Callable[[Path], RawCifar]] | None:
    """The first readable layout at `path`, fastest first, or None."""
    if path.is_file():
        if path.suffix == ".npz":
            return path, _read_npz
        if tarfile.is_tarfile(path):
            return path, _read_archive
        return None
    if not path.is_dir():
        return None
    if (path / NPZ_NAME).is_file():
        return path / NPZ_NAME, _read_npz
    for folder in (path / BATCHES_DIR, path):
        if _is_batches_dir(folder):
            return folder, _read_batches_dir
    if (path / ARCHIVE_NAME).is_file():
        return path / ARCHIVE_NAME, _read_archive
    return None


def _download(root: Path) -> None:
    """Fetch the official archive into `root` (needs network); raises on any failure."""
    from torchvision.datasets import CIFAR10

    # torchvision extracts to root/cifar-10-batches-py; we read that with our own reader
    # afterwards rather than trusting its checksummed loader.
    CIFAR10(root=str(root), train=True, download=True)


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


def locate_cifar10(
    data_dir: str | Path | None = None, *, download: bool = True
) -> tuple[Path, Callable[[Path], RawCifar]]:
    """Where `load_cifar10` would read CIFAR-10 from, and its reader; nothing is read.

    A `data_dir` that does not exist is an error, not a folder to create and download
    into: it is most likely a typo.

    Raises:
        DataNotFoundError: nothing readable was found; the message lists every path tried.
    """
    if data_dir is not None:
        places, origin = [Path(data_dir).expanduser()], "the data_dir argument"
        if not places[0].exists():
            raise DataNotFoundError(
                f"data folder {str(data_dir)!r} does not exist; point --data-dir (or "
                f"{ENV_VAR}) at a folder holding {NPZ_NAME}, {BATCHES_DIR}/ or {ARCHIVE_NAME}"
            )
    elif os.environ.get(ENV_VAR):
        places, origin = [Path(os.environ[ENV_VAR]).expanduser()], f"${ENV_VAR}"
    else:
        places, origin = default_dirs(), "the default folders"
    for place in places:
        found = _find_reader(place)
        if found is not None:
            return found

    root = places[0]
    if root.suffix in (".gz", ".tgz", ".npz"):
        root = root.parent
    if download:
        made = not root.exists()
        try:
            _download(root)
            found = _find_reader(root)
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
    raise DataNotFoundError(
        f"CIFAR-10 not found in {origin}: no {NPZ_NAME}, {BATCHES_DIR}/ or {ARCHIVE_NAME} "
        f"in {tried}; {' '.join(why.split())}. Point to a copy with --data-dir DIR or by "
        f"setting {ENV_VAR}=DIR."
    )
