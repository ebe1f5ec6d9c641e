"""Regenerate docs/report.png in headless Chromium (needs Debian's `chromium`):

    python docs/report_screenshot.py runs/default   # a real run's report.html
    python docs/report_screenshot.py                # a synthetic demo run
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from thinkwheel.curated.demo import demo_run
from thinkwheel.curated.report import render_report, write_report


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out = Path(__file__).resolve().parent / "report.png"
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            page = Path(sys.argv[1]).resolve() / "report.html"
        else:
            page = write_report(
                render_report(
                    *demo_run(tasks_per_round=40, rounds=3, seed=1), title="thinkwheel demo run"
                ),
                Path(tmp) / "report.html",
            )
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp}/profile", "--hide-scrollbars",
             "--window-size=1280,1900", "--virtual-time-budget=5000",
             f"--screenshot={out}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
