"""What did not make the flywheel better, measured: one round's training re-run with one change.

    python -P bench/flywheel_variants.py [--run runs/bench-flywheel/verified] [--round 1] [--only NAME]...

Takes a finished `bench/flywheel.py` run and re-runs the training step of round `--round` (round
2's model for the default 1): SFT from the base model on the curated SFT sets of rounds 0..R,
with the run's own SFT settings, then the held-out eval. Each variant changes one thing: the
start model (the previous round's, as `strategy: continue` would), the step count, the
learning rate, the data (the same tasks with their generator's gold traces: the ceiling of
the step), the mix of the SFT set (tasks the model solved only once repeated; families or
trace shapes rebalanced; only the traces the step check keeps), or a second stage after SFT
(DPO with an NLL term on verified-vs-failed pairs from the same task, as in Iterative RPO;
GRPO with the verifier rewards). "as run" is the unchanged step retrained here (it reproduces the flow's number);
the same step with two other SFT seeds (data order) is the noise floor the others are read
against. Nothing is re-sampled. Results are cached per variant in `--out`, so
a re-run only trains what is missing; the table goes to <out>/variants.md. `--own-prompts N`
also scores the round's model and each variant greedy on N of the round's GRPO prompts, the
tasks GRPO trains on.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402

from thinkwheel.config import RunConfig, load_config  # noqa: E402
from thinkwheel.store import RunStore  # noqa: E402

DIGIT = re.compile(r"\d")


# ------------------------------------------------------------------ data
@functools.cache
def clean_candidates(run: str, r: int) -> pl.DataFrame:
    """Round r's candidates, `clean` when verified with no false step in the reasoning (the SFT
    rule). Cached: the rate and pair variants read the same rounds."""
    from thinkwheel.filters.arithmetic import false_claims

    store = RunStore(run)
    return (
        store.read_table(r, "candidates")
        .join(store.read_table(r, "verdicts").select("candidate_id", "passed"), on="candidate_id")
        .with_columns(
            clean=pl.col("passed").fill_null(False)
            & pl.col("reasoning").map_elements(lambda s: not false_claims(s), return_dtype=pl.Boolean)
        )
    )


def clean_rates(run: str, rounds: list[int]) -> pl.DataFrame:
    """task_id -> share of its samples that were clean."""
    return pl.concat(
        [clean_candidates(run, r).group_by("task_id").agg(rate=pl.col("clean").mean()) for r in rounds]
    )


def upweight_solved_once(sft: pl.DataFrame, rates: pl.DataFrame) -> pl.DataFrame:
    """Rows of tasks with a clean pass rate below 1 (harder for the sampling model) twice."""
    hard = sft.join(rates, on="task_id", how="left").filter(pl.col("rate") < 1.0).drop("rate")
    return pl.concat([sft, hard], how="diagonal_relaxed")


def rebalance(sft: pl.DataFrame, key: str, alpha: float, within: str | None = None) -> pl.DataFrame:
    """Resample so each `key` group gets a share of its block proportional to size**alpha.

    The block is the whole set, or each `within` group (family totals then stay as they were).
    alpha=1 changes nothing; alpha=0 makes the groups equal."""
    blocks = [sft] if within is None else [d for _, d in sft.group_by(within, maintain_order=True)]
    out = []
    for block in blocks:
        sizes = dict(block.group_by(key).len().iter_rows())
        z = sum(n**alpha for n in sizes.values())
        for (name,), d in block.group_by(key, maintain_order=True):
            target = max(1, round(block.height * sizes[name] ** alpha / z))
            reps, extra = divmod(target, d.height)
            out += [d] * reps + ([d.sample(extra, seed=0)] if extra else [])
    return pl.concat(out).sample(fraction=1.0, shuffle=True, seed=1)


def steps_stated(sft: pl.DataFrame) -> pl.DataFrame:
    """The rows the step check (`filters.quality.check_steps`) keeps: a procedural column task's
    trace states the task's worked steps. What a run without the check would have trained on
    without its leaps. (The worked steps as they are now: on a run made before a
    multiplication's carry had a step of its own, its fused multiplication traces go too.)"""
    from thinkwheel.filters.steps import unstated_step

    def text(row: dict[str, Any], role: str) -> str:
        return next(m["content"] for m in row["messages"] if m["role"] == role)

    keep = [unstated_step(r["source"], r["family"], text(r, "user"), text(r, "assistant")) is None
            for r in sft.iter_rows(named=True)]
    return sft.filter(pl.Series(keep, dtype=pl.Boolean))


def trace_shape(messages: list[dict[str, str]]) -> str:
    """The reasoning with every digit replaced: '9+5=14, 8+8+1=17' -> 'D+D=DD, D+D+D=DD'."""
    text = next(m["content"] for m in messages if m["role"] == "assistant")
    return DIGIT.sub("D", text.split("</think>")[0])


def with_shapes(sft: pl.DataFrame) -> pl.DataFrame:
    return sft.with_columns(
        shape=pl.col("messages").map_elements(trace_shape, return_dtype=pl.Utf8)
    )


def gold_traces(run: str, rounds: list[int], system_prompt: str) -> pl.DataFrame:
    """The rounds' procedural tasks with their generator's own worked traces, as SFT rows: the
    ceiling of this training step on these tasks, were every sample a perfect one (repair makes
    round 0's traces near-gold, so a flat curve after round 1 may be this ceiling). Each task's
    problem is found again by drawing its (family, level, seed) until its prompt comes up."""
    from thinkwheel.generators.procedural import make_problem

    tasks = pl.concat([RunStore(run).read_table(r, "tasks") for r in rounds], how="diagonal_relaxed")
    tasks = tasks.filter(pl.col("drop_reason").is_null() & pl.col("source").str.starts_with("procedural:"))
    rows = []
    keys = tasks.with_columns(seed=pl.col("meta").map_elements(
        lambda m: json.loads(m)["seed"], return_dtype=pl.Int64)).group_by("family", "difficulty", "seed")
    for (family, level, seed), group in keys:
        wanted, index = set(group["prompt"]), 0
        while wanted and index < 50 * len(group) + 100_000:
            p = make_problem(family, level, seed, index)
            index += 1
            if p.prompt in wanted:
                wanted.discard(p.prompt)
                turns = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                    {"role": "user", "content": p.prompt},
                    {"role": "assistant", "content": f"<think>{p.trace}</think>\n{p.answer}"}]
                rows.append({"messages": turns, "family": family})
    return pl.DataFrame(rows)


def dpo_pairs(run: str, rounds: list[int], system_prompt: str) -> pl.DataFrame:
    """The flow's own dpo split of each round (`export.dpo_frame`), as `train.dpo` reads it."""
    from thinkwheel.curated.export import dpo_frame

    store = RunStore(run)
    tables = ("tasks", "candidates", "verdicts", "filtered")
    return pl.concat(
        [dpo_frame(*(store.read_table(r, t) for t in tables), system_prompt) for r in rounds]
    )


# ------------------------------------------------------------------ second stages
def dpo(model_dir: str, pairs: pl.DataFrame, out_dir: str, *, steps: int, lr: float) -> dict[str, Any]:
    """`train.dpo` with an NLL term on the chosen answer (Iterative RPO)."""
    from thinkwheel.config import DPOTrainConfig
    from thinkwheel.train.dpo import train_dpo

    cfg = DPOTrainConfig(enabled=True, max_steps=steps, learning_rate=lr, batch_size=16,
                         nll_weight=1.0, max_length=256)
    out = train_dpo(model_dir, pairs.sample(fraction=1.0, shuffle=True, seed=0), out_dir, cfg)
    last = [h for h in out["log_history"] if "rewards/accuracies" in h][-1]
    return {"pairs": pairs.height, "pair_accuracy": last["rewards/accuracies"]}


def grpo(
    model_dir: str, prompts: pl.DataFrame, out_dir: str, cfg: RunConfig, lr: float, *,
    steps: int = 60, **over: Any,
) -> dict:
    from thinkwheel.train.grpo import train_grpo
    from thinkwheel.train.rewards import grpo_rewards

    g = cfg.train.grpo.model_copy(
        update={"enabled": True, "max_steps": steps, "batch_size": 64, "learning_rate": lr, **over}
    )
    rewards, weights = grpo_rewards(g)
    out = train_grpo(model_dir, prompts.sample(fraction=1.0, shuffle=True, seed=0), out_dir, g,
                     rewards, weights)
    curve = [h["reward"] for h in out.get("log_history", []) if "reward" in h]
    task = [h["rewards/task_reward/mean"] for h in out.get("log_history", [])
            if "rewards/task_reward/mean" in h]
    window = min(30, len(task))  # the task reward's mean over the first and last steps
    return {"prompts": prompts.height, "reward_first_last": [curve[:5], curve[-5:]],
            "task_reward_first_last": [round(sum(task[:window]) / max(1, window), 3),
                                       round(sum(task[-window:]) / max(1, window), 3)]}


# ------------------------------------------------------------------ the bench
Variant = Callable[[], dict[str, Any]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench-flywheel/verified", help="a bench/flywheel.py run")
    ap.add_argument("--round", type=int, default=1, help="re-run this round's training step")
    ap.add_argument("--out", default="runs/bench-variants")
    ap.add_argument("--only", action="append", default=[],
                    help="a variant name, repeat for more (names hold commas; default: all)")
    ap.add_argument("--own-prompts", type=int, default=0, metavar="N",
                    help="also score the round's model and each variant greedy on N of the GRPO "
                         "prompts GRPO trains on: does a rising reward mean it got better at them?")
    args = ap.parse_args()

    from thinkwheel.assets import model_path
    from thinkwheel.config import SFTConfig
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.train.evaluate import evaluate, heldout_tasks
    from thinkwheel.train.sft import train_sft
    from thinkwheel.verifiers import verify_frame

    store, out = RunStore(args.run), Path(args.out)
    cfg = load_config(Path(args.run) / "config.yaml")
    rounds = list(range(args.round + 1))
    def curated(r: int, split: str) -> pl.DataFrame:
        return pl.read_parquet(store.round_dir(r) / "curated" / f"{split}.parquet")

    sft = pl.concat([curated(r, "sft") for r in rounds], how="diagonal_relaxed")
    # the settings the round trained with (train.sft.max_steps_growth grows its step cap)
    base, sft_cfg, sp = model_path(), cfg.train.for_round(args.round).sft, cfg.export.system_prompt
    held = heldout_tasks(cfg.eval)

    def train(name: str, data: pl.DataFrame, c: SFTConfig = sft_cfg, start: str = base) -> str:
        model_dir = out / name / "model"
        if not (model_dir / "config.json").exists():
            train_sft(start, data, str(model_dir), c)
        return str(model_dir)

    def control() -> str:
        """The model a second stage (DPO, GRPO) starts from: the round's SFT as run. A
        `strategy: continue` round trained from the last round's model on its own samples,
        which this script's retrain from the base model is not: the flow's own model is."""
        if cfg.train.strategy == "continue":
            return str(store.round_dir(args.round) / "model")
        return train("as-run", sft)

    def sft_variant(
        name: str, data: Callable[[], pl.DataFrame], start: str = base, **over: Any
    ) -> Variant:
        def go() -> dict[str, Any]:
            d = data()
            c = sft_cfg.model_copy(update=over)
            return {"model": train(name, d, c, start), "sft_rows": d.height}
        return go

    def second_stage(name: str, stage: Callable[[str, str], dict]) -> Variant:
        def go() -> dict[str, Any]:
            model_dir = str(out / name / "model")
            info = stage(control(), model_dir) if not Path(model_dir, "config.json").exists() else {}
            return {"model": model_dir, **info}
        return go

    grpo_prompts = curated(args.round, "grpo")
    # every round's GRPO prompts so far when the run accumulates its data (from_base does), as
    # the flow trains on them; the round's own otherwise
    grpo_rounds = rounds if cfg.train.accumulates() else [args.round]
    grpo_all = pl.concat([curated(r, "grpo") for r in grpo_rounds], how="diagonal_relaxed")
    own = None
    if args.own_prompts:  # the task rows behind a fixed sample of the GRPO prompts
        tasks = pl.concat([pl.read_parquet(store.round_dir(r) / "tasks.parquet") for r in grpo_rounds],
                          how="diagonal_relaxed")
        own = tasks.filter(pl.col("task_id").is_in(grpo_all["task_id"].implode())).sample(
            n=min(args.own_prompts, grpo_all.height), seed=0)
    # RL needs little capacity: LoRA at ~10x full fine-tuning's rate (Schulman et al. 2025)
    lora = {"lora": True, "lora_r": 32, "lora_alpha": 64}
    variants: dict[str, Variant] = {
        "as run": sft_variant("as-run", lambda: sft),
        "as run, SFT seed 1": sft_variant("seed-1", lambda: sft, seed=sft_cfg.seed + 1),
        "as run, SFT seed 2": sft_variant("seed-2", lambda: sft, seed=sft_cfg.seed + 2),
        f"{sft_cfg.max_steps // 2} SFT steps": sft_variant(
            "steps-half", lambda: sft, max_steps=sft_cfg.max_steps // 2
        ),
        f"{2 * sft_cfg.max_steps} SFT steps": sft_variant(
            "steps-x2", lambda: sft, max_steps=2 * sft_cfg.max_steps
        ),
        "gold traces of the same tasks": sft_variant(
            "gold", lambda: gold_traces(args.run, rounds, sp)),
        f"gold traces of the same tasks, {2 * sft_cfg.max_steps} SFT steps": sft_variant(
            "gold-x2", lambda: gold_traces(args.run, rounds, sp), max_steps=2 * sft_cfg.max_steps),
        "learning rate x3": sft_variant("lr-x3", lambda: sft, learning_rate=3 * sft_cfg.learning_rate),
        "worked steps stated (step check)": sft_variant("steps-stated", lambda: steps_stated(sft)),
        "tasks solved once, twice": sft_variant(
            "upweight", lambda: upweight_solved_once(sft, clean_rates(args.run, rounds))
        ),
        "families rebalanced (n^0.5)": sft_variant(
            "families", lambda: rebalance(sft, "family", 0.5)
        ),
        "trace shapes rebalanced (n^0.25)": sft_variant(
            "shapes", lambda: rebalance(with_shapes(sft), "shape", 0.25, within="family").drop("shape")
        ),
        # LoRA learns less and forgets less (Biderman et al. 2024): can it train longer on math
        # without costing the code families?
        "LoRA r=32, lr 1e-3": sft_variant(
            "lora", lambda: sft, lora=True, lora_r=32, lora_alpha=64, learning_rate=1e-3
        ),
        f"LoRA r=32, lr 1e-3, {2 * sft_cfg.max_steps} steps": sft_variant(
            "lora-x2", lambda: sft, lora=True, lora_r=32, lora_alpha=64, learning_rate=1e-3,
            max_steps=2 * sft_cfg.max_steps,
        ),
        "+ DPO with NLL, 100 steps": second_stage(
            "dpo", lambda src, dst: dpo(src, dpo_pairs(args.run, rounds, sp), dst, steps=100, lr=1e-4)
        ),
        "+ GRPO, 60 steps, lr 1e-4": second_stage(
            "grpo", lambda src, dst: grpo(src, grpo_prompts, dst, cfg, 1e-4)
        ),
        "+ GRPO, 60 steps, lr 1e-3": second_stage(
            "grpo-lr", lambda src, dst: grpo(src, grpo_prompts, dst, cfg, 1e-3)
        ),
        "+ GRPO LoRA r=32, 150 steps, lr 1e-3": second_stage(
            "grpo-lora", lambda src, dst: grpo(src, grpo_all, dst, cfg, 1e-3, steps=150, **lora)
        ),
        "+ GRPO LoRA r=32, 150 steps, lr 1e-3, GRPO seed 1": second_stage(
            "grpo-lora-s1",
            lambda src, dst: grpo(src, grpo_all, dst, cfg, 1e-3, steps=150, seed=1, **lora),
        ),
        "+ GRPO LoRA r=32, 150 steps, lr 2e-4": second_stage(
            "grpo-lora-lr-low", lambda src, dst: grpo(src, grpo_all, dst, cfg, 2e-4, steps=150, **lora)
        ),
        # sampled at 0.6, not TRL's 1.0: nearer the greedy answers the held-out split scores
        "+ GRPO LoRA r=32, 150 steps, lr 1e-3, temperature 0.6": second_stage(
            "grpo-lora-t06",
            lambda src, dst: grpo(src, grpo_all, dst, cfg, 1e-3, steps=150, temperature=0.6, **lora),
        ),
        "+ GRPO LoRA r=32, 150 steps, lr 2e-3": second_stage(
            "grpo-lora-lr", lambda src, dst: grpo(src, grpo_all, dst, cfg, 2e-3, steps=150, **lora)
        ),
    }
    if args.round > 0:  # strategy: continue starts from the previous round's model
        previous = str(store.round_dir(args.round - 1) / "model")
        variants["continue from the previous round's model"] = sft_variant(
            "continue", lambda: sft, start=previous
        )

        # on a `strategy: continue` run: this round's own samples (what the flow trained on),
        # against the previous round's again, which the model was already trained on: is a
        # continued round's gain its new samples, or only more steps?
        variants["continue on this round's samples"] = sft_variant(
            "continue-own", lambda: curated(args.round, "sft"), start=previous)
        variants["continue on the previous round's samples again"] = sft_variant(
            "continue-again", lambda: curated(args.round - 1, "sft"), start=previous)
    wanted = [v.strip() for v in args.only if v.strip()]
    unknown = [w for w in wanted if w not in variants]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(variants)}")

    def verify_fn(tasks: pl.DataFrame, cands: pl.DataFrame) -> pl.DataFrame:
        return verify_frame(tasks, cands, workers=cfg.verify.workers)

    def greedy(model: str, tasks: pl.DataFrame) -> dict[str, Any]:
        return evaluate(HFEngine(model), tasks, verify_fn, k=1, max_tokens=cfg.eval.max_tokens,
                        seed=cfg.eval.seed, system_prompt=sp)

    def on_own_prompts(model: str, cache: Path, res: dict[str, Any]) -> None:
        if own is None or "own_prompts" in res:
            return
        res["own_prompts"] = {k: greedy(model, own)[k] for k in ("accuracy", "n", "per_family")}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(res, indent=1, default=str))
        print(f"{model}: {res['own_prompts']['accuracy']:.1%} greedy on {own.height} of the "
              "round's GRPO prompts", flush=True)

    control_cache = out / "own-prompts-control.json"
    if own is not None:  # the round's model as the flow left it, before any second stage
        mine = json.loads(control_cache.read_text()) if control_cache.exists() else {}
        on_own_prompts(str(store.round_dir(args.round) / "model"), control_cache, mine)

    results: dict[str, dict[str, Any]] = {}
    for name, go in variants.items():
        if wanted and name not in wanted:
            continue
        cache = out / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
        if cache.exists():
            results[name] = json.loads(cache.read_text())
            on_own_prompts(results[name]["model"], cache, results[name])
            continue
        t0 = time.time()
        info = go()
        res = greedy(info["model"], held)
        results[name] = {**res, **info, "seconds": round(time.time() - t0)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(results[name], indent=1, default=str))
        print(f"{name}: {res['accuracy']:.1%} in {results[name]['seconds']} s", flush=True)
        on_own_prompts(info["model"], cache, results[name])

    flow = store.read_json(f"round-{args.round}/eval.json")
    fams = sorted(flow["per_family"])
    head = f"| family | the flow's round {args.round + 1} | " + " | ".join(results) + " |\n"
    head += "|---|---|" + "---|" * len(results) + "\n"
    cols = [flow, *results.values()]
    rows = [
        f"| {f} | " + " | ".join(f"{c['per_family'][f]['accuracy']:.0%}" for c in cols) + " |"
        for f in fams
    ] + [  # the held-out split's halves (README, "What the held-out split measures")
        f"| {d} families | " + " | ".join(f"{c['per_domain'][d]['accuracy']:.1%}" for c in cols) + " |"
        for d in sorted(flow.get("per_domain", {}))
    ]
    md = head + "\n".join(rows) + "\n| **all** | " + " | ".join(
        f"**{c['accuracy']:.1%}**" for c in cols
    ) + " |\n"
    extra = {k: {i: v[i] for i in ("sft_rows", "pairs", "pair_accuracy", "prompts",
                                    "reward_first_last", "task_reward_first_last", "seconds")
                 if i in v}
             | ({"greedy_on_own_prompts": round(v["own_prompts"]["accuracy"], 3)}
                if "own_prompts" in v else {})
             for k, v in results.items()}
    if own is not None:
        before = json.loads(control_cache.read_text())["own_prompts"]["accuracy"]
        md += f"\nThe round's model, greedy on {own.height} of its GRPO prompts: {before:.1%}.\n"
    md += "\n" + "\n".join(f"- {k}: {json.dumps(v)}" for k, v in extra.items()) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
