"""Our math verifier vs Math-Verify on the same pairs. Run: python -P bench/verify_math.py

Workloads: (1) short answers = every pair of tests/data/math_equiv.jsonl, both sides parsed;
(2) RL-style = ~1,000-character <think> completions, 25 golds x 16 samples, gold parsed once.
Each is run single-process (ours: 1 worker process) and with two processes (ours: 2 workers;
Math-Verify: a 2-process spawn pool). Also reports both verifiers' accuracy on the suite.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from pathlib import Path

from thinkwheel.verifiers.math import MathVerifier

SUITE = Path(__file__).resolve().parent.parent / "tests" / "data" / "math_equiv.jsonl"


def _mv_pairs(pairs: list[tuple[str, str]]) -> list[bool]:
    from math_verify import parse, verify

    out = []
    for gold, pred in pairs:
        try:
            out.append(bool(verify(parse(gold), parse(pred))))
        except Exception:
            out.append(False)
    return out


def _mv_rl(groups: list[tuple[str, list[str]]]) -> list[bool]:
    from math_verify import parse, verify

    out = []
    for gold, preds in groups:
        g = parse(gold)
        for p in preds:
            try:
                out.append(bool(verify(g, parse(p))))
            except Exception:
                out.append(False)
    return out


def _split(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


def _timed(fn, *args):  # noqa: ANN001, ANN002, ANN202
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def rl_workload(seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    filler = ("Let me think step by step. First we rewrite the expression and collect the terms. "
              "Then we check the arithmetic carefully, because sign errors are common here. ")
    groups = []
    for _ in range(25):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        gold = f"$\\frac{{{a}}}{{{b}}}$"
        preds = []
        for k in range(16):
            num = a if k % 3 else a + 1
            body = filler * 5
            preds.append(f"<think>{body[:900]}</think>\nSo the answer is $\\boxed{{\\frac{{{num}}}{{{b}}}}}$.")
        groups.append((gold, preds))
    return groups


def main() -> None:
    rows = [json.loads(line) for line in SUITE.read_text().splitlines()]
    default = [r for r in rows if r.get("percent_policy", "fraction") == "fraction"]
    ours1 = MathVerifier(workers=1, timeout_s=5.0)
    ours2 = MathVerifier(workers=2, timeout_s=5.0)
    ours1.verify("</think>1", {"reference": "1"})  # start the pools outside the timings
    ours2.verify("</think>1", {"reference": "1"})

    cands = [f"</think>\\boxed{{{r['candidate']}}}" for r in default]
    tasks = [{"reference": r["reference"]} for r in default]
    mv_in = [(f"\\boxed{{{r['reference']}}}", f"\\boxed{{{r['candidate']}}}") for r in default]
    print(f"short answers: {len(default)} pairs (both sides parsed)")
    ours_v, t_o1 = _timed(ours1.verify_batch, cands, tasks)
    mv_v, t_m1 = _timed(_mv_pairs, mv_in)
    _, t_o2 = _timed(ours2.verify_batch, cands, tasks)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_mv_pairs, [[("1", "1")]] * 2)
        _, t_m2 = _timed(pool.map, _mv_pairs, _split(mv_in, 2))
    n = len(default)
    exp = [r["expected"] for r in default]
    acc_o = sum(v.passed is e for v, e in zip(ours_v, exp, strict=True)) / n
    acc_m = sum(v == e for v, e in zip(mv_v, exp, strict=True)) / n
    print(f"  accuracy on the labelled suite: ours {acc_o:.1%}  math-verify {acc_m:.1%}")
    print(f"  1 process : ours {n / t_o1:8.1f} pairs/s  math-verify {n / t_m1:8.1f}  ratio {t_m1 / t_o1:.1f}x")
    print(f"  2 process : ours {n / t_o2:8.1f} pairs/s  math-verify {n / t_m2:8.1f}  ratio {t_m2 / t_o2:.1f}x")

    groups = rl_workload()
    rl_c = [p for _, preds in groups for p in preds]
    rl_t = [{"reference": g.strip("$")} for g, preds in groups for _ in preds]
    m = len(rl_c)
    print(f"RL-style: {m} completions of ~1,000 chars, gold parsed once")
    _, r_o1 = _timed(ours1.verify_batch, rl_c, rl_t)
    _, r_m1 = _timed(_mv_rl, groups)
    _, r_o2 = _timed(ours2.verify_batch, rl_c, rl_t)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_mv_pairs, [[("1", "1")]] * 2)
        _, r_m2 = _timed(pool.map, _mv_rl, _split(groups, 2))
    print(f"  1 process : ours {m / r_o1:8.1f} /s  math-verify {m / r_m1:8.1f}  ratio {r_m1 / r_o1:.1f}x")
    print(f"  2 process : ours {m / r_o2:8.1f} /s  math-verify {m / r_m2:8.1f}  ratio {r_m2 / r_o2:.1f}x")


if __name__ == "__main__":
    main()
