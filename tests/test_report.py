"""Report: one self-contained HTML file with real charts and a filterable sample table.

The Chromium test needs Debian's `chromium` (`apt-get install -y chromium`); without it,
it is skipped with that reason.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import polars as pl
import pytest

from thinkwheel.curated import inspect as ins
from thinkwheel.curated import report
from thinkwheel.curated.demo import demo_run

HOSTILE = "</script><script>alert('pwned')</script><b>bold</b>"


@pytest.fixture(scope="module")
def run():
    rounds, manifest, evals, logs = demo_run(tasks_per_round=24, rounds=2, seed=7)
    # One model output that tries to break out of the page: it must stay text.
    c = rounds[1]["candidates"]
    rounds[1]["candidates"] = c.with_columns(
        pl.when(pl.col("sample_idx") == 0).then(pl.lit(HOSTILE)).otherwise("answer").alias("answer")
    )
    logs[1] = [{"step": s, "loss": 1.0 / s, "reward": s / 10, "kl": 0.01 * s} for s in range(1, 9)]
    return rounds, manifest, evals, logs


@pytest.fixture(scope="module")
def page(run, tmp_path_factory) -> Path:
    html_text = report.render_report(*run, title="demo <run>")
    return report.write_report(html_text, tmp_path_factory.mktemp("rep") / "report.html")


def _charts(html_text: str) -> list[bytes]:
    srcs = re.findall(
        r'<img class="chart" alt="chart" src="data:image/svg\+xml;base64,([^"]+)"', html_text
    )
    return [base64.b64decode(s) for s in srcs]


def test_report_is_self_contained_with_real_charts(run, page):
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<title>demo &lt;run&gt;</title>" in text
    charts = _charts(text)
    # funnel, drops, pass-rate histogram, accuracy, and loss/reward/kl/learning_rate curves
    assert len(charts) == 4 + 4
    assert all(b"<svg" in c and b"</svg>" in c for c in charts)
    assert b"round 1" in charts[0] and b"kept" in charts[0]
    for heading in ("Funnel", "Drop reasons", "Pass rates", "Accuracy per round", "Samples"):
        assert f"<h2>{heading}</h2>" in text


def test_sample_data_round_trips_and_hostile_text_stays_text(run, page):
    text = page.read_text()
    assert HOSTILE not in text and "<script>alert(" not in text
    blob = re.search(r'<script type="application/json" id="sample-data">(.*?)</script>', text, re.S)
    data = json.loads(blob.group(1))
    records = ins.all_records(run[0])
    assert len(data) == records.filter(pl.col("status") != "pending").height
    assert {d["status"] for d in data} == {"kept", "dropped"}
    assert any(d["answer"] == HOSTILE for d in data)
    kept_ids = set(records.filter(pl.col("status") == "kept")["candidate_id"])
    assert {d["candidate_id"] for d in data if d["status"] == "kept"} == kept_ids


def test_report_caps_samples_and_handles_missing_pieces(run):
    rounds = run[0]
    capped = report.render_report(rounds, max_samples=10)
    blob = re.search(r'id="sample-data">(.*?)</script>', capped, re.S)
    assert len(json.loads(blob.group(1))) == 10
    assert "no eval.json yet" in capped and "no training logs" in capped
    assert len(_charts(capped)) == 3
    partial = {0: {k: rounds[0][k] for k in ("tasks", "candidates")}}
    html_text = report.render_report(partial)
    assert "nothing dropped" in html_text or len(_charts(html_text)) == 3


def test_the_base_model_is_the_first_accuracy_row(run):
    """The report's accuracy table and chart started at round 0: the base model, which every
    round is read against (and `thinkwheel run` and `inspect` show), was missing."""
    rounds, manifest, evals, logs = run
    base = {"accuracy": 0.25, "n": 10, "per_family": {}}
    html_text = report.render_report(rounds, manifest, {ins.BASE_ROUND: base, **evals}, logs)
    table = ins.eval_table({ins.BASE_ROUND: base, **evals})
    assert table["model"].to_list()[0] == "base" and table["accuracy"].to_list()[0] == 0.25
    assert table["model"].to_list()[1:] == [f"round {k}" for k in sorted(evals)]
    section = html_text[html_text.index('<section id="eval">'):]
    assert "<td>base</td>" in section.split("</section>")[0]


def test_pass_rate_bars_sit_at_the_rates_that_occur():
    rates = {0: pl.DataFrame({"pass_rate": [0.25, 0.75, 0.75, None, 1.0]}),
             1: pl.DataFrame({"pass_rate": [None]})}
    assert report.rate_bars(rates) == {0: ([0.25, 0.75, 1.0], [1, 2, 1])}


def test_training_charts_only_for_logged_metrics():
    charts = report.training_charts({0: [{"step": 1, "loss": 2.0, "epoch": 0.1}], 1: []})
    assert len(charts) == 1
    assert report.training_charts({}) == []


def test_write_report_is_atomic(tmp_path):
    p = report.write_report("<html>1</html>", tmp_path / "r" / "report.html")
    report.write_report("<html>2</html>", p)
    assert p.read_text() == "<html>2</html>"
    assert [x.name for x in p.parent.iterdir()] == ["report.html"]
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.5}\n\n{"step": 2, "loss": 2.0}\n')
    assert report.read_train_log(log) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
    assert report.read_train_log(tmp_path / "missing.jsonl") == []


# ---- headless Chromium --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(url: str, tmp: Path, *args: str) -> tuple[str, str]:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", *args, url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    return out.stdout, out.stderr


def _count(dom: str) -> int:
    return int(re.search(r'<span id="count"[^>]*data-n="(\d+)"', dom).group(1))


def _attr(dom: str, name: str) -> str | None:
    m = re.search(rf'<body[^>]*\b{name}="([^"]*)"', dom)
    return m.group(1) if m else None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_in_headless_chromium(run, page, tmp_path):
    records = ins.all_records(run[0]).filter(pl.col("status") != "pending")
    dom, err = _chromium(page.as_uri(), tmp_path, "--dump-dom")
    console = [line for line in err.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no JS errors, no console output at all
    assert _attr(dom, "data-ready") == "1" and _attr(dom, "data-js-error") is None
    assert _attr(dom, "data-charts") == str(len(_charts(page.read_text())))  # all decoded
    assert _attr(dom, "data-charts") == "8"
    assert _count(dom) == records.height
    assert dom.count('<tr class="sample ') == min(records.height, 200)

    # Filter by search text + status (the page reads them from the URL hash).
    needle = "dedup:minhash"
    want = records.filter(
        (pl.col("status") == "dropped") & (pl.col("drop_reason") == needle)
    ).height
    assert 0 < want < records.height
    dom2, err2 = _chromium(
        f"{page.as_uri()}#q={quote(needle)}&status=dropped", tmp_path, "--dump-dom"
    )
    assert [line for line in err2.splitlines() if ":CONSOLE" in line] == []
    assert _count(dom2) == want
    rows = re.findall(r'<tr class="sample (\w+)">(.*?)</tr>', dom2, re.S)
    assert len(rows) == want and all(s == "dropped" and needle in r for s, r in rows)
    # The hostile answer is rendered as text, so no <b> element ever appears in the table.
    dom3, _ = _chromium(f"{page.as_uri()}#q={quote('pwned')}", tmp_path, "--dump-dom")
    assert _count(dom3) >= 1
    assert "<b>bold</b>" not in dom3


def test_round_logs_keep_sft_and_name_grpo_metrics(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "logs" / "sft.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (tmp_path / "logs" / "grpo.jsonl").write_text('{"step": 1, "loss": 0.1, "reward": 0.4}\n')
    (tmp_path / "model" / "train_log.jsonl").write_text('{"step": 1, "loss": 0.1, "reward": 0.4}\n')
    assert report.read_round_logs(tmp_path) == [
        {"step": 1, "loss": 2.5}, {"step": 1, "grpo loss": 0.1, "grpo reward": 0.4}
    ]
    old = tmp_path / "old"  # a run from before logs/: the model folder's log
    (old / "model").mkdir(parents=True)
    (old / "model" / "train_log.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    assert report.read_round_logs(old) == [{"step": 3, "loss": 1.0}]
