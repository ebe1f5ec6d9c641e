"""The flywheel, measured: held-out accuracy per round and per family, base model as round 0.

    python -P bench/flywheel.py [--config bench/flywheel-math-heavy.yaml] [--rounds 3] [--out runs/bench-flywheel]

Runs the real flow on the bundled model (CPU) from a recipe, then one-round ablations on the
same round-0 tasks and samples (forked from the main run, so nothing is re-sampled): SFT on
every sampled candidate (no verification; OpenThoughts3 found verification did not always help
SFT, so we measure it), on answer-verified candidates without the false-arithmetic check, with
it but without the worked-step check (when the recipe has that check), and the main run's own
round 1 (every check). Prints markdown tables and writes them to <out>/flywheel.md. Re-running
resumes finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
RECIPE = os.path.join(_HERE, "flywheel-math-heavy.yaml")


def _table(evals: dict[str, dict], title: str) -> str:
    fams = sorted({f for e in evals.values() for f in e["per_family"]})
    head = "| family | " + " | ".join(evals) + " |\n|---|" + "---|" * len(evals) + "\n"
    rows = [
        f"| {f} | "
        + " | ".join(f"{e['per_family'].get(f, {}).get('accuracy', 0):.0%}" for e in evals.values())
        + " |"
        for f in fams
    ]
    domains = sorted({d for e in evals.values() for d in e.get("per_domain", {})})
    rows += [  # on the bundled model: math never in its pretraining, code in it (README)
        f"| {d} families | "
        + " | ".join(f"{e.get('per_domain', {}).get(d, {}).get('accuracy', 0):.1%}" for e in evals.values())
        + " |"
        for d in domains
    ]
    overall = "| **all** | " + " | ".join(f"**{e['accuracy']:.1%}**" for e in evals.values()) + " |"
    clean = "| all, no false step | " + " | ".join(  # evals from before the metric have none
        f"{e['clean_accuracy']:.1%}" if "clean_accuracy" in e else "" for e in evals.values()
    ) + " |"
    return f"### {title}\n\n{head}" + "\n".join(rows) + f"\n{overall}\n{clean}\n"


def _fork(src: Path, dst: Path) -> None:
    """A new run dir holding src's base eval and round-0 tasks, samples and verdicts."""
    if (dst / "manifest.json").exists():
        return  # resuming
    (dst / "round-0").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "eval-base.json", dst / "eval-base.json")
    for name in ("tasks.parquet", "candidates.parquet", "verdicts.parquet"):
        shutil.copy2(src / "round-0" / name, dst / "round-0" / name)
    m = json.loads((src / "manifest.json").read_text())
    r0 = m["rounds"]["0"]["stages"]
    m["rounds"] = {
        "base": m["rounds"]["base"],
        "0": {"stages": {s: r0[s] for s in ("tasks", "sample", "verify")}},
    }
    (dst / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=RECIPE, help="the run recipe (YAML)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-flywheel")
    ap.add_argument(
        "--ablation-steps", type=int, default=1000,
        help="SFT step cap for the one-round ablations (SFT on all candidates is ~30x larger)",
    )
    ap.add_argument("--no-ablation", action="store_true")
    args = ap.parse_args()

    from thinkwheel.config import load_config
    from thinkwheel.flows.flywheel import run
    from thinkwheel.store import RunStore

    out = Path(args.out)
    cfg = load_config(args.config, name="bench-flywheel", rounds=args.rounds)
    t0 = time.time()
    run(cfg, out / "verified")
    t_main = time.time() - t0
    store = RunStore(out / "verified")
    stage_s = sum(  # `train.sft`, `train.grpo`... run inside `train`, whose seconds hold theirs
        s.get("seconds") or 0 for r in store.manifest()["rounds"].values()
        for name, s in r["stages"].items() if "." not in name
    )
    evals = {"base (round 0)": store.read_json("eval-base.json")}
    for k in range(args.rounds):
        evals[f"round {k + 1}"] = store.read_json(f"round-{k}/eval.json")
    md = _table(
        evals,
        f"Held-out greedy accuracy per round ({args.rounds} rounds, {t_main / 60:.1f} min wall,"
        f" {stage_s / 60:.1f} min of stage time)",
    )
    gains = [(e["accuracy"] - evals["base (round 0)"]["accuracy"]) * 100 for e in evals.values()]
    md += "\nGain over the base model per round: " + ", ".join(f"{g:+.1f}" for g in gains[1:]) + " points.\n"

    compare: dict[str, dict] = {"base": evals["base (round 0)"]}
    if not args.no_ablation:
        t1 = time.time()
        q = cfg.filters.quality
        off = {"verified_only": True, "check_arithmetic": False, "check_steps": False}
        arms = {"SFT on all candidates": {**off, "verified_only": False}, "verified answers": off}
        main_label = "verified answers, no false step"
        if q.check_steps:  # the recipe checks worked steps too: one arm with the false-step check only
            arms[main_label] = {**off, "check_arithmetic": True}
            main_label = "verified, no false or missing step"
        sizes = {}
        for label, arm in arms.items():
            slug = "-".join(w.strip(",") for w in label.split())
            ab = cfg.model_copy(deep=True)
            ab.name, ab.rounds = f"bench-flywheel-{slug}", 1
            ab.export.verified_only = arm["verified_only"]
            ab.filters.quality.check_arithmetic = arm["check_arithmetic"]
            ab.filters.quality.check_steps = arm["check_steps"]
            ab.train.sft.max_steps = min(ab.train.sft.max_steps, args.ablation_steps)
            dst = out / slug
            _fork(out / "verified", dst)
            run(ab, dst)
            compare[label] = RunStore(dst).read_json("round-0/eval.json")
            sizes[label] = RunStore(dst).stage_entry(0, "export")["sft"]
        compare[main_label] = evals["round 1"]
        sizes[main_label] = store.stage_entry(0, "export")["sft"]
        md += "\n" + _table(
            compare, f"One round on the same tasks and samples ({(time.time() - t1) / 60:.1f} min)"
        )
        md += "\nSFT set sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".\n"
    (out / "flywheel.md").write_text(md)
    (out / "flywheel.json").write_text(json.dumps({"evals": evals, "compare": compare}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
