"""The gRPC storage proxy: real servers on free local ports, SQLite or PostgreSQL behind.

Workers reach the study only through the proxy here; the tests check that claims stay
exclusive, that a dead worker's trial is failed and retried once through it, and that
a whole study run by two `autosearch worker` processes ends with exact counts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from autosearch.search.tuning.worker import claim_trial, run_worker
from autosearch.storage.optuna_storage import StorageError, close_storage, make_storage
from autosearch.storage.proxy import ProxyServer, ProxyStorage, start_proxy
from autosearch.storage.urls import StorageURLError, is_grpc, proxy_address, resolve_url
from optuna.trial import TrialState

from bench import reliability

HEARTBEAT, GRACE = 1, 3  # s: a dead worker's trial is found within seconds


@pytest.fixture
def proxy(storage_url: str) -> Iterator[ProxyServer]:
    server = start_proxy(storage_url, port=0, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    yield server
    server.stop()


def _client(proxy: ProxyServer, **kwargs) -> ProxyStorage:
    kwargs.setdefault("heartbeat_interval", HEARTBEAT)
    kwargs.setdefault("grace_period", GRACE)
    return make_storage(proxy.url, **kwargs)


def _stand_in(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    for epoch in (1, 2, 3):
        trial.report(x * epoch, epoch)
    return x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- urls


def test_proxy_urls_resolve_and_bad_ones_name_the_value(monkeypatch) -> None:
    assert resolve_url("grpc://db-proxy:13000") == "grpc://db-proxy:13000"
    assert proxy_address("grpc://[::1]:5") == ("::1", 5)
    monkeypatch.setenv("AUTOSEARCH_STORAGE", "grpc://10.1.2.3:13000")
    assert is_grpc(None) and resolve_url() == "grpc://10.1.2.3:13000"
    for bad, word in (("grpc://host", "grpc://host"), ("grpc://h:99999", "99999")):
        with pytest.raises(StorageURLError, match=word):
            resolve_url(bad)


# ------------------------------------------------------------------- through a server


def test_two_clients_run_a_study_with_exact_counts(proxy: ProxyServer, study_name: str) -> None:
    clients = [_client(proxy), _client(proxy)]
    study = optuna.create_study(study_name=study_name, storage=clients[0], direction="maximize")
    for _ in range(24):
        study.enqueue_trial({})
    ran: list[int] = []

    def work(storage: ProxyStorage) -> None:
        mine = optuna.load_study(study_name=study_name, storage=storage)
        ran.append(run_worker(mine, _stand_in))

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    trials = study.get_trials()
    assert sum(ran) == 24 and len(trials) == 24
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 24}
    assert sorted(t.number for t in trials) == list(range(24))
    assert all(len(t.intermediate_values) == 3 for t in trials)
    for c in clients:
        close_storage(c)


def test_a_dead_workers_trial_is_failed_and_retried_once(
    proxy: ProxyServer, study_name: str
) -> None:
    dead, alive = _client(proxy), _client(proxy)
    study = optuna.create_study(study_name=study_name, storage=dead, direction="maximize")
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.5})
    # A worker that claims a trial, beats once (in the claim) and is never heard again.
    lost = claim_trial(study)
    assert lost is not None and lost.suggest_float("x", 0.0, 1.0) == 0.25
    close_storage(dead)

    survivor = optuna.load_study(study_name=study_name, storage=alive)
    started = time.monotonic()
    assert run_worker(survivor, _stand_in) == 2  # its own trial, then the retry
    waited = time.monotonic() - started
    trials = survivor.get_trials()
    states = Counter(t.state for t in trials)
    assert states == {TrialState.FAIL: 1, TrialState.COMPLETE: 2}
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.params == {"x": 0.25} and retry.state == TrialState.COMPLETE
    assert GRACE - 1 <= waited < GRACE + 30  # its claim beat just before `started`
    close_storage(alive)


def test_heartbeats_are_written_through_the_proxy(proxy: ProxyServer, study_name: str) -> None:
    client = _client(proxy)
    study = optuna.create_study(study_name=study_name, storage=client)
    study.enqueue_trial({})
    trial = claim_trial(study)
    assert trial is not None
    # Beating keeps it alive past the grace period; silence makes it stale.
    for _ in range(GRACE + 1):
        client.record_heartbeat(trial._trial_id)
        time.sleep(1)
        assert client._get_stale_trial_ids(study._study_id) == []
    time.sleep(GRACE + 1)
    assert client._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    close_storage(client)


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_other_heartbeat_settings_are_refused_naming_both(proxy: ProxyServer) -> None:
    with pytest.raises(StorageError, match=r"every 1 s with a 3 s grace, not 30 s and 120 s"):
        make_storage(proxy.url, heartbeat_interval=30, grace_period=120)
    reader = make_storage(proxy.url, heartbeat_interval=None, max_retry=None)
    assert reader.get_heartbeat_interval() is None  # reading needs no heartbeats
    close_storage(reader)


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_a_plain_optuna_proxy_is_refused_for_workers(storage_url: str) -> None:
    from optuna.storages._grpc.server import make_server

    port = _free_port()
    rdb = make_storage(storage_url, heartbeat_interval=None)
    server = make_server(optuna.storages.get_storage(rdb), "127.0.0.1", port)
    server.start()
    try:
        with pytest.raises(StorageError, match="no heartbeat service"):
            make_storage(f"grpc://127.0.0.1:{port}", heartbeat_interval=30)
        reader = make_storage(f"grpc://127.0.0.1:{port}", heartbeat_interval=None)
        assert optuna.get_all_study_names(reader) == []
        close_storage(reader)
    finally:
        server.stop(0).wait()
        close_storage(rdb)


def test_nothing_listening_fails_in_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(StorageError, match=rf"grpc://127.0.0.1:{(port := _free_port())}"):
        make_storage(f"grpc://127.0.0.1:{port}", heartbeat_interval=None)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_calls_wait_for_a_restarting_proxy(storage_url: str, study_name: str) -> None:
    first = start_proxy(storage_url, port=0, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    port = first.port
    client = _client(first)
    optuna.create_study(study_name=study_name, storage=client)
    first.stop()
    restarted: list[ProxyServer] = []
    timer = threading.Timer(
        2.0,
        lambda: restarted.append(
            start_proxy(storage_url, port=port, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
        ),
    )
    timer.start()
    try:
        # Sent while nothing listens: held until the new proxy is up, then answered.
        assert optuna.get_all_study_names(client) == [study_name]
        study = optuna.load_study(study_name=study_name, storage=client)
        study.enqueue_trial({})
        assert len(study.get_trials()) == 1
    finally:
        timer.join()
        close_storage(client)
        for server in restarted:
            server.stop()


# ------------------------------------------------------------ the commands, end to end


@pytest.mark.slow
def test_a_study_runs_through_the_proxy_command_with_two_workers(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    """`autosearch proxy` (storage URL from a file) and `autosearch start --workers 2`."""
    url_file = tmp_path / "storage-url"
    url_file.write_text(storage_url + "\n")
    url_file.chmod(0o600)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSEARCH_STORAGE")}
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "autosearch", "proxy", "--port", str(port)]
            + ["--heartbeat", "2", "--grace", "10"],
            env={**env, "AUTOSEARCH_STORAGE_FILE": str(url_file)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        proxy_url = f"grpc://127.0.0.1:{port}"
        reliability.wait_for(lambda: "workers: --storage" in log.read_text(), 120, "the proxy")
        assert storage_url.split("@")[-1] in log.read_text()
        with reliability.workspace() as ws:
            args = reliability.start_args(
                ws,
                study_name,
                proxy_url,
                space=ws.space("tiny", reliability.TINY_SPACE, epochs=2),
                trials=6,
                workers=2,
                subset=200,
                heartbeat=2,
                grace=10,
            )
            started = reliability.launch(args, ws.root / "start.log")
            output = reliability.finish(started, ws.root / "start.log", timeout=400)
        assert "workers done: 0 crash(es)" in output
        direct = make_storage(storage_url, heartbeat_interval=None, max_retry=None)
        trials = optuna.load_study(study_name=study_name, storage=direct).get_trials()
        assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 6}
        assert sorted(t.number for t in trials) == list(range(6))
        assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
        close_storage(direct)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()
    assert "stopping the storage proxy" in log.read_text()
