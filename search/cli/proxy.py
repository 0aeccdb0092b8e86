"""`autosearch proxy`: serve the study storage to many workers over gRPC."""

from __future__ import annotations

from typing import Annotated

import typer
from autosearch.search.cli.app import StorageOpt, app, fail, say


@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; a private one for other machines.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 13000,
    heartbeat: Annotated[
        int, typer.Option(help="Heartbeat interval of the studies served, s.", min=1)
    ] = 30,
    grace: Annotated[
        int, typer.Option(help="Seconds without heartbeat before a trial is dead.")
    ] = 120,
    pool_size: Annotated[
        int, typer.Option(help="Persistent database connections (one more under a burst).", min=1)
    ] = 4,
    threads: Annotated[int, typer.Option(help="Storage calls served at once.", min=1)] = 10,
) -> None:
    """Hold the database connections for many workers: they use --storage grpc://HOST:PORT.

    The proxy's own storage comes from --storage, else $AUTOSEARCH_STORAGE, else the
    file named by $AUTOSEARCH_STORAGE_FILE (keeps the password off the command line).
    Runs until Ctrl-C or SIGTERM.
    """
    import logging
    import sys

    from autosearch.storage.optuna_storage import StorageError
    from autosearch.storage.urls import StorageURLError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from autosearch.storage.proxy import run_proxy
    except ImportError as e:
        fail(f"the storage proxy needs grpcio ({e.msg}): pip install 'autosearch[grpc]'")

    def announce(text: str) -> None:
        say(text)
        sys.stdout.flush()  # a long-running server: its log must show the line at once

    try:
        run_proxy(
            announce,
            url=storage,
            host=host,
            port=port,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            pool_size=pool_size,
            threads=threads,
        )
    except (StorageError, StorageURLError, ValueError) as e:
        fail(str(e))
