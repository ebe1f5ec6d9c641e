"""Does re-sampling from the step where a trace went wrong rescue tasks the model failed?

    python -P bench/step_resample.py [--run runs/bench-flywheel/verified] [--round 1] [--n 4] [--tasks 60]

Takes a finished `bench/flywheel.py` run. For each of the first `--tasks` addition,
subtraction and multiplication tasks of round `--round` that none of its samples solved cleanly,
it cuts the first sample's reasoning before the clause holding its first false claim
(`filters.arithmetic.false_claims`), and lets the model that sampled the round (the previous
round's) continue from there `--n` times at the sampling temperature. It prints the tasks
rescued (a right answer with no false step) per 100 samples spent: a tree-search style lever
(branch where the error is) to set against the whole-trace figures in the README (fresh tasks at
2 samples each, or more samples of a failed task).
"""

from __future__ import annotations

import argparse
import os

import polars as pl

FAMILIES = ["addition", "subtraction", "multiplication"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench-flywheel/verified")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--n", type=int, default=4, help="continuations per failed task")
    ap.add_argument("--tasks", type=int, default=60, help="failed tasks per family")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkwheel import records
    from thinkwheel.config import load_config
    from thinkwheel.filters.arithmetic import _CLAUSE, false_claims
    from thinkwheel.verifiers import verify_frame

    cfg = load_config(os.path.join(args.run, "config.yaml"))
    rd = os.path.join(args.run, f"round-{args.round}")
    tasks = pl.read_parquet(os.path.join(rd, "tasks.parquet"))
    verdicts = pl.read_parquet(os.path.join(rd, "verdicts.parquet")).select("candidate_id", "passed")
    false = pl.col("reasoning").map_elements(lambda r: bool(false_claims(r)), return_dtype=pl.Boolean)
    c = (pl.read_parquet(os.path.join(rd, "candidates.parquet"))
         .join(verdicts, on="candidate_id").join(tasks.select("task_id", "family"), on="task_id")
         .with_columns(false.alias("false")))
    c = c.with_columns((pl.col("passed").fill_null(False) & ~pl.col("false")).alias("clean"))
    solved = c.group_by("task_id").agg(pl.col("clean").any().alias("solved"))
    failed = c.join(solved, on="task_id").filter(
        ~pl.col("solved") & pl.col("false") & (pl.col("sample_idx") == 0))
    failed = pl.concat([failed.filter(pl.col("family") == f).head(args.tasks) for f in FAMILIES])

    def prefix(reasoning: str) -> str:
        """The reasoning up to the clause that states the first false claim."""
        cuts = list(_CLAUSE.finditer(reasoning))
        starts, ends = [0] + [m.end() for m in cuts], [m.start() for m in cuts] + [len(reasoning)]
        for s, e in zip(starts, ends, strict=True):
            if false_claims(reasoning[s:e]):
                return reasoning[:s]
        return reasoning

    model_dir = os.path.join(args.run, f"round-{args.round - 1}", "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts, meta = [], []
    by_id = {r["task_id"]: r for r in tasks.select("task_id", "prompt").to_dicts()}
    for r in failed.iter_rows(named=True):
        msgs = [{"role": "system", "content": cfg.export.system_prompt},
                {"role": "user", "content": by_id[r["task_id"]]["prompt"]}]
        head = "<think>" + prefix(r["reasoning"])
        prompts.append(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + head)
        meta.append((r["task_id"], r["family"], head))
    torch.manual_seed(cfg.sampling.seed)
    rows = []
    for i in range(0, len(prompts), 32):
        enc = tok(prompts[i:i + 32], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=cfg.sampling.temperature,
                                 max_new_tokens=cfg.sampling.max_tokens, num_return_sequences=args.n,
                                 pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, text in enumerate(texts):
            task_id, family, head = meta[i + j // args.n]
            reasoning, answer = records.split_think(head + text)
            rows.append({"candidate_id": f"{task_id}-{i + j}", "task_id": task_id, "family": family,
                         "completion": head + text, "reasoning": reasoning, "answer": answer})
    cands = pl.DataFrame(rows)
    mine = tasks.filter(pl.col("task_id").is_in(cands["task_id"].unique().implode()))
    v = verify_frame(mine, cands.drop("family"), workers=cfg.verify.workers)
    cands = cands.join(v.select("candidate_id", "passed"), on="candidate_id").with_columns(
        (pl.col("passed").fill_null(False) & ~false).alias("clean"))
    print(f"round {args.round}: {len(prompts)} failed tasks, {args.n} continuations each from the "
          f"step before the first false claim ({sum(not m[2][7:] for m in meta)} of them at the "
          "first step: a whole re-sample)")
    for family in FAMILIES:
        f = cands.filter(pl.col("family") == family)
        if f.height:
            rescued = f.group_by("task_id").agg(pl.col("clean").any())["clean"].sum()
            print(f"{family}: {f['task_id'].n_unique()} tasks, {f.height} samples, {rescued} rescued"
                  f" = {100 * rescued / f.height:.1f} per 100 samples")


if __name__ == "__main__":
    main()
