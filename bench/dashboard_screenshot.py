"""A headless-Chromium screenshot of a study's page in optuna-dashboard.

It checks by eye what Optuna's own tools show of a study: the history plot should
hold no point at 0 for trials that were over the parameter budget (they end PRUNED,
without a value). Needs Chromium (`chromium` or `chromium-browser` on PATH).

    python bench/dashboard_screenshot.py --storage sqlite:///autosearch.db \
        --study zigzag --out bench/results/dashboard_history.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the dashboard did not answer at {url} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, default=Path("dashboard_history.png"))
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    study_id = optuna.load_study(study_name=args.study, storage=args.storage)._study_id
    port = free_port()
    command = [sys.executable, "-m", "autosearch", "dashboard", "--storage", args.storage]
    server = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/api/studies")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shot = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1400,1000", "--virtual-time-budget=20000",
            f"--screenshot={args.out.resolve()}", f"{base}/dashboard/studies/{study_id}",
        ]  # fmt: skip
        subprocess.run(shot, check=True, capture_output=True, timeout=180)
    finally:
        server.terminate()
        server.wait(timeout=30)
    trials = optuna.load_study(study_name=args.study, storage=args.storage).trials
    zeros = [t.number for t in trials if t.value == 0.0]
    print(f"wrote {args.out}; trials with value 0.0 (shown as a score): {zeros or 'none'}")


if __name__ == "__main__":
    main()
