"""Optuna's gRPC storage proxy, with the heartbeats that our workers need.

One `autosearch proxy` process holds a few database connections and serves any number
of workers over gRPC, so PostgreSQL's ``max_connections`` stops capping the number of
workers. Workers name it as ``--storage grpc://host:port`` and get a `ProxyStorage`.

Optuna's proxy protocol has no heartbeat calls: its `GrpcStorageProxy` is no
`BaseHeartbeat`, so through it a worker could neither beat nor find a dead worker's
trial. The proxy here serves a second, small gRPC service beside Optuna's,
``autosearch.Heartbeat``, that forwards to the heartbeat methods of the proxy's own
storage. `ProxyStorage` is Optuna's client plus those calls, so the worker loop,
`optuna.storages.fail_stale_trials` and the retry of a dead worker's trial work through
it unchanged. The database clock stamps each heartbeat, as without a proxy, so the
workers' clocks need not agree. Claims stay atomic: the proxy runs each worker's
compare-and-set on the trial state as one database transaction.

The heartbeat interval and grace period belong to the proxy's storage (the grace is
what a stale-trial query compares against), so a worker that asks for other values is
refused with both named. Retrying a dead worker's trial runs in the worker that finds
it, with that worker's retry limit, as without a proxy.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import warnings
from collections import namedtuple
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import optuna
from autosearch.storage.optuna_storage import (
    DB_RETRY_S,
    PG_MAX_OVERFLOW,
    StorageError,
    make_storage,
)
from autosearch.storage.urls import is_grpc, is_postgres, mask_url, proxy_address, resolve_url
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, GrpcStorageProxy

# Optuna publishes only `run_grpc_proxy_server`, which builds its server inside and
# blocks; to serve the heartbeat service on the same port we assemble the same server.
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.storages._heartbeat import BaseHeartbeat

SERVICE = "autosearch.Heartbeat"
DEFAULT_PORT = 13000
PROXY_POOL_SIZE = 4  # persistent connections; with the overflow, 5 at most
PROXY_THREADS = 10  # calls served at once; the rest queue in gRPC
CONNECT_TIMEOUT_S = 10.0  # a wrong address fails in seconds
# How long one call waits for a proxy that is down or restarting. The proxy's own calls
# retry a database outage for DB_RETRY_S, so a worker outwaits that and some.
PROXY_WAIT_S = 2 * DB_RETRY_S
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.25, 5.0

log = logging.getLogger(__name__)
StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _load(data: bytes) -> dict[str, Any]:
    return json.loads(data.decode())


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------- client


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """One call's details, as an interceptor hands them on."""


class _Patience(grpc.UnaryUnaryClientInterceptor):
    """Every call waits for an unreachable proxy for up to `wait_s`; a read whose
    connection dropped under it is sent again.

    ``wait_for_ready`` holds a call until the channel connects, so a call made while
    the proxy restarts is sent once it is back, and never twice. A call in flight when
    the connection drops ends UNAVAILABLE: a read (``Get...``) is sent again; a write is
    not, as the proxy may have done it, and its error reaches the caller as a database
    error would.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    def intercept_unary_unary(self, continuation, details, request):
        if self.wait_s <= 0:  # impatient: fail at once, as with db_retry_s=0
            return continuation(details, request)
        give_up = time.monotonic() + self.wait_s
        is_read = details.method.rsplit("/", 1)[-1].startswith("Get")
        wait = _BACKOFF_FIRST_S
        while True:
            left = max(give_up - time.monotonic(), 0.0)
            patient = _CallDetails(
                details.method, left, details.metadata, details.credentials, True, None
            )
            call = continuation(patient, request)
            if not is_read or call.code() != grpc.StatusCode.UNAVAILABLE or left < wait:
                return call
            time.sleep(wait)
            wait = min(2 * wait, _BACKOFF_MAX_S)


class ProxyStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client, plus the heartbeats of `autosearch proxy`.

    Open it with `connect_proxy` (or `make_storage("grpc://host:port")`), which checks
    the proxy's heartbeat settings. With `heartbeat_interval` None the client neither
    beats nor fails stale trials: for commands that only read.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval: int | None = None,
        stale_callback: StaleCallback | None = None,
        wait_s: float = PROXY_WAIT_S,
    ) -> None:
        self._heartbeat_interval = heartbeat_interval
        self._stale_callback = stale_callback
        self._wait_s = wait_s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    def _setup(self) -> None:
        super()._setup()
        # Optuna's stub and trial cache, rebuilt on a patient channel (see `_Patience`).
        patient = grpc.intercept_channel(self._channel, _Patience(self._wait_s))
        self._stub = type(self._stub)(patient)
        self._cache = type(self._cache)(self._stub)
        self._heartbeat_calls = {
            name: patient.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=_dump, response_deserializer=_load
            )
            for name in ("GetSettings", "RecordHeartbeat", "GetStaleTrialIds")
        }

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_heartbeat_calls", None)
        return state

    def wait_connected(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Raise `StorageError` unless the proxy answers within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise StorageError(
                f"no storage proxy answers at grpc://{_target(self._host, self._port)} "
                f"within {timeout:.0f} s; is `autosearch proxy` running there?"
            ) from None

    def proxy_settings(self) -> dict[str, int | None]:
        """The proxy's heartbeat interval and grace period, in seconds."""
        return self._heartbeat_calls["GetSettings"]({})

    def record_heartbeat(self, trial_id: int) -> None:
        self._heartbeat_calls["RecordHeartbeat"]({"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        reply = self._heartbeat_calls["GetStaleTrialIds"]({"study_id": study_id})
        return [int(i) for i in reply["trial_ids"]]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._stale_callback


def connect_proxy(
    url: str,
    *,
    heartbeat_interval: int | None,
    grace_period: int | None,
    stale_callback: StaleCallback | None = None,
    wait_s: float = PROXY_WAIT_S,
) -> ProxyStorage:
    """A client of the storage proxy at ``grpc://host:port``, checked to be reachable.

    Args:
        url: ``grpc://host:port``.
        heartbeat_interval: The interval the caller runs trials with; None for a client
            that only reads (no heartbeats, no failing of stale trials).
        grace_period: The grace the caller expects (None: twice the interval).
        stale_callback: Called with each trial this client fails as stale (the retry).
        wait_s: How long a call waits for a proxy that is down; 0 fails at once.

    Raises:
        StorageError: Nothing answers at `url`, it is a proxy without the heartbeat
            service while heartbeats are asked for, or its settings differ.
    """
    host, port = proxy_address(url)
    client = ProxyStorage(host=host, port=port, wait_s=wait_s)
    client.wait_connected()
    if heartbeat_interval is None:
        return client
    try:
        settings = client.proxy_settings()
    except grpc.RpcError as e:
        client.close()
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise StorageError(
                f"the storage proxy at {url} has no heartbeat service (a plain Optuna "
                "proxy?): workers need it to detect dead trials; run `autosearch proxy`"
            ) from None
        raise StorageError(f"storage proxy at {url}: {e.details()}") from None
    wanted = (heartbeat_interval, grace_period or 2 * heartbeat_interval)
    served = (settings["heartbeat_interval"], settings["grace_period"])
    if wanted != served:
        client.close()
        raise StorageError(
            f"the storage proxy at {url} runs heartbeats every {served[0]} s with a "
            f"{served[1]} s grace, not {wanted[0]} s and {wanted[1]} s as this study "
            f"asks: restart it with --heartbeat {wanted[0]} --grace {wanted[1]}, or "
            f"start the study with --heartbeat {served[0]} --grace {served[1]}"
        )
    client._heartbeat_interval = heartbeat_interval
    client._stale_callback = stale_callback
    return client


# ---------------------------------------------------------------------------- server


def _heartbeat_service(storage: BaseStorage, interval: int, grace: int) -> grpc.GenericRpcHandler:
    """``autosearch.Heartbeat``: the heartbeat methods of the proxy's `storage`."""

    def settings(_request: dict, _context: grpc.ServicerContext) -> dict:
        return {"heartbeat_interval": interval, "grace_period": grace}

    def record(request: dict, _context: grpc.ServicerContext) -> dict:
        storage.record_heartbeat(int(request["trial_id"]))
        return {}

    def stale(request: dict, _context: grpc.ServicerContext) -> dict:
        return {"trial_ids": storage._get_stale_trial_ids(int(request["study_id"]))}

    methods = {"GetSettings": settings, "RecordHeartbeat": record, "GetStaleTrialIds": stale}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=_load, response_serializer=_dump
            )
            for name, fn in methods.items()
        },
    )


@dataclass
class ProxyServer:
    """A started proxy: its gRPC server, the port it listens on, its storage."""

    server: grpc.Server
    host: str
    port: int
    storage: optuna.storages.RDBStorage
    max_connections: int | None  # of the database; None for SQLite

    @property
    def url(self) -> str:
        return f"grpc://{_target(self.host, self.port)}"

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish the calls under way (up to `grace_s`), then close the database."""
        self.server.stop(grace_s).wait()
        self.storage.remove_session()
        self.storage.engine.dispose()


def start_proxy(
    url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    heartbeat_interval: int = 30,
    grace_period: int = 120,
    pool_size: int = PROXY_POOL_SIZE,
    threads: int = PROXY_THREADS,
) -> ProxyServer:
    """Open the storage at `url` and serve it on `host`:`port` (0: any free port).

    The storage gets the heartbeat settings; Optuna's cache in front of it (as
    `run_grpc_proxy_server` asks for) reads only unfinished and new trials from the
    database. At most ``pool_size + 1`` PostgreSQL connections are open however many
    workers call in; `threads` calls are served at once.

    Raises:
        StorageError: The storage cannot be opened, names a proxy itself, or the
            address cannot be bound.
    """
    resolved = resolve_url(url)
    if is_grpc(resolved):
        raise StorageError(
            f"the proxy's own storage must be a database, not another proxy ({resolved})"
        )
    if threads < 1:
        raise ValueError(f"threads={threads} must be at least 1")
    rdb = make_storage(
        resolved,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=None,  # the retry of a dead trial runs in the worker that fails it
        pool_size=pool_size,
    )
    cached = optuna.storages.get_storage(rdb)
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy"))
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(cached), server)
    server.add_generic_rpc_handlers((_heartbeat_service(cached, heartbeat_interval, grace_period),))
    try:
        bound = server.add_insecure_port(_target(host, port))
    except RuntimeError as e:
        bound, reason = 0, str(e)
    else:
        reason = "address in use or not on this machine"
    if not bound:
        rdb.engine.dispose()
        raise StorageError(f"the proxy cannot listen on {_target(host, port)}: {reason}")
    server.start()
    limit = pool_size + PG_MAX_OVERFLOW if is_postgres(resolved) else None
    log.info("storage proxy for %s on %s:%d", mask_url(resolved), host, bound)
    return ProxyServer(server, host, bound, rdb, limit)


def run_proxy(say: Callable[[str], None] = print, **kwargs: Any) -> None:
    """`start_proxy(**kwargs)`, then serve until Ctrl-C or SIGTERM and stop cleanly."""
    proxy = start_proxy(**kwargs)
    connections = (
        f"at most {proxy.max_connections} database connections"
        if proxy.max_connections
        else "one SQLite file"
    )
    say(
        f"storage proxy for {mask_url(resolve_url(kwargs.get('url')))} on {proxy.url} "
        f"({connections}); workers: --storage {proxy.url}"
    )
    stopped = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    say("stopping the storage proxy")
    proxy.stop()
