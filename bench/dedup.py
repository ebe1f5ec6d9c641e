"""Near-dedup benchmark: thinkwheel's bulk MinHash vs naive datasketch, same data, same run.

100,000 docs of 50-150 words; 5,000 planted near-duplicate pairs whose true 5-gram Jaccard
spreads from ~0.3 to 1.0 (computed exactly with Python sets). Both sides use 5-word shingles,
128 permutations and threshold 0.7. Each side runs in its own spawned process so its peak
memory (ru_maxrss) is its own. The peer is datasketch as most pipelines use it
(distilabel's MinHash step): `MinHash.update` per shingle, `MinHashLSH.insert` + `query`.

    python bench/dedup.py            # add --peer-docs 20000 to time the peer on a prefix
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a script named inspect.py, which would shadow the stdlib module numpy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

N_DOCS = 100_000
N_PLANTED = 5_000
VOCAB = 50_000
NGRAM, NUM_PERM, THRESHOLD = 5, 128, 0.7


def make_docs(seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Random docs plus planted pairs (base, variant) with 1 to len/8 word substitutions."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)])
    lengths = rng.integers(50, 151, N_DOCS)
    ids = rng.integers(0, VOCAB, lengths.sum())
    bounds = np.r_[0, np.cumsum(lengths)]
    words = [vocab[ids[bounds[i] : bounds[i + 1]]].tolist() for i in range(N_DOCS)]
    slots = rng.permutation(N_DOCS)[: 2 * N_PLANTED].reshape(-1, 2)
    planted = []
    for base, var in slots.tolist():
        w = list(words[base])
        k = int(rng.integers(1, 1 + len(w) // 8))
        for p in rng.choice(len(w), min(k, len(w)), replace=False):
            w[p] = f"x{rng.integers(10**9)}"
        words[var] = w
        planted.append((min(base, var), max(base, var)))
    return [" ".join(w) for w in words], planted


def true_jaccard(a: str, b: str) -> float:
    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.split()
        return {tuple(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / max(1, len(ga | gb))


def run_ours(limit: int, q: mp.Queue) -> None:
    from thinkwheel.filters.minhash import MinHashParams, near_duplicate_pairs

    docs, _ = make_docs()
    docs = docs[:limit]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    pairs = near_duplicate_pairs(
        docs, threshold=THRESHOLD, params=MinHashParams(num_perm=NUM_PERM, ngram=NGRAM)
    )
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = list(zip(pairs["i"].to_list(), pairs["j"].to_list(), strict=True))
    q.put({"seconds": dt, "pairs": found, "peak_mb": peak / 1024, "base_mb": base / 1024})


def run_peer(limit: int, q: mp.Queue) -> None:
    from datasketch import MinHash, MinHashLSH

    docs, _ = make_docs()
    docs = docs[:limit]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    sigs = []
    for i, text in enumerate(docs):
        w = text.lower().split()
        m = MinHash(num_perm=NUM_PERM)
        for k in range(max(1, len(w) - NGRAM + 1)):
            m.update(" ".join(w[k : k + NGRAM]).encode("utf-8"))
        lsh.insert(i, m)
        sigs.append(m)
    found = set()
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j != i:
                found.add((min(i, j), max(i, j)))
    dt = time.perf_counter() - t
    confirmed = [p for p in found if sigs[p[0]].jaccard(sigs[p[1]]) >= THRESHOLD]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put(
        {
            "seconds": dt,
            "pairs": sorted(found),
            "confirmed": confirmed,
            "peak_mb": peak / 1024,
            "base_mb": base / 1024,
        }
    )


def in_child(target, limit: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(limit, q))
    p.start()
    out = q.get()
    p.join()
    return out


def score(
    name: str, pairs: list[tuple[int, int]], docs: list[str], truth: dict, limit: int
) -> None:
    found = set(pairs)
    buckets = []
    for lo, hi in ((THRESHOLD, 0.8), (0.8, 0.9), (0.9, 1.01)):
        pos = {p for p, j in truth.items() if lo <= j < hi and p[1] < limit}
        buckets.append(f"{lo:.1f}-{min(hi, 1):.1f}: {len(pos & found) / max(1, len(pos)):.3f}")
    pos = {p for p, j in truth.items() if j >= THRESHOLD and p[1] < limit}
    recall = len(pos & found) / max(1, len(pos))
    good = sum(true_jaccard(docs[i], docs[j]) >= THRESHOLD for i, j in found)
    precision = good / max(1, len(found))
    print(f"  {name:<28} pairs={len(found):>6}  recall={recall:.4f}  precision={precision:.4f}")
    print(f"  {'':<28} recall by true J: {', '.join(buckets)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peer-docs", type=int, default=N_DOCS, help="docs the peer runs on")
    args = ap.parse_args()
    docs, planted = make_docs()
    truth = {p: true_jaccard(docs[p[0]], docs[p[1]]) for p in planted}
    positives = {p for p, j in truth.items() if j >= THRESHOLD}
    js = np.array(list(truth.values()))
    print(
        f"{N_DOCS} docs, {len(planted)} planted pairs (true J {js.min():.2f}-{js.max():.2f}), "
        f"{len(positives)} at J >= {THRESHOLD}; {NGRAM}-word shingles, {NUM_PERM} perms"
    )
    ours = in_child(run_ours, N_DOCS)
    peer = in_child(run_peer, args.peer_docs)
    o_rate, p_rate = N_DOCS / ours["seconds"], args.peer_docs / peer["seconds"]
    print(
        f"thinkwheel: {ours['seconds']:.1f} s, {o_rate:,.0f} docs/s, peak RSS {ours['peak_mb']:.0f} MB "
        f"(data alone {ours['base_mb']:.0f} MB)"
    )
    score("thinkwheel (exact confirm)", ours["pairs"], docs, truth, N_DOCS)
    print(
        f"datasketch on {args.peer_docs} docs: {peer['seconds']:.1f} s, {p_rate:,.0f} docs/s, "
        f"peak RSS {peer['peak_mb']:.0f} MB (data alone {peer['base_mb']:.0f} MB)"
    )
    score("datasketch LSH candidates", peer["pairs"], docs, truth, args.peer_docs)
    score("datasketch + est. J >= t", peer["confirmed"], docs, truth, args.peer_docs)
    print("(shared 2-core VM: other jobs were running; both sides measured in this run)")
    print(f"ratio thinkwheel/datasketch docs/s: {o_rate / p_rate:.1f}x")


if __name__ == "__main__":
    main()
