"""Render a study report in headless Chromium and check every section and plot.

    python bench/render_report.py --study NAME [--storage URL] [--out report.html]
        [--screenshot report.png]
    python bench/render_report.py --html report.html [--screenshot report.png]

The page is loaded from a file with networking switched off as far as Chromium allows,
so a plot that shows proves the embedded plotly library works offline. Checks:

- every section id of `search.report.SECTIONS` is in the rendered DOM;
- every figure in the page source carries data (a non-empty trace list);
- plotly drew every figure: each figure's div holds a `main-svg` after scripts ran.

Prints one line per problem and exits 1 when there is any, else prints a summary.
Needs `chromium` on the PATH (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from autosearch.search.results.report import SECTIONS

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Flags for a quiet, offline, throwaway browser: no sandbox (containers run as root),
# no GPU, no background downloads or sign-in, and a fresh profile per run.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # Let the page's scripts finish before the DOM is dumped, without real waiting.
    "--virtual-time-budget=10000",
)
FIGURE_CALL = re.compile(r'Plotly\.newPlot\(\s*"(fig-[\w-]+)",\s*(\[.*?\]),\s*\{', re.S)


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_browser(browser: str, page: Path, *extra: str, timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{browser} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


class _FigureScan(HTMLParser):
    """For each element whose id starts with "fig-": did plotly draw an svg inside?"""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.drawn: set[str] = set()
        self.open: list[tuple[str, str | None]] = []  # (tag, figure id it opens)

    def handle_starttag(self, tag: str, attrs) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        fig = a["id"] if (a.get("id") or "").startswith("fig-") else None
        if "main-svg" in (a.get("class") or "").split():
            self.drawn.update(f for _, f in self.open if f)
        if tag not in {"br", "img", "input", "meta", "link", "hr", "path", "rect", "line"}:
            self.open.append((tag, fig))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i][0] == tag:
                del self.open[i:]
                break


def check_page(page: Path, screenshot: Path | None = None) -> tuple[list[str], dict]:
    """Problems found (empty when all is well) and a summary of what was seen."""
    browser = find_browser()
    if browser is None:
        return ["no chromium on the PATH"], {}
    source = page.read_text(encoding="utf-8")
    problems = []
    traces = {}
    for fig_id, data in FIGURE_CALL.findall(source):
        traces[fig_id] = len(json.loads(data))
        if traces[fig_id] == 0:
            problems.append(f"figure {fig_id} has no data")
    dom = run_browser(browser, page, "--dump-dom")
    scan = _FigureScan()
    scan.feed(dom)
    for sid in SECTIONS:
        if sid not in scan.ids:
            problems.append(f"section {sid!r} is missing from the rendered page")
    for fig_id in traces:
        if fig_id not in scan.drawn:
            problems.append(f"figure {fig_id} was not drawn (no plotly svg in the DOM)")
    if screenshot is not None:
        shot = f"--screenshot={screenshot.resolve()}"
        run_browser(browser, page, shot, "--window-size=1200,7000")
        if not screenshot.exists():
            problems.append(f"no screenshot was written to {screenshot}")
    notes = dom.count('class="note"')
    return problems, {"figures": traces, "drawn": sorted(scan.drawn), "notes": notes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--html", type=Path, help="check this report file")
    parser.add_argument("--study", help="build the report of this study first")
    parser.add_argument("--storage", help="storage URL of the study")
    parser.add_argument("--out", type=Path, default=Path("report.html"))
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    page = args.html
    if page is None:
        if args.study is None:
            parser.error("give --html FILE or --study NAME")
        import optuna
        from autosearch.search.results.report import write_report
        from autosearch.storage.optuna_storage import make_storage

        storage = make_storage(args.storage, heartbeat_interval=None, max_retry=None)
        page = write_report(optuna.load_study(study_name=args.study, storage=storage), args.out)
    problems, seen = check_page(page, args.screenshot)
    for p in problems:
        print(f"problem: {p}")
    if problems:
        return 1
    print(
        f"ok: {len(SECTIONS)} sections, {len(seen['figures'])} figures drawn "
        f"({sum(seen['figures'].values())} traces), {seen['notes']} note(s) for missing plots"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
