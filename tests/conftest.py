"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from autosearch.search.training.data import CifarData
from autosearch.storage.databases import temporary_database

PG_ENV = "AUTOSEARCH_TEST_PG"

# A TOML space of one 8-channel stage and one epoch: a trial is a fraction of a second on
# a CPU.
TINY_SPACE = """
name = "tiny"
[arch]
stages = [1, 1]
widths = [8, 8]
repeats = [1, 1]
kernels = [3]
skip_kernels = [1]
downsamples = [0, 0]
stem_widths = [8]
[recipe]
optimizers = ["sgd"]
batch_sizes = [64]
epochs = 1
schedules = ["cosine"]
augments = ["flip"]
tta = false
"""


def colour_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`n` NHWC uint8 images whose class is a mean colour plus noise: easy to learn."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    palette = rng.integers(30, 225, size=(10, 3))
    x = palette[y][:, None, None, :] + rng.normal(0, 20, size=(n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 stand-in in the `cifar10.npz` layout the loader reads."""
    root = tmp_path_factory.mktemp("cifar")
    x_train, y_train = colour_images(600, seed=1)
    x_test, y_test = colour_images(200, seed=2)
    np.savez(root / "cifar10.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


def tiny_data(n_train: int = 64, n_val: int = 32, size: int = 32) -> CifarData:
    """A CifarData of small colour images, built directly on the CPU."""
    x, y = colour_images(n_train + n_val + 16, seed=3, size=size)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y)
    a, b = n_train, n_train + n_val
    return CifarData(
        train_x=x[:a],
        train_y=y[:a],
        val_x=x[a:b],
        val_y=y[a:b],
        test_x=x[b:],
        test_y=y[b:],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


@pytest.fixture(scope="session")
def postgres_test_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session, dropped afterwards.

    The server comes from `AUTOSEARCH_TEST_PG`, a URL whose user may CREATE DATABASE
    (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). Tests that use
    this fixture are skipped when the variable is unset.
    """
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"{PG_ENV} is not set; PostgreSQL tests skipped")
    with temporary_database(admin, prefix=f"autosearch_test_{os.getpid()}") as url:
        yield url
