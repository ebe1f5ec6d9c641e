"""Does STaR's rationalization (the answer given as a hint) rescue the tasks the model fails?

    python -P bench/rationalize.py [--model DIR] [--tasks 120] [--n 4]

STaR (Zelikman et al. 2022) re-asks a failed problem with its answer as a hint and trains on
the rationales that reach it, the hint removed: aimed at this flywheel's gap, where the model's
own verified traces under-cover carries and borrows (`bench/trace_coverage.py`). For `--tasks`
level-1 addition tasks with a units carry and subtraction tasks with a borrow, it samples `--n`
completions per task with the plain prompt and with the hint after or before it, and prints the
tasks solved cleanly (the right answer, no false arithmetic step) and the clean samples per
prompt. A fourth arm asks the plain question after two worked examples of the same kind (earlier
chat turns in the model's own trace format): sampling under demonstrations and training without
them would be context distillation. The model (the bundled one by default) runs on CPU with the
run's sampling settings.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from thinkwheel import records  # noqa: E402
from thinkwheel.assets import model_path as bundled_model_path  # noqa: E402
from thinkwheel.config import ExportConfig, SamplingConfig  # noqa: E402
from thinkwheel.engines.base import SamplingParams  # noqa: E402
from thinkwheel.engines.hf import HFEngine  # noqa: E402
from thinkwheel.filters.arithmetic import false_claims  # noqa: E402
from thinkwheel.generators import procedural  # noqa: E402

PROMPTS = {
    "plain": lambda p: p.prompt,
    "hint after": lambda p: f"{p.prompt} The answer is {p.answer}.",
    "hint before": lambda p: f"The answer is {p.answer}. {p.prompt}",
    "2 examples": lambda p: p.prompt,
}


def hard(family: str, prompt: str) -> bool:
    """A units carry (addition) or a borrow (subtraction), what the traces under-cover."""
    a, b = (int(x) for x in prompt.removeprefix("What is ").rstrip("?").replace("-", "+").split("+"))
    return a % 10 + b % 10 >= 10 if family == "addition" else a >= b and a % 10 < b % 10


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--tasks", type=int, default=120, help="hard tasks per family")
    ap.add_argument("--n", type=int, default=4, help="samples per task and prompt")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine = HFEngine(args.model or str(bundled_model_path()))
    s = SamplingConfig()
    params = SamplingParams(n=args.n, temperature=s.temperature, max_tokens=s.max_tokens, seed=0)
    system = ExportConfig().system_prompt
    rng = random.Random(7)
    print(f"{engine.model_name}: {args.n} samples per task at temperature {s.temperature}")
    for family in ("addition", "subtraction"):
        problems = []
        while len(problems) < args.tasks + 2:
            p = procedural.make_problem(family, 1, rng.randrange(10**9), 0)
            if hard(family, p.prompt):
                problems.append(p)
        problems, demos = problems[:-2], problems[-2:]
        shots = [turn for d in demos for turn in (
            {"role": "user", "content": d.prompt},
            {"role": "assistant", "content": f"<think>{d.trace}</think>\n{d.answer}"})]
        for name, ask in PROMPTS.items():
            before = shots if name == "2 examples" else []
            requests = [[{"role": "system", "content": system}, *before,
                         {"role": "user", "content": ask(p)}] for p in problems]
            outs = engine.generate(requests, params)
            solved = clean = 0
            for p, samples in zip(problems, outs, strict=True):
                ok = []
                for c in samples:
                    reasoning, answer = records.split_think(c.text)
                    ok.append((answer or "").strip() == p.answer and not false_claims(reasoning or ""))
                solved += any(ok)
                clean += sum(ok)
            print(f"{family:<12} {name:<12} tasks solved {solved:>3}/{len(problems)}   "
                  f"clean samples {clean:>3}/{len(problems) * args.n}")


if __name__ == "__main__":
    main()
