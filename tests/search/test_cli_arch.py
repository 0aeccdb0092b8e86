from __future__ import annotations

import json

from autosearch.search.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_arch_json_reports_the_zigzag_count():
    result = runner.invoke(app, ["arch", "zigzag", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 4_891_338
    assert data["within_budget"] is True
    assert data["flops"] > 0
    assert len(data["spec"]["stages"]) == 7


def test_arch_over_budget_exits_3_and_names_the_count():
    result = runner.invoke(app, ["arch", "resnet18"])
    assert result.exit_code == 3
    assert "11,173,962" in result.stdout


def test_arch_from_flags_and_custom_budget():
    args = ["arch", "--widths", "64,128,256", "--repeats", "2,2,2", "--json"]
    data = json.loads(runner.invoke(app, args).stdout)
    assert [s["width"] for s in data["spec"]["stages"]] == [64, 128, 256]
    result = runner.invoke(app, [*args, "--max-params", "1000"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["within_budget"] is False


def test_malformed_arguments_exit_2_with_one_line():
    for args in (
        ["arch", "--widths", "64,abc"],
        ["arch", "--widths", "64,128", "--kernels", "4"],
        ["arch", "no-such-preset"],
        ["arch", "--widths", "8,8,8,8,8,8", "--strides", "2,2,2,2,2,2"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "Traceback" not in result.output


def test_version_short_help_and_completion() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"autosearch {version('autosearch')}"
    short = runner.invoke(app, ["-h"])
    assert short.exit_code == 0 and "--install-completion" in short.output
    assert (
        runner.invoke(app, ["start", "-h"]).output == runner.invoke(app, ["start", "--help"]).output
    )


def test_help_keeps_whole_option_names_at_80_columns() -> None:
    for command in ("start", "worker", "export"):
        text = runner.invoke(app, [command, "--help"], terminal_width=80).output
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= 80
    assert "--checkpoint-dir" in runner.invoke(app, ["start", "--help"], terminal_width=80).output
