"""ROUGE-L novelty for Self-Instruct: drop a new instruction whose ROUGE-L F1 against any pool
instruction (or any earlier accepted candidate) reaches the threshold (0.7 in the paper).

No O(n^2) Python loop over the pool: ROUGE-L F1 = 2*LCS/(len_a+len_b), and LCS is bounded by
the multiset token overlap, which a sparse matrix product gives for all pairs at once. Only
pairs whose bound reaches the threshold get an exact LCS (bit-parallel, one big-int op per
token). Tokenisation follows rouge_score's default: lower-case alphanumeric runs, no stemming.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, bit-parallel (Hyyrö 2004): O(len(b)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """ROUGE-L F1 between two texts (or token lists)."""
    ta = tokenize(a) if isinstance(a, str) else list(a)
    tb = tokenize(b) if isinstance(b, str) else list(b)
    if not ta or not tb:
        return 0.0
    return 2 * lcs_length(ta, tb) / (len(ta) + len(tb))


def _occurrence_matrix(docs: list[list[str]], vocab: dict[str, int]) -> csr_matrix:
    """Binary features "token#k" (k-th occurrence): a dot product is the multiset overlap."""
    rows, cols = [], []
    for r, toks in enumerate(docs):
        seen: dict[str, int] = {}
        for tok in toks:
            k = seen.get(tok, 0)
            seen[tok] = k + 1
            cols.append(vocab.setdefault(f"{tok}#{k}", len(vocab)))
            rows.append(r)
    data = np.ones(len(cols), dtype=np.int32)
    return csr_matrix((data, (rows, cols)), shape=(len(docs), max(len(vocab), 1)))


def _pairs_over_bound(
    left: csr_matrix, right: csr_matrix, llen: np.ndarray, rlen: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with 2*overlap/(len_i+len_j) >= threshold: the only pairs that can reach it."""
    prod = (left @ right.T).tocoo()
    bound = 2 * prod.data / np.maximum(llen[prod.row] + rlen[prod.col], 1)
    keep = bound >= threshold
    return prod.row[keep], prod.col[keep]


def max_rouge_l(
    candidates: Sequence[str], pool: Sequence[str], threshold: float = 0.7, chunk: int = 512
) -> list[float]:
    """Best ROUGE-L F1 of each candidate against the pool, exact for every value >= threshold
    (values below it are reported as 0.0: they were pruned by the overlap bound)."""
    ctoks, ptoks = [tokenize(c) for c in candidates], [tokenize(p) for p in pool]
    best = np.zeros(len(candidates))
    if not ctoks or not ptoks:
        return best.tolist()
    vocab: dict[str, int] = {}
    pmat = _occurrence_matrix(ptoks, vocab)
    plen = np.array([len(t) for t in ptoks])
    for lo in range(0, len(ctoks), chunk):
        part = ctoks[lo : lo + chunk]
        cmat = _occurrence_matrix(part, vocab)
        width = max(cmat.shape[1], pmat.shape[1])
        cmat.resize((cmat.shape[0], width))
        pm = pmat.copy()
        pm.resize((pm.shape[0], width))
        rows, cols = _pairs_over_bound(cmat, pm, np.array([len(t) for t in part]), plen, threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            score = rouge_l(part[r], ptoks[c])
            best[lo + r] = max(best[lo + r], score)
    return best.tolist()


def novel_mask(candidates: list[str], pool: list[str], threshold: float = 0.7) -> list[bool]:
    """True for candidates to keep: ROUGE-L < threshold against the pool and against every
    earlier kept candidate (Self-Instruct adds each accepted instruction to the pool)."""
    keep = [s < threshold for s in max_rouge_l(candidates, pool, threshold)]
    toks = [tokenize(c) for c in candidates]
    vocab: dict[str, int] = {}
    mat = _occurrence_matrix(toks, vocab)
    lens = np.array([len(t) for t in toks])
    rows, cols = _pairs_over_bound(mat, mat, lens, lens, threshold)
    later = rows > cols  # candidate `rows` comes after candidate `cols`
    for r, c in sorted(zip(rows[later].tolist(), cols[later].tolist(), strict=True)):
        if keep[r] and keep[c] and rouge_l(toks[r], toks[c]) >= threshold:
            keep[r] = False
    return keep
