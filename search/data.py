"""CIFAR-10 on the device: reading, seeded stratified splits, on-the-fly normalisation.

Flow: `load_cifar10` finds and reads the images into numpy (`RawCifar`), the stratified
helpers pick index sets, and `prepare_data` turns them into a `CifarData` of uint8 tensors
on the training device.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------- layout

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
    if data_dir is not None:
        places, origin = [Path(data_dir).expanduser()], "the data_dir argument"
    elif os.environ.get(ENV_VAR):
        places, origin = [Path(os.environ[ENV_VAR]).expanduser()], f"${ENV_VAR}"
    else:
        places, origin = default_dirs(), "the default folders"
    for place in places:
        found = _find_reader(place)
        if found is not None:
            return found[1](found[0])

    root = places[0]
    if root.suffix in (".gz", ".tgz", ".npz"):
        root = root.parent
    if download:
        try:
            _download(root)
            found = _find_reader(root)
            if found is None:
                raise FileNotFoundError(f"no readable copy in {root} after downloading")
            return found[1](found[0])
        except Exception as exc:  # no network, a proxy, a full disk: all end the same way
            why = f"downloading into {root} failed ({type(exc).__name__}: {exc})"
    else:
        why = "downloading was disabled (download=False)"
    tried = "\n".join(f"  {p.resolve()}" for p in places)
    raise DataNotFoundError(
        f"CIFAR-10 not found in {origin}; looked for {NPZ_NAME}, {BATCHES_DIR}/ and "
        f"{ARCHIVE_NAME} in:\n{tried}\n{why}.\n"
        f"Point to a copy with --data-dir DIR or by setting {ENV_VAR}=DIR."
    )


# --------------------------------------------------------------------------- splits


def _rng(seed: int, stream: int) -> np.random.Generator:
    # A separate stream per operation, so the subset and the split drawn with one seed
    # are independent of each other.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([stream, int(seed)])


def _check_count(name: str, value: Any, low: int, high: int, total: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} must be in [{low}, {high}] for {total} images")
    return int(value)


def _stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of k items, each class getting floor or ceil of its exact share."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (k / len(labels))
    take = np.floor(exact).astype(np.int64)
    # Largest remainder: the leftover items go to the classes with the biggest fractional
    # share, ties broken at random so no class is favoured by its label value.
    short = k - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[:short]] += 1
    chosen = []
    for c, n in enumerate(take):
        members = np.flatnonzero(inverse == c)
        chosen.append(rng.choice(members, size=int(n), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (train_idx, val_idx), each class in proportion.

    Every class gets floor or ceil of its exact share of `val_size`. The two sorted index
    arrays are disjoint and together cover all N items. The same seed gives the same split.

    Example:
        >>> train, val = stratified_split(np.repeat(np.arange(10), 5), val_size=10, seed=0)
        >>> len(train), len(val)
        (40, 10)
    """
    n = len(labels)
    val_size = _check_count("val_size", val_size, 0, max(n - 1, 0), n)
    if n == 0:
        raise ValueError("cannot split an empty label array")
    val = _stratified_pick(labels, val_size, _rng(seed, 2))
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of `n` items, each class in proportion."""
    n = _check_count("n", n, 0, len(labels), len(labels))
    return _stratified_pick(labels, n, _rng(seed, 1))


# --------------------------------------------------------------------------- device data


@dataclass
class CifarData:
    """A train/validation/test split held as uint8 images on one device.

    Images are (N, 3, 32, 32) uint8, labels (N,) int64. `mean` and `std` are per-channel
    statistics of the training split in [0, 1] units, used to normalise on the fly.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10

    def to(self, device: torch.device | str) -> CifarData:
        move = {
            k: getattr(self, k).to(device, non_blocking=True)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return CifarData(**move, mean=self.mean, std=self.std, num_classes=self.num_classes)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32 standardised per channel."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of NHWC uint8 images, in [0, 1] units."""
    # A 256-bin histogram per channel gives exact statistics without a float copy of the
    # whole split (40k images would need about 1 GB in float64).
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = float(hist @ values / total)
        means.append(mean)
        stds.append(float(np.sqrt(hist @ (values - mean) ** 2 / total)))
    return tuple(means), tuple(stds)


def _to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    # NHWC -> NCHW after the copy, so a GPU does the transpose
    x = x.permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def prepare_data(
    data_dir: str | Path | None = None,
    *,
    val_size: int = 10_000,
    subset: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = True,
    raw: RawCifar | None = None,
) -> CifarData:
    """Load CIFAR-10 and make the seeded train/validation/test split on `device`.

    Without `subset`, the 50,000 training images split into 50,000 - val_size training
    and val_size validation images, and the test set is the full 10,000. With
    `subset=N`, a stratified N-image sample of the training images is split in the same
    proportion (val_size / 50,000 of it, at least one image per class when val_size > 0)
    and the test set is a stratified sample of max(classes, N // 5) images, for quick
    runs. The test set is for final reports only; searches score on validation.
    `mean` and `std` come from the training split alone. Pass `raw` to skip reading.

    Example:
        >>> data = prepare_data("data", subset=2000, device="cpu")  # doctest: +SKIP
        >>> data.train_x.shape, data.val_x.shape, data.test_x.shape  # doctest: +SKIP
        (torch.Size([1600, 3, 32, 32]), torch.Size([400, 3, 32, 32]), torch.Size([400, 3, 32, 32]))
    """
    if raw is None:
        raw = load_cifar10(data_dir, download=download)
    num_classes = len(raw.classes)
    total = len(raw.train_y)
    val_size = _check_count("val_size", val_size, 0, total - 1, total)
    if subset is None:
        pool = np.arange(total)
        n_val = val_size
        test_idx = np.arange(len(raw.test_y))
    else:
        subset = _check_count("subset", subset, 2 * num_classes, total, total)
        pool = stratified_subset(raw.train_y, subset, seed)
        n_val = round(subset * val_size / total)
        if val_size > 0:
            n_val = max(n_val, num_classes)
        n_val = min(n_val, subset - num_classes)  # keep training images in every class
        n_test = min(len(raw.test_y), max(num_classes, subset // 5))
        test_idx = stratified_subset(raw.test_y, n_test, seed)
    train_rel, val_rel = stratified_split(raw.train_y[pool], n_val, seed)
    train_idx, val_idx = pool[train_rel], pool[val_rel]

    train_images = raw.train_x[train_idx]
    mean, std = _channel_stats(train_images)
    device = torch.device(device)
    train_x, train_y = _to_device(train_images, raw.train_y[train_idx], device)
    val_x, val_y = _to_device(raw.train_x[val_idx], raw.train_y[val_idx], device)
    test_x, test_y = _to_device(raw.test_x[test_idx], raw.test_y[test_idx], device)
    return CifarData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        mean=mean,
        std=std,
        num_classes=num_classes,
    )
