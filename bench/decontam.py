"""Decontamination benchmark: thinkwheel's coverage rule (+ MinHash fuzzy pass) vs the naive
"any shared n-gram" set lookup (open-r1's 8-gram script, GPT-3's 13-gram rule), same run.

10,000 benchmark items (30-120 words) and 100,000 docs (50-150 words), both template-heavy:
they reuse 300 boilerplate sentences, like real prompts do. 1,000 docs are verbatim leaks
(item inside a wrapper sentence), 1,000 are lightly edited leaks (two word edits:
substitution, insertion or deletion). The rest are clean and drive the false-flag rate.

    python bench/decontam.py
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a script named inspect.py, which would shadow the stdlib module numpy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import time

import numpy as np

N_ITEMS, N_DOCS, N_LEAK = 10_000, 100_000, 1_000
VOCAB, N_BOILER = 30_000, 300


def make_data(seed: int = 0) -> tuple[list[str], list[str], dict[int, int], dict[int, int]]:
    """(items, docs, verbatim doc->item, edited doc->item)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)])
    zipf = 1.0 / (np.arange(VOCAB) + 10.0)
    zipf /= zipf.sum()

    def words(n: int) -> list[str]:
        return vocab[rng.choice(VOCAB, n, p=zipf)].tolist()

    boiler = [words(int(rng.integers(8, 16))) for _ in range(N_BOILER)]

    def text(lo: int, hi: int) -> list[str]:
        out: list[str] = []
        target = int(rng.integers(lo, hi + 1))
        for _ in range(int(rng.integers(1, 3))):
            out += boiler[int(rng.integers(N_BOILER))]
        return out + words(max(5, target - len(out)))

    items = [text(30, 120) for _ in range(N_ITEMS)]
    docs = [text(50, 150) for _ in range(N_DOCS)]
    slots = rng.permutation(N_DOCS)[: 2 * N_LEAK]
    verbatim, edited = {}, {}
    for n, d in enumerate(slots.tolist()):
        item = int(rng.integers(N_ITEMS))
        w = list(items[item])
        if n >= N_LEAK:
            for _ in range(2):
                p, op = int(rng.integers(len(w))), int(rng.integers(3))
                if op == 0:
                    w[p] = f"edit{rng.integers(10**6)}"
                elif op == 1:
                    w.insert(p, f"edit{rng.integers(10**6)}")
                else:
                    del w[p]
            edited[d] = item
        else:
            verbatim[d] = item
        docs[d] = boiler[int(rng.integers(N_BOILER))] + w
    return [" ".join(w) for w in items], [" ".join(w) for w in docs], verbatim, edited


def naive_any_ngram(items: list[str], docs: list[str], n: int) -> tuple[set[int], float]:
    """open-r1 style: a set of every benchmark n-gram, flag a doc sharing any one of them."""
    t = time.perf_counter()
    grams = set()
    for it in items:
        w = it.lower().split()
        grams.update(" ".join(w[i : i + n]) for i in range(len(w) - n + 1))
    flagged = set()
    for d, doc in enumerate(docs):
        w = doc.lower().split()
        if any(" ".join(w[i : i + n]) in grams for i in range(len(w) - n + 1)):
            flagged.add(d)
    return flagged, time.perf_counter() - t


def report(name: str, flagged: set[int], seconds: float, verbatim: dict, edited: dict) -> float:
    clean = N_DOCS - len(verbatim) - len(edited)
    rv = len(flagged & set(verbatim)) / len(verbatim)
    re_ = len(flagged & set(edited)) / len(edited)
    ff = len(flagged - set(verbatim) - set(edited)) / clean
    rate = N_DOCS / seconds
    print(
        f"  {name:<34} {rate:>9,.0f} docs/s  recall verbatim={rv:.3f} edited={re_:.3f}  "
        f"false-flag={ff * 100:.2f}%"
    )
    return rate


def main() -> None:
    from thinkwheel.filters.decontam import build_index, find_contamination

    items, docs, verbatim, edited = make_data()
    print(
        f"{N_DOCS} docs vs {N_ITEMS} items; {len(verbatim)} verbatim + {len(edited)} edited leaks"
    )
    runs = {
        "thinkwheel 13-gram coverage": {"ngram": 13, "fuzzy_threshold": None},
        "thinkwheel 13-gram + MinHash fuzzy": {"ngram": 13, "fuzzy_threshold": 0.5},
        "thinkwheel 8-gram coverage": {"ngram": 8, "fuzzy_threshold": None},
    }
    rates = {}
    for name, kw in runs.items():
        t = time.perf_counter()
        index = build_index({"bench": items}, min_overlap=0.5, **kw)
        built = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        hits = find_contamination(docs, index, workers=2)
        dt, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"  (index built in {built:.1f} s; {N_DOCS / cpu:,.0f} docs per CPU-second)")
        rates[name] = report(name, set(hits["doc"].to_list()), dt, verbatim, edited)
    for n in (8, 13):
        flagged, dt = naive_any_ngram(items, docs, n)
        rates[f"naive {n}"] = report(
            f"naive any shared {n}-gram (open-r1)", flagged, dt, verbatim, edited
        )
    print("(shared 2-core VM: other jobs were running; all rows measured in this run;")
    print(
        " thinkwheel rows exclude the one-off index build, the naive rows include their set build)"
    )
    best = rates["thinkwheel 13-gram + MinHash fuzzy"]
    print(f"ratio vs naive 8-gram (which flags every doc): {best / rates['naive 8']:.2f}x")
    print(
        f"ratio thinkwheel(13-gram + fuzzy)/naive 13-gram docs/s: {best / rates['naive 13']:.2f}x"
    )


if __name__ == "__main__":
    main()
