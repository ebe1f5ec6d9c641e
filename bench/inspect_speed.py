"""How long `thinkwheel inspect` takes on a run of 100,000 candidates.

Builds a synthetic round (`thinkwheel.curated.demo`), writes its four tables as parquet,
then times: reading them back + `summarize` + rich rendering (all of `inspect RUN`), and
`sample_records` with a `--where` filter. The peer is the same summary written the usual
way in pandas (groupby/merge over the same parquet files), measured in the same run; the
script prints our time, the peer's and the ratio. Each measurement runs in a fresh child
process per thread count (POLARS_MAX_THREADS=1 and =2), best of 3.

    /work/venv/bin/python bench/inspect.py [--candidates 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TABLES = ("tasks", "candidates", "verdicts", "filtered")

# Run as a script, this file's folder comes first on sys.path and its name shadows the
# stdlib `inspect` that polars imports: drop the folder before anything imports polars.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def build(out: Path, candidates: int) -> None:
    from thinkwheel.curated.demo import demo_run

    rounds, manifest, evals, _ = demo_run(tasks_per_round=candidates // 4, samples=4, rounds=1)
    for name in TABLES:
        rounds[0][name].write_parquet(out / f"{name}.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "evals.json").write_text(json.dumps({str(k): v for k, v in evals.items()}))


def ours(d: Path) -> dict[str, float]:
    import polars as pl

    from thinkwheel.curated import inspect as ins

    t0 = time.perf_counter()
    frames = {n: pl.read_parquet(d / f"{n}.parquet") for n in TABLES}
    manifest = json.loads((d / "manifest.json").read_text())
    evals = {int(k): v for k, v in json.loads((d / "evals.json").read_text()).items()}
    t1 = time.perf_counter()
    summary = ins.summarize({0: frames}, manifest, evals)
    json.dumps(summary)
    from rich.console import Console

    Console(file=io.StringIO(), width=120).print(ins.render_summary(summary))
    t2 = time.perf_counter()
    ins.sample_records({0: frames}, n=5, where="family = 'addition' AND passed", reason="kept")
    t3 = time.perf_counter()
    return {"read": t1 - t0, "summary": t2 - t1, "samples": t3 - t2, "total": t3 - t0}


def peer(d: Path) -> dict[str, float]:
    """The same funnel / drop reasons / 4 slices / lengths with pandas."""
    import pandas as pd

    t0 = time.perf_counter()
    f = {n: pd.read_parquet(d / f"{n}.parquet") for n in TABLES}
    t1 = time.perf_counter()
    v = f["verdicts"]
    v["ok"] = v["passed"].eq(True)
    per_c = v.groupby("candidate_id").agg(ok=("ok", "all")).reset_index()
    tab = (
        f["candidates"]
        .merge(f["tasks"], on="task_id", how="left", suffixes=("", "_t"))
        .merge(per_c, on="candidate_id", how="left")
        .merge(f["filtered"][["candidate_id", "drop_reason"]], on="candidate_id", how="left")
    )
    tab["stage"] = tab["drop_reason"].str.split(":").str[0]
    ok = tab[tab["ok"].eq(True)]
    funnel = [len(f["tasks"]), len(tab), len(ok), len(ok) - (ok["stage"] == "dedup").sum()]
    funnel.append(funnel[-1] - (ok["stage"] == "decontam").sum())
    funnel.append(int(tab["drop_reason"].isna().sum()))
    tab["source_kind"] = tab["source"].where(~tab["source"].str.startswith("procedural"), "proc")
    tab["kept"] = tab["drop_reason"].isna()
    for by in ("domain", "family", "source_kind", "difficulty"):
        tab.groupby(by).agg(
            tasks=("task_id", "nunique"), n=("candidate_id", "size"), ok=("ok", "sum"),
            kept=("kept", "sum"),
        )  # fmt: skip
    tab["drop_reason"].value_counts()
    for col in ("reasoning", "answer"):
        for sub in (tab, tab[tab["kept"]]):
            sub[col].str.len().describe(percentiles=[0.5, 0.9])
    t2 = time.perf_counter()
    return {"read": t1 - t0, "summary": t2 - t1, "total": t2 - t0}


def child(which: str, d: str) -> None:
    fn = ours if which == "ours" else peer
    best: dict[str, float] = {}
    for _ in range(3):
        r = fn(Path(d))
        best = r if not best or r["total"] < best["total"] else best
    print(json.dumps(best))


def run_child(which: str, d: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", which, "--dir", str(d)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=100_000)
    ap.add_argument("--child", choices=["ours", "peer"])
    ap.add_argument("--dir")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.dir)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        build(d, a.candidates)
        print(f"built {a.candidates:,} synthetic candidates in {time.perf_counter() - t:.1f} s")
        for threads in (1, 2):
            o, p = run_child("ours", d, threads), run_child("peer", d, threads)
            print(
                f"threads={threads}: thinkwheel inspect read {o['read']:.2f} s + summary "
                f"{o['summary']:.2f} s + samples {o['samples']:.2f} s = {o['total']:.2f} s | "
                f"pandas peer read {p['read']:.2f} s + summary {p['summary']:.2f} s = "
                f"{p['total']:.2f} s | ratio peer/ours (read+summary) "
                f"{p['total'] / (o['read'] + o['summary']):.2f}x"
            )


if __name__ == "__main__":
    main()
