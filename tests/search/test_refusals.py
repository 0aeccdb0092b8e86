"""Every refusal is one line naming the bad value, exits 2 and writes nothing.

Each case runs a command in an empty working folder (the default storage and the
default data, log and checkpoint folders all live there) and checks that the folder,
and any folder a mistyped path names, is exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from autosearch.search.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(args: list[str], cwd: Path, *named: str) -> str:
    """Run `args` in `cwd`; assert exit 2, one line naming every `named`, nothing new."""
    before = files_under(cwd)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for value in named:
        assert value in lines[0], (value, lines[0])
    assert files_under(cwd) == before, files_under(cwd) - before
    return lines[0]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder: `./autosearch.db`, `./logs`, `./checkpoints` go here."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("AUTOSEARCH_STORAGE", raising=False)
    monkeypatch.delenv("AUTOSEARCH_DATA", raising=False)
    return folder


def start(cifar_dir: Path, *extra: str, study: str = "zigzag") -> list[str]:
    return ["start", "--study", study, "--trials", "1", "--epochs", "1", "--subset", "100"] + [
        "--val-size",
        "20",
        "--device",
        "cpu",
        "--data-dir",
        str(cifar_dir),
        *extra,
    ]


# ----------------------------------------------------------------------------- space


def test_a_rejected_space_file_leaves_no_storage(cwd: Path, cifar_dir: Path) -> None:
    space = cwd / "mine.toml"
    space.write_text('name = "mine"\n[arch]\nwidth = [16, 64]\n')  # "widths" mistyped
    refused(start(cifar_dir, "--space", str(space), study="mine"), cwd, "arch.width")
    assert not (cwd / "autosearch.db").exists()


def test_a_folder_or_a_binary_file_as_space_is_one_line(cwd: Path, cifar_dir: Path) -> None:
    refused(start(cifar_dir, "--space", str(cwd), study="mine"), cwd, str(cwd), "folder")
    binary = cwd / "space.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    refused(start(cifar_dir, "--space", str(binary), study="mine"), cwd, "space.toml", "UTF-8")


def test_nan_in_a_space_range_is_refused_before_it_is_stored(cwd: Path, cifar_dir: Path) -> None:
    space = cwd / "nan.toml"
    space.write_text('name = "nan"\n[recipe]\nlr_mult = [0.3, nan]\n')
    refused(start(cifar_dir, "--space", str(space), study="nan"), cwd, "recipe.lr_mult", "nan")


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--seed", "-1", "--seed"),
        ("--val-size", "0", "--val-size"),
        ("--timeout", "0", "--timeout"),
        ("--timeout", "-5", "--timeout"),
        ("--timeout", "nan", "--timeout"),
        ("--subset", "5", "--subset"),
        ("--grace", "10", "--grace"),
    ],
)
def test_bad_numbers_are_refused_before_the_study(
    cwd: Path, cifar_dir: Path, flag: str, value: str, named: str
) -> None:
    line = refused(start(cifar_dir, flag, value), cwd, named)
    assert value in line or flag == "--grace"
    assert not (cwd / "autosearch.db").exists()


# ------------------------------------------------------------------ device and data


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_creates_no_study(cwd: Path, cifar_dir: Path) -> None:
    url = f"sqlite:///{cwd / 'studies.db'}"
    optuna.create_study(study_name="other", storage=url)
    args = start(cifar_dir, "--storage", url)
    args[args.index("--device") + 1] = "cuda"
    refused(args, cwd, "'cuda'")
    assert optuna.get_all_study_names(url) == ["other"]


def test_a_missing_data_dir_is_not_created(cwd: Path, cifar_dir: Path) -> None:
    args = start(cifar_dir)
    args[args.index("--data-dir") + 1] = str(cwd / "typo" / "cifar")
    refused(args, cwd, "typo/cifar", "does not exist")
    assert not (cwd / "typo").exists()


# ------------------------------------------------------------------------- storages


@pytest.mark.parametrize("command", ["status", "best", "report", "worker"])
def test_a_mistyped_sqlite_path_is_not_created(cwd: Path, cifar_dir: Path, command: str) -> None:
    typo = cwd / "runs" / "nested" / "autosaerch.db"
    args = [command, "--study", "zigzag", "--storage", str(typo)]
    if command == "worker":
        args += ["--data-dir", str(cifar_dir)]
    refused(args, cwd, str(typo), "does not exist")
    assert not (cwd / "runs").exists()


def test_memory_storage_is_refused_for_several_workers(cwd: Path, cifar_dir: Path) -> None:
    args = start(cifar_dir, "--storage", "sqlite:///:memory:", "--workers", "2")
    refused(args, cwd, "sqlite:///:memory:", "in-memory")


def test_a_raw_at_in_a_password_is_refused_and_never_shown(cwd: Path, cifar_dir: Path) -> None:
    url = "postgresql+psycopg://bob:hunter@2@db.invalid/autosearch"
    line = refused(start(cifar_dir, "--storage", url), cwd, "%40")
    assert "hunter" not in line and "@2" not in line


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "-dash", "x" * 600, "with space", "ünï"])
def test_bad_study_names_are_refused_by_every_command(
    cwd: Path, cifar_dir: Path, name: str
) -> None:
    url = f"sqlite:///{cwd / 'studies.db'}"
    optuna.create_study(study_name="other", storage=url)
    shown = name if len(name) <= 40 else name[:37]
    for args in (
        start(cifar_dir, "--storage", url, "--preset", "zigzag", study=name),
        ["worker", "--study", name, "--storage", url, "--data-dir", str(cifar_dir)],
        ["status", "--study", name, "--storage", url],
        ["best", "--study", name, "--storage", url],
        ["report", "--study", name, "--storage", url],
        ["export", "--study", name, "--storage", url, "--out", str(cwd / "out")],
    ):
        refused(args, cwd, "study name", shown)
    assert optuna.get_all_study_names(url) == ["other"]
    assert not (cwd / "logs").exists() and not (cwd.parent.parent / "x").exists()


@pytest.mark.postgres
def test_a_long_name_is_refused_on_postgres_too(cwd: Path, postgres_test_url: str) -> None:
    refused(["status", "--study", "x" * 600, "--storage", postgres_test_url], cwd, "600")


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_longest_allowed_name_works_on_every_backend(
    cwd: Path, cifar_dir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    name = f"n{backend}" + "n" * (128 - 1 - len(backend))
    if backend == "sqlite":
        url = f"sqlite:///{cwd / 'studies.db'}"
    else:
        url = request.getfixturevalue("postgres_test_url")
    args = start(cifar_dir, "--storage", url, "--preset", "zigzag", "--enqueue-only", study=name)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert name in optuna.get_all_study_names(url)


def test_a_read_only_storage_fails_at_once_with_its_cause(
    cwd: Path, cifar_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = cwd / "ro.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{path}")
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    line = refused(start(cifar_dir, "--storage", url), cwd, "readonly database")
    assert "invalid data" not in line and "retrying" not in caplog.text
    assert not any(p.name.startswith("file:") for p in cwd.rglob("*"))  # no stray folders
