"""The `autosearch` command line: thin commands over the library.

`app` holds the Typer app, its consoles, the one-line error exit and the options that
several commands share; `views` prints trials and studies. Each other module is one
group of commands, and no command module imports another: `arch` (count or train one
architecture), `study` (start a study, join it as a worker), `studies` (list, status,
best), `results` (dashboard, report, export, evaluate) and `proxy` (the gRPC
storage proxy). A command parses its options, calls one library function and prints.
"""

from autosearch.search.cli import arch, proxy, results, studies, study  # noqa: F401 - registers
from autosearch.search.cli.app import app

# `--help` lists the commands in the order a user meets them.
ORDER = ("arch", "train", "start", "worker", "proxy", "studies", "status", "best", "report")
ORDER += ("dashboard", "export", "evaluate", "delete")
app.registered_commands.sort(
    key=lambda c: (
        ORDER.index(c.name or c.callback.__name__)
        if (c.name or c.callback.__name__) in ORDER
        else len(ORDER)
    )
)


def main() -> None:
    app()


__all__ = ["app", "main"]
