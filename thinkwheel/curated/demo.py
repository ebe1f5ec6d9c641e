"""A synthetic flywheel run (all four tables, manifest, evals, training logs) without a model.

Used by the inspect benchmark, the report screenshot and tests: it has the shape of a real
run (math and code tasks from several sources, failed/unverified verdicts, near-duplicates,
a contaminated item, per-task caps, accuracy that rises with the round) at any size.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from thinkwheel import records

_MATH = ["addition", "subtraction", "multiplication", "fraction_addition", "linear_equation"]
_CODE = ["linear_function", "string_transform", "count_char"]
_SOURCES = ["procedural", "procedural", "procedural", "seed", "self_instruct", "evol:deepen"]
_FAIL = ["wrong_answer", "wrong_answer", "no_answer", "test_failed"]


def _task(rng: random.Random, family: str, difficulty: int) -> tuple[str, str, list | None]:
    a, b = rng.randint(10**difficulty, 10 ** (difficulty + 1)), rng.randint(2, 99)
    if family in _CODE:
        return (
            f"Write a Python function `f(x)` for {family} with {a} and {b}.",
            f"def f(x):\n    return {a} * x + {b}",
            [f"assert f(0) == {b}", f"assert f(1) == {a + b}"],
        )
    return f"[{family}] What is {a} + {b}?", str(a + b), None


def demo_run(
    tasks_per_round: int = 40,
    samples: int = 4,
    rounds: int = 2,
    seed: int = 0,
    model: str = "thinkwheel-tiny",
) -> tuple[dict[int, dict[str, pl.DataFrame]], dict[str, Any], dict[int, dict], dict[int, list]]:
    """Return (rounds, manifest, evals, train_logs) shaped like a run directory's contents."""
    rng = random.Random(seed)
    out: dict[int, dict[str, pl.DataFrame]] = {}
    manifest: dict[str, Any] = {"rounds": {}}
    evals: dict[int, dict] = {}
    logs: dict[int, list] = {}
    for k in range(rounds):
        tasks, cands, verdicts, filtered = [], [], [], []
        skill = 0.5 + 0.15 * k
        for i in range(tasks_per_round):
            family = (_MATH + _CODE)[i % 8]
            domain = "code" if family in _CODE else "math"
            difficulty = 1 + i % 3
            src = rng.choice(_SOURCES)
            source = f"procedural:{family}" if src == "procedural" else src
            prompt, ref, tests = _task(rng, family, difficulty)
            tid = records.task_id(domain, prompt, ref)
            tasks.append(
                {
                    "task_id": tid, "round": k, "domain": domain, "family": family,
                    "difficulty": difficulty, "source": source, "prompt": prompt,
                    "reference": ref, "tests": tests, "verifier": domain, "meta": "{}",
                }
            )  # fmt: skip
            p_task = min(0.95, max(0.02, rng.gauss(skill - 0.08 * difficulty, 0.25)))
            kept_here = 0
            for j in range(samples):
                ok = rng.random() < p_task
                unverified = not ok and rng.random() < 0.1
                steps = " ".join(f"step {s}: carry the {rng.randint(0, 9)}." for s in range(3))
                answer = ref if ok else str(rng.randint(0, 999))
                if domain == "code":
                    answer = "```python\n" + (ref if ok else "def f(x):\n    return x") + "\n```"
                text = f"<think>{steps} So the result follows.</think>\n{answer}"
                params = {"temperature": 0.8, "seed": seed}
                cid = records.candidate_id(tid, model, j, params)
                cands.append(
                    {
                        "candidate_id": cid, "task_id": tid, "round": k, "sample_idx": j,
                        "model": model if k == 0 else f"{model}-round{k - 1}",
                        "completion": text, "reasoning": steps + " So the result follows.",
                        "answer": answer, "finish_reason": "stop" if ok else "length",
                        "n_tokens": len(text) // 3, "gen_params": records.dumps(params),
                    }
                )  # fmt: skip
                passed = None if unverified else ok
                reason = "match" if ok else ("timeout" if unverified else rng.choice(_FAIL))
                verdicts.append(
                    {
                        "candidate_id": cid, "task_id": tid, "verifier": domain,
                        "passed": passed, "score": float(ok), "reason": reason,
                        "detail": "{}", "seconds": rng.random() / 50,
                    }
                )  # fmt: skip
                drop, ref_id = None, None
                if not ok:
                    drop = "unverified" if unverified else "failed_verification"
                elif rng.random() < 0.15 and j > 0:
                    drop, ref_id = "dedup:minhash", cands[-2]["candidate_id"]
                elif rng.random() < 0.03:
                    drop, ref_id = "decontam:humaneval", "HumanEval/12"
                elif rng.random() < 0.05:
                    drop = "quality:repetition"
                elif kept_here >= 3:
                    drop = "cap:keep_per_task"
                kept_here += drop is None
                filtered.append(
                    {"candidate_id": cid, "task_id": tid, "drop_reason": drop, "drop_ref": ref_id}
                )
        frames = {
            "tasks": records.frame(tasks, records.TASKS),
            "candidates": records.frame(cands, records.CANDIDATES),
            "verdicts": records.frame(verdicts, records.VERDICTS),
            "filtered": records.frame(filtered, records.FILTERED),
        }
        out[k] = frames
        manifest["rounds"][str(k)] = {
            "stages": {
                name: {"status": "done", "count": df.height, "seconds": round(rng.random(), 3)}
                for name, df in frames.items()
            }
        }
        fams = {f: round(min(1.0, skill + rng.uniform(-0.2, 0.2)), 3) for f in _MATH + _CODE}
        evals[k] = {
            "accuracy": round(sum(fams.values()) / len(fams), 4),
            "per_family": fams,
            "per_domain": {"math": skill + 0.05, "code": skill - 0.05},
            "n": 10 * len(fams),
        }
        loss0 = 2.5 - 0.4 * k
        logs[k] = [
            {"step": s, "loss": round(loss0 * (0.97**s) + rng.uniform(0, 0.05), 4),
             "learning_rate": 1e-3 * (1 - s / 40)}
            for s in range(1, 41)
        ]  # fmt: skip
    return out, manifest, evals, logs
