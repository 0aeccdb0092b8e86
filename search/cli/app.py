"""The Typer app, its consoles, the one-line error exit and the options commands share.

Importing this module is cheap: no torch, no plotly. Each command imports the library
code it calls inside its body, so `autosearch --help` starts fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

app = typer.Typer(
    help="Search ResNets for CIFAR or your own images under a parameter budget, on Optuna.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help, wrapped by click: rich's option tables cut long option names to
    # `--checkpoint-d…` at 80 columns.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2  # a bad flag, value or setting: running it again fails the same way
EXIT_OVER_BUDGET = 3
EXIT_RUNTIME = 4  # it broke while running (data, database, a bug): a retry may work
_F = TypeVar("_F", bound=Callable)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"autosearch {version('autosearch')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Search ResNets for CIFAR or your own images under a parameter budget, on Optuna."""


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one error line and exit; never a traceback."""
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def storage_errors(command: _F) -> _F:
    """One line, never a traceback, when the study storage fails under a command: exit 2
    for a permanent failure (read-only, refused login, missing tables), 4 for an outage
    that outlasted the retries."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from autosearch.storage.retries import PermanentStorageError, StorageError

        try:
            return command(*args, **kwargs)
        except StorageError as e:
            permanent = isinstance(e, PermanentStorageError)
            fail(str(e), EXIT_BAD_INPUT if permanent else EXIT_RUNTIME)

    return run  # type: ignore[return-value]


def check_name(study: str) -> str:
    """The study name, or a one-line exit 2 naming it (see storage.names)."""
    from autosearch.storage.names import StudyNameError, check_study_name

    try:
        return check_study_name(study)
    except StudyNameError as e:
        fail(str(e))


def say(text: str) -> None:
    """Print a plain line: no markup, no highlighting, never wrapped."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


# Options shared by several commands.
StudyOpt = Annotated[str, typer.Option("--study", "--study-name", help="Study name.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL, or grpc://HOST:PORT of an `autosearch proxy` (default: "
        "$AUTOSEARCH_STORAGE, else the file named by $AUTOSEARCH_STORAGE_FILE, else "
        "$OPTUNA_STORAGE, else ./autosearch.db)."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
DataDirOpt = Annotated[str | None, typer.Option(help="Folder or archive of CIFAR-10/100.")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="cifar10 (default), cifar100, folder:PATH (one sub-folder per class) or npz:PATH.",
    ),
]
ImageSizeOpt = Annotated[
    int | None, typer.Option(help="Side folder: images are resized to (default 32).")
]
MaxParamsOpt = Annotated[int, typer.Option(help="Parameter budget.", min=1)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
