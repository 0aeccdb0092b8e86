"""The Typer app, its consoles, the one-line error exit and the options commands share.

Importing this module is cheap: no torch, no plotly. Each command imports the library
code it calls inside its body, so `autosearch --help` starts fast.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    help="Search CIFAR-10 ResNets under a parameter budget with Optuna.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help, wrapped by click: rich's option tables cut long option names to
    # `--checkpoint-d…` at 80 columns.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_OVER_BUDGET = 3


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
    """Search CIFAR-10 ResNets under a parameter budget with Optuna."""


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one error line and exit; never a traceback."""
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def say(text: str) -> None:
    """Print a plain line: no markup, no highlighting, never wrapped."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


# Options shared by several commands.
StudyOpt = Annotated[str, typer.Option("--study", help="Study name.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL, or grpc://HOST:PORT of an `autosearch proxy` (default: "
        "$AUTOSEARCH_STORAGE, else the file named by $AUTOSEARCH_STORAGE_FILE, else "
        "./autosearch.db)."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
DataDirOpt = Annotated[str | None, typer.Option(help="CIFAR-10 folder or archive.")]
MaxParamsOpt = Annotated[int, typer.Option(help="Parameter budget.", min=1)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
