from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna
import pytest
from autosearch.search.cli import app
from typer.testing import CliRunner

pytest.importorskip("optuna_dashboard")
runner = CliRunner()
# Straight to 127.0.0.1, whatever proxy the environment names.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with opener.open(url, timeout=5) as r:
        return r.status, r.read()


def test_dashboard_serves_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    study = optuna.create_study(study_name="dash", storage=url, direction="maximize")
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(value=0.1 * i, params={}, distributions={}))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from autosearch.search.cli import main; main()", "dashboard"]
        + ["--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"{base}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode()) from None
                time.sleep(0.2)
        assert status == 200
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        status, page = get(f"{base}/dashboard")
        assert status == 200 and b"<html" in page.lower()
        status, body = get(f"{base}/api/studies/{studies[0]['study_id']}")
        detail = json.loads(body)
        assert status == 200 and len(detail["trials"]) == 3
    finally:
        server.terminate()
        server.wait(timeout=10)


def request(method: str, url: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with opener.open(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_dashboard_refuses_every_write(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    study = optuna.create_study(study_name="dash", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    before = optuna.load_study(study_name="dash", storage=url).trials
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autosearch", "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "AUTOSEARCH_STORAGE": url},  # the URL stays off the command line
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                studies = json.loads(get(f"{base}/api/studies")[1])["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode()) from None
                time.sleep(0.2)
        study_id = studies[0]["study_id"]
        assert request("DELETE", f"{base}/api/studies/{study_id}") >= 400
        new = json.dumps({"study_name": "intruder", "directions": ["minimize"]}).encode()
        assert request("POST", f"{base}/api/studies", new) >= 400
        trial_id = before[0]._trial_id
        note = json.dumps({"user_attrs": {"owned": 1}}).encode()
        assert request("POST", f"{base}/api/trials/{trial_id}/user-attrs", note) >= 400
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert optuna.get_all_study_names(url) == ["dash"]
    after = optuna.load_study(study_name="dash", storage=url).trials
    assert [(t.state, t.value, t.user_attrs) for t in after] == [
        (t.state, t.value, t.user_attrs) for t in before
    ]


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import now fails
    result = runner.invoke(app, ["dashboard", "--storage", "sqlite:///:memory:"])
    assert result.exit_code == 2
    assert "pip install 'autosearch[dashboard]'" in result.stderr


def test_a_taken_port_fails_with_one_line(tmp_path):
    optuna.create_study(study_name="dash", storage=f"sqlite:///{tmp_path}/d.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(
            app, ["dashboard", "--storage", f"{tmp_path}/d.db", "--port", str(port)]
        )
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.stderr
