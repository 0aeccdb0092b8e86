"""The scripts under examples/ run as a user would run them, on their synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_own_data_example_searches_exports_and_loads(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_data.py"), "--trials", "1"]
        + ["--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "trial 0: finished" in result.stdout  # the user's own callback ran
    accuracy = float(result.stdout.split("test accuracy of the loaded model:")[1])
    info = json.loads((tmp_path / "best" / "model.json").read_text())
    assert info["search"]["study"] == "mine" and info["arch"]["num_classes"] == 4
    assert info["weights_from"].startswith("the search's own")
    assert 0.0 <= accuracy <= 1.0 and info["data"]["source"].startswith("npz:")
