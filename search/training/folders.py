"""Your own images: a folder in torchvision's ImageFolder layout, resized once and cached.

A folder holds one sub-folder per class (``cats/``, ``dogs/``, ...), each holding image
files at any depth. With ``train/`` and ``test/`` (or ``val/``) sub-folders of that
layout, those are the two splits; otherwise a seeded, stratified fifth of each class is
held out as the test split. Every image is converted to RGB, its shorter side resized
to the chosen size and its centre cropped square, once: the uint8 arrays are cached in
``$AUTOSEARCH_CACHE`` (default ``~/.cache/autosearch``) under a name made from the
file list, sizes and modification times, so an edited folder is read again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from autosearch.search.training.sources import RawCifar

log = logging.getLogger(__name__)

CACHE_ENV = "AUTOSEARCH_CACHE"

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

TEST_SHARE = 0.2  # held out per class as the test split when there is no test/ folder

SPLIT_NAMES = ("train", "test", "val")


def cache_root() -> Path:
    """Where resized folders are cached: `$AUTOSEARCH_CACHE`, else ~/.cache/autosearch."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autosearch"


@dataclass(frozen=True)
class FolderListing:
    """The image files of a folder, by split, with their class indices into `classes`.

    `train` and `test` hold (path relative to `root`, label) pairs in a fixed order.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    def digest(self, *, stamps: bool) -> str:
        """SHA-256 of the file list and sizes; with `stamps`, of modification times too.

        Without stamps the digest is the same on every machine holding the same files.
        """
        h = hashlib.sha256("\n".join(self.classes).encode())
        for split, entries in (("train", self.train), ("test", self.test)):
            for rel, label in entries:
                st = (self.root / rel).stat()
                h.update(f"\n{split}\t{label}\t{rel}\t{st.st_size}".encode())
                if stamps:
                    h.update(f"\t{st.st_mtime_ns}".encode())
        return h.hexdigest()


def _images_of(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for every visible sub-folder holding images."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _images_of(sub)
        if images:
            found[sub.name] = images
    return found


def _held_out(labels: list[int], seed: int = 0) -> set[int]:
    """Indices of a seeded TEST_SHARE of each class (at least one of a class of 2+)."""
    rng = np.random.default_rng([3, seed])
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    picked: set[int] = set()
    for members in by_class.values():
        n = max(1, round(len(members) * TEST_SHARE)) if len(members) > 1 else 0
        picked.update(int(i) for i in rng.choice(members, size=n, replace=False))
    return picked


def list_folder(root: str | Path) -> FolderListing:
    """The classes and image files of an ImageFolder-layout folder; nothing is decoded.

    Raises:
        FileNotFoundError: `root` is not a folder.
        ValueError: it holds fewer than two class folders with images, or its test
            split names a class its training split lacks.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    subs = {p.name for p in root.iterdir() if p.is_dir()}
    test_name = next((n for n in ("test", "val") if n in subs), None)
    split = "train" in subs and test_name is not None
    train = _class_folders(root / "train" if split else root)
    if len(train) < 2:
        where = root / "train" if split else root
        raise ValueError(
            f"image folder {str(where)!r} holds {len(train)} class folder(s) with images; "
            "give one sub-folder per class (at least 2), as torchvision's ImageFolder reads"
        )
    classes = tuple(train)
    index = {name: i for i, name in enumerate(classes)}

    def entries(found: dict[str, list[Path]]) -> list[tuple[str, int]]:
        return [(str(p.relative_to(root)), index[c]) for c, ps in found.items() for p in ps]

    if split:
        test_found = _class_folders(root / test_name)
        extra = sorted(set(test_found) - set(classes))
        if extra:
            raise ValueError(
                f"{root / test_name} has class folder(s) {', '.join(extra)} that "
                f"{root / 'train'} lacks"
            )
        return FolderListing(root, classes, tuple(entries(train)), tuple(entries(test_found)))
    every = entries(train)
    held = _held_out([label for _, label in every])
    keep = tuple(e for i, e in enumerate(every) if i not in held)
    return FolderListing(root, classes, keep, tuple(e for i, e in enumerate(every) if i in held))


def folder_identity(listing: FolderListing, image_size: int) -> str:
    """What a study records of this data: the same files at the same size, anywhere."""
    return f"folder:{listing.digest(stamps=False)[:16]}@{image_size}px"


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8: shorter side resized, centre cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = size / min(w, h)
            image = image.resize(
                (max(size, round(w * scale)), max(size, round(h * scale))),
                Image.Resampling.BICUBIC,
            )
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def _decode_all(root: Path, entries: tuple[tuple[str, int], ...], size: int) -> tuple:
    x = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    # Decoding and resizing release the GIL, so threads keep several cores busy.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda e: _decode(root / e[0], size), entries)):
            x[i] = image
    return x, np.array([label for _, label in entries], dtype=np.int64)


def load_folder(
    root: str | Path, image_size: int = 32, *, cache_dir: str | Path | None = None
) -> RawCifar:
    """The images of an ImageFolder-layout folder at `image_size` pixels, as `RawCifar`.

    Decoded once; later calls read the cache (see the module's notes). A cache that
    cannot be written is only a warning.
    """
    listing = list_folder(root)
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    path = cache / "folders" / f"{listing.digest(stamps=True)[:32]}-{image_size}px.npz"
    source = str(listing.root)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return RawCifar(
                    f["x_train"],
                    f["y_train"],
                    f["x_test"],
                    f["y_test"],
                    list(listing.classes),
                    source,
                )
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring the unreadable cache %s: %s", path, e)
    train_x, train_y = _decode_all(listing.root, listing.train, image_size)
    test_x, test_y = _decode_all(listing.root, listing.test, image_size)
    raw = RawCifar(train_x, train_y, test_x, test_y, list(listing.classes), source)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            np.savez(f, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
        os.replace(temp, path)  # a reader sees the old file or the whole new one
    except OSError as e:
        temp.unlink(missing_ok=True)
        log.warning("could not cache the resized images in %s: %s", path.parent, e)
    return raw
