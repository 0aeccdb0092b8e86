"""The launcher's progress display in a pipe: whole lines, never a redrawn bar."""

from __future__ import annotations

import io

from autosearch.search.tuning.launcher import _Bar, _Lines
from rich.console import Console


def test_piped_progress_is_one_whole_line_per_change() -> None:
    out = io.StringIO()
    console = Console(file=out, width=40, force_terminal=False)
    info = "workers 2/2 | running 2 complete 3 pruned 1 infeasible 0 failed 0 | best 0.4321 (#2)"
    with _Lines(console, "zigzag", 10) as display:
        display.update(4, info)
        display.update(4, info)  # nothing changed: nothing printed
        display.say("worker 1 exited with code 4; restarting (1/3)")
        display.update(5, info.replace("complete 3", "complete 4"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("zigzag: 4/10 | ") and lines[0].endswith(tuple("0123456789"))
    assert info in lines[0] and "best 0.4321 (#2)" in lines[2]  # wider than 40, not cut
    assert "\x1b" not in out.getvalue() and "…" not in out.getvalue()


def test_a_terminal_gets_the_bar() -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with _Bar(console, "zigzag", 10) as display:
        display.update(3, "running 1")
        assert display.progress.tasks[0].completed == 3
