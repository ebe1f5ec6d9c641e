"""One self-contained report.html per run: funnels, drops, pass rates, accuracy, training
curves and a searchable table of kept and dropped samples.

Charts are matplotlib figures embedded as base64 SVG `<img>`s (crisp, and each is its own
document, so ids inside different charts never collide). The sample table is JSON in a
`<script type="application/json">` block rendered by plain JS with `textContent` only:
model output is untrusted text and must never become markup. No network is needed to
open the file. `render_report` is pure; `write_report` is the atomic I/O edge.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel.curated import inspect as ins
from thinkwheel.curated.export import task_pass_rates
from thinkwheel.generators.repair import own_verdicts
from thinkwheel.records import CANDIDATES, VERDICTS, conform

TEXT_LIMIT = 2000  # characters of prompt/reasoning/answer kept per sample in the table
LOG_SKIP = {"step", "epoch", "global_step", "round", "timestamp", "time"}


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="chart" alt="chart" src="data:image/svg+xml;base64,{data}">'


def _figure(w: float = 6.4, h: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "thinkwheel"})  # fmt: skip
    return plt.subplots(figsize=(w, h))


def funnel_chart(funnels: Mapping[int, pl.DataFrame]) -> str:
    """Grouped horizontal bars: one group per funnel stage, one bar per round."""
    fig, ax = _figure(6.4, 0.5 + 0.45 * len(ins.FUNNEL) * max(1, len(funnels)) ** 0.5)
    n = max(len(funnels), 1)
    height = 0.8 / n
    for i, (k, f) in enumerate(sorted(funnels.items())):
        counts = [c or 0 for c in f["count"].to_list()]
        ys = [s + i * height for s in range(len(counts))]
        bars = ax.barh(ys, counts, height=height, label=f"round {k}")
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts], padding=2, fontsize=7)
    ax.set_yticks([s + 0.4 - height / 2 for s in range(len(ins.FUNNEL))], ins.FUNNEL)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    if funnels:  # a run with no finished round yet has no bars to name
        ax.legend(frameon=False, fontsize=8)
    ax.set_title("Funnel per round")
    return _svg(fig)


def drop_chart(drops: Mapping[int, pl.DataFrame], top: int = 10) -> str:
    """Horizontal bars of the most frequent drop reasons, one bar per round."""
    total = pl.concat([d.select("reason", "count") for d in drops.values()] or [
        pl.DataFrame(schema={"reason": pl.Utf8, "count": pl.UInt32})
    ]).group_by("reason").agg(pl.col("count").sum()).sort("count", descending=True).head(top)  # fmt: skip
    reasons = total["reason"].to_list()
    fig, ax = _figure(6.4, 0.8 + 0.3 * max(len(reasons), 1) * max(1, len(drops)) ** 0.5)
    if not reasons:
        ax.text(0.5, 0.5, "nothing dropped", ha="center", transform=ax.transAxes)
    n = max(len(drops), 1)
    height = 0.8 / n
    for i, (k, d) in enumerate(sorted(drops.items())):
        got = dict(zip(d["reason"].to_list(), d["count"].to_list(), strict=True))
        ys = [j + i * height for j in range(len(reasons))]
        ax.barh(ys, [got.get(r, 0) for r in reasons], height=height, label=f"round {k}")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(reasons))], reasons)
    ax.invert_yaxis()
    ax.set_xlabel("candidates dropped")
    if reasons:
        ax.legend(frameon=False, fontsize=8)
    ax.set_title("Drop reasons")
    return _svg(fig)


def pass_rate_chart(rates: Mapping[int, pl.DataFrame]) -> str:
    """Histogram of per-task pass rates, one series per round (0 = never solved)."""
    fig, ax = _figure()
    bars = rate_bars(rates)
    width = 0.8 / max(1, 10 * len(bars))
    for i, (k, (xs, counts)) in enumerate(bars.items()):
        offset = (i - (len(bars) - 1) / 2) * width  # the rounds side by side
        ax.bar([x + offset for x in xs], counts, width=width, label=f"round {k}")
    if bars:
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("pass rate per task (passed / candidates)")
    ax.set_ylabel("tasks")
    ax.set_title("Pass-rate histogram per task")
    return _svg(fig)


def rate_bars(rates: Mapping[int, pl.DataFrame]) -> dict[int, tuple[list[float], list[int]]]:
    """Per round, each pass rate that occurs and its task count: a bar at k of n samples (0.25
    and 0.75 at n = 4), where tenths' bins drew 0.25 at 0.3 and 0.75 at 0.8."""
    out = {}
    for k in sorted(rates):
        counts = (rates[k]["pass_rate"].cast(pl.Float64).drop_nulls().round(3)
                  .value_counts().sort("pass_rate"))
        if counts.height:
            out[k] = (counts["pass_rate"].to_list(), counts["count"].to_list())
    return out


def _accuracy(v: Any) -> float | None:
    """A per-family entry is either the accuracy or eval.json's {"n", "accuracy", ...}."""
    return v.get("accuracy") if isinstance(v, Mapping) else v


def accuracy_chart(evals: Mapping[int, Mapping[str, Any]]) -> str:
    """Held-out accuracy per round (thick), and per family (thin) when present; the base
    model's (key `inspect.BASE_ROUND`) first, as "base"."""
    fig, ax = _figure()
    ks = sorted(evals)
    families = sorted({f for k in ks for f in (evals[k].get("per_family") or {})})
    for fam in families:
        pts = [
            (k, _accuracy(evals[k]["per_family"][fam]))
            for k in ks
            if fam in (evals[k].get("per_family") or {})
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, alpha=0.5, marker=".", label=fam)
    acc = [(k, evals[k].get("accuracy")) for k in ks if evals[k].get("accuracy") is not None]
    ax.plot([a[0] for a in acc], [a[1] for a in acc], lw=2.5, color="black", marker="o",
            label="overall")  # fmt: skip
    ax.set_xticks(ks, ["base" if k == ins.BASE_ROUND else str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.set_title("Eval accuracy per round")
    return _svg(fig)


def training_charts(logs: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[str]:
    """One chart per logged metric (loss, reward, kl, ...), one line per round, by step."""
    metrics: list[str] = []
    for rows in logs.values():
        for row in rows:
            for key, v in row.items():
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                if numeric and key not in LOG_SKIP and key not in metrics:
                    metrics.append(key)
    charts = []
    for m in metrics:
        fig, ax = _figure(4.6, 2.8)
        for k, rows in sorted(logs.items()):
            pts = [
                (r.get("step", i), r[m])
                for i, r in enumerate(rows)
                if isinstance(r.get(m), (int, float))
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"round {k}")
        ax.set_xlabel("step")
        ax.set_title(m)
        ax.legend(frameon=False, fontsize=7)
        charts.append(_svg(fig))
    return charts


def _html_table(df: pl.DataFrame | Sequence[Mapping[str, Any]]) -> str:
    rows = df.to_dicts() if isinstance(df, pl.DataFrame) else list(df)
    if not rows:
        return "<p class=muted>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(ins._fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table class=data><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def sample_rows(records: pl.DataFrame, max_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows for the browsable table: kept and dropped, long texts cut to TEXT_LIMIT chars."""
    df = records.filter(pl.col("status") != "pending")
    if df.height > max_samples:
        df = df.sample(max_samples, seed=seed)
    cut = [pl.col(c).str.slice(0, TEXT_LIMIT) for c in ("prompt", "reasoning", "answer")]
    return (
        df.sort("round", "task_id", "sample_idx")
        .with_columns(cut)
        .select(
            "round",
            "status",
            "drop_reason",
            "domain",
            "family",
            "source",
            "passed",
            "verdict_reason",
            "prompt",
            "reasoning",
            "answer",
            "candidate_id",
        )  # fmt: skip
        .to_dicts()
    )


def render_report(
    rounds: ins.Rounds,
    manifest: Mapping[str, Any] | None = None,
    evals: Mapping[int, Mapping[str, Any]] | None = None,
    train_logs: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    title: str = "thinkwheel run",
    max_samples: int = 2000,
    answers: Mapping[int, pl.DataFrame] | None = None,
) -> str:
    """The whole report as one HTML string (no external resources). `answers` are the stored
    held-out answers (eval-answers.parquet) by round, BASE_ROUND for the base model."""
    evals = evals or {}
    train_logs = {k: v for k, v in (train_logs or {}).items() if v}
    tables = {k: ins.record_table(rounds[k]) for k in sorted(rounds)}
    funnels = {k: ins.funnel(rounds[k], t) for k, t in tables.items()}
    drops = {k: ins.drop_reasons(t) for k, t in tables.items()}
    rates = {
        k: task_pass_rates(own_verdicts(conform(rounds[k].get("candidates", pl.DataFrame()),
                                                CANDIDATES),
                                        conform(rounds[k].get("verdicts", pl.DataFrame()), VERDICTS)))
        for k in tables
    }
    stages = (manifest or {}).get("rounds", {})
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        '<nav><a href="#funnel">Funnel</a> <a href="#drops">Drops</a> '
        '<a href="#pass">Pass rates</a> <a href="#eval">Accuracy</a> '
        '<a href="#train">Training</a> <a href="#samples">Samples</a></nav>',
        '<section id="funnel"><h2>Funnel</h2>' + funnel_chart(funnels) + '<div class="grid">'
        + "".join(
            f"<div><h3>Round {k}</h3>{_html_table(f)}"
            + (_html_table(_stage_rows(stages.get(str(k), {}).get("stages", {}))) if stages else "")
            + "</div>"
            for k, f in funnels.items()
        )
        + "</div></section>",
        '<section id="drops"><h2>Drop reasons</h2>' + drop_chart(drops) + '<div class="grid">'
        + "".join(f"<div><h3>Round {k}</h3>{_html_table(d)}</div>" for k, d in drops.items())
        + "</div></section>",
        '<section id="pass"><h2>Pass rates</h2>' + pass_rate_chart(rates)
        + '<div class="grid wide">'
        + "".join(f"<div><h3>By {by}</h3>{_html_table(_slice_rows(tables, by))}</div>"
                  for by in ins.SLICES)
        + "</div></section>",
        '<section id="eval"><h2>Accuracy per round</h2>'
        + (accuracy_chart(evals) + _html_table(ins.eval_table(evals)) if evals
           else "<p class=muted>no eval.json yet</p>")
        + ("<h3>Held-out tasks fixed and broken against the model before</h3>"
           + _html_table(ins.eval_changes(answers)) if answers else "")
        + "</section>",
        '<section id="train"><h2>Training curves</h2><div class="charts">'
        + ("".join(training_charts(train_logs)) or "<p class=muted>no training logs</p>")
        + "</div></section>",
    ]  # fmt: skip
    all_rows = pl.concat(list(tables.values()), how="diagonal_relaxed") if tables else None
    samples = sample_rows(all_rows, max_samples) if all_rows is not None else []
    # Escape <, > and & so no model output can end or re-open the <script> element.
    data = json.dumps(samples, ensure_ascii=False, default=str)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    sections.append(_SAMPLES_HTML.replace("__N__", f"{len(samples):,}"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(sections)
        + f'<script type="application/json" id="sample-data">{data}</script>'
        + f"<script>{_JS}</script></body></html>"
    )


def _slice_rows(tables: Mapping[int, pl.DataFrame], by: str) -> pl.DataFrame:
    parts = [
        ins.pass_rates(t, by).select(pl.lit(k).alias("round"), pl.all()) for k, t in tables.items()
    ]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _stage_rows(stages: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "stage": n,
            "status": s.get("status"),
            "count": s.get("count"),
            "seconds": s.get("seconds"),
        }
        for n, s in stages.items()
    ]


def write_report(html_text: str, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a report."""
    from thinkwheel.store import atomic_write_text

    p = Path(path)
    atomic_write_text(p, html_text)
    return p


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """Read a train_log.jsonl (one JSON object per logging step); missing file -> []."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def read_round_logs(round_dir: str | Path) -> list[dict[str, Any]]:
    """A round's training curves: `logs/sft.jsonl`, then `logs/dpo.jsonl` and `logs/grpo.jsonl`
    with their metrics named `dpo <metric>` / `grpo <metric>` (every trainer logs a `loss`);
    runs written before `logs/` kept only the last trainer's `model/train_log.jsonl`."""
    d = Path(round_dir)
    logs = {s: read_train_log(d / "logs" / f"{s}.jsonl") for s in ("sft", "dpo", "grpo")}
    if not any(logs.values()):
        return read_train_log(d / "model" / "train_log.jsonl")
    return logs["sft"] + [
        {(k if k in LOG_SKIP else f"{stage} {k}"): v for k, v in r.items()}
        for stage in ("dpo", "grpo")
        for r in logs[stage]
    ]


_SAMPLES_HTML = """<section id="samples"><h2>Samples</h2>
<div class="controls">
<input id="q" type="search" placeholder="search prompt, reasoning, answer, reason, id…" size="40">
<select id="status"><option value="">kept + dropped</option><option value="kept">kept</option>
<option value="dropped">dropped</option></select>
<select id="round"><option value="">all rounds</option></select>
<select id="domain"><option value="">all domains</option></select>
<span id="count" class="muted"></span></div>
<p class="muted">Up to __N__ samples embedded; click a row for its reasoning and answer.</p>
<table class="data" id="samples-table"><thead><tr><th>round</th><th>status</th>
<th>drop reason</th><th>domain</th><th>family</th><th>source</th><th>verdict</th><th>prompt</th>
</tr></thead><tbody id="rows"></tbody></table>
<button id="more" type="button">show more</button></section>"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:0 20px 60px;color:#1d232a;background:#fbfbfc}
h1{margin:18px 0 4px}h2{border-bottom:1px solid #dde;padding-bottom:4px;margin-top:34px}
h3{font-size:14px;margin:10px 0 4px}nav a{margin-right:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:8px 24px}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(520px,1fr))}
.grid>div{overflow-x:auto}.charts{display:flex;flex-wrap:wrap;gap:10px}img.chart{max-width:100%;background:#fff}
table.data{border-collapse:collapse;font-size:12px;width:100%}
table.data th,table.data td{border-bottom:1px solid #e6e8eb;padding:3px 6px;text-align:left;
vertical-align:top}table.data th{background:#f0f2f5}
#samples-table td.p{max-width:520px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.kept td:nth-child(2){color:#18794e}tr.dropped td:nth-child(2){color:#b42318}
tr.sample{cursor:pointer}tr.sample:hover{background:#f3f6ff}
tr.detail pre{white-space:pre-wrap;margin:2px 0 8px;background:#f6f7f9;padding:6px;
font-size:12px}.muted{color:#6b7280}.controls{display:flex;gap:8px;align-items:center;
flex-wrap:wrap;margin:8px 0}button{margin-top:8px}
"""

_JS = r"""
(function () {
  "use strict";
  window.addEventListener("error", function (e) { document.body.dataset.jsError = e.message; });
  var data = JSON.parse(document.getElementById("sample-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var q = $("q"), st = $("status"), rd = $("round"), dm = $("domain"), tbody = $("rows");
  var limit = 200, shown = [];
  function fill(sel, key) {
    var seen = {};
    data.forEach(function (r) { seen[r[key]] = 1; });
    Object.keys(seen).sort().forEach(function (v) {
      var o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o);
    });
  }
  fill(rd, "round"); fill(dm, "domain");
  var hay = data.map(function (r) {
    return [r.prompt, r.reasoning, r.answer, r.drop_reason, r.verdict_reason, r.family,
            r.source, r.candidate_id].join("\u0001").toLowerCase();
  });
  function cell(tr, text, cls) {
    var td = document.createElement("td"); td.textContent = text == null ? "" : String(text);
    if (cls) { td.className = cls; } tr.appendChild(td); return td;
  }
  function verdict(p) { return p === true ? "passed" : p === false ? "failed" : "unverified"; }
  function detail(r) {
    var tr = document.createElement("tr"); tr.className = "detail";
    var td = document.createElement("td"); td.colSpan = 8;
    [["task", r.prompt], ["<think>", r.reasoning], ["answer", r.answer],
     ["verdict", verdict(r.passed) + " (" + (r.verdict_reason || "") + ")  id " + r.candidate_id]
    ].forEach(function (kv) {
      var b = document.createElement("b"); b.textContent = kv[0]; td.appendChild(b);
      var pre = document.createElement("pre"); pre.textContent = kv[1] == null ? "" : kv[1];
      td.appendChild(pre);
    });
    tr.appendChild(td); return tr;
  }
  function render() {
    var needle = q.value.trim().toLowerCase(), s = st.value, r0 = rd.value, d0 = dm.value;
    shown = [];
    for (var i = 0; i < data.length; i++) {
      var r = data[i];
      if (s && r.status !== s) continue;
      if (r0 && String(r.round) !== r0) continue;
      if (d0 && String(r.domain) !== d0) continue;
      if (needle && hay[i].indexOf(needle) === -1) continue;
      shown.push(r);
    }
    tbody.textContent = "";
    shown.slice(0, limit).forEach(function (r) {
      var tr = document.createElement("tr"); tr.className = "sample " + r.status;
      [r.round, r.status, r.drop_reason, r.domain, r.family, r.source].forEach(function (v) {
        cell(tr, v);
      });
      cell(tr, verdict(r.passed)); cell(tr, r.prompt, "p");
      tr.addEventListener("click", function () {
        var next = tr.nextSibling;
        if (next && next.className === "detail") { tbody.removeChild(next); }
        else { tbody.insertBefore(detail(r), next); }
      });
      tbody.appendChild(tr);
    });
    var c = $("count");
    c.dataset.n = String(shown.length);
    c.textContent = shown.length + " of " + data.length + " samples";
    $("more").style.display = shown.length > limit ? "" : "none";
  }
  var params = new URLSearchParams(location.hash.slice(1));
  if (params.get("q")) { q.value = params.get("q"); }
  if (params.get("status")) { st.value = params.get("status"); }
  q.addEventListener("input", function () { limit = 200; render(); });
  [st, rd, dm].forEach(function (el) { el.addEventListener("change", render); });
  $("more").addEventListener("click", function () { limit += 200; render(); });
  render();
  document.body.dataset.ready = "1";
  window.addEventListener("load", function () {
    var ok = Array.prototype.filter.call(document.querySelectorAll("img.chart"),
      function (img) { return img.complete && img.naturalWidth > 0; });
    document.body.dataset.charts = String(ok.length);
  });
})();
"""
