"""Text normalisation and vectorised shingle hashing shared by dedup, decontamination and quality.

Tokenising and hashing run in polars (Rust) and the n-gram combination in numpy, so there is
no Python loop per token: this is what makes MinHash and n-gram overlap fast on CPU.
Hashes are stable within one process (polars does not promise stability across versions), so
never persist them; compare only hashes computed in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl

ShingleKind = Literal["word", "char"]

_MASK64 = (1 << 64) - 1
# Operators are content, not punctuation: "What is 83 - 8?" and "What is 83 + 8?" are two
# tasks. Stripping them made task dedup drop half the bench recipe's multiplication tasks
# (and a sixth of subtraction and linear-equation tasks) as "near duplicates" of additions.
_OPERATORS = "+\\-*/=<>^%×÷−≤≥≠"
_OPERATOR = f"[{_OPERATORS}]"
_TYPESET, _PLAIN = ["−", "–", "—", "×", "÷", "·", "∕"], ["-", "-", "-", "*", "/", "*", "/"]
_NON_WORD = f"[^\\p{{L}}\\p{{N}} {_OPERATORS}]+"
_WORD_HYPHEN = r"(\p{L})-(\p{L})"  # "non-negative" is two words, as before, not an operator
_NUMBER = r"\d+(?:[.,]\d+)*"
_NAME = r"\b\p{Lu}\p{Ll}+\b"
# LaTeX spellings of the same operators: benchmarks (MATH, AIME) are typeset, generated tasks
# mostly not, and "6 \times 7" must read as "6 * 7", not "6 times 7". Sizing and spacing
# macros carry no content. Rust regex has no lookahead, so `\b` keeps \le off \left.
_LATEX_NOISE = r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle)\b|\\[,;:! ]"
_LATEX_FRAC = r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"
_LATEX_OPERATORS = [
    (r"\\(?:times|cdot|ast)\b", "*"), (r"\\div\b", "/"), (r"\\leq?\b", "≤"),
    (r"\\geq?\b", "≥"), (r"\\neq?\b", "≠"),
]  # fmt: skip


def _odd_multipliers(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of combined hashes (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def as_series(texts: Sequence[str | None] | pl.Series) -> pl.Series:
    if isinstance(texts, pl.Series):
        return texts.cast(pl.Utf8).fill_null("")
    return pl.Series("text", list(texts), dtype=pl.Utf8).fill_null("")


def normalise(
    texts: Sequence[str | None] | pl.Series, *, mask_numbers: bool = False, mask_names: bool = False
) -> pl.Series:
    """NFKC, lower-case, operators as tokens, other punctuation to single spaces; optionally
    mask numbers and capitalised names.

    Masking lets procedural tasks (same template, new numbers and names) collide: without it
    their Jaccard is ~0.25 and MinHash cannot see them.
    """
    # one spelling per character: full-width digits, ligatures and typeset operators (83 − 8,
    # 6 × 7) read as their plain forms, so a copy typeset differently still collides
    s = as_series(texts).str.normalize("NFKC").str.replace_many(_TYPESET, _PLAIN)
    if s.str.contains("\\", literal=True).any():  # one scan spares plain text five passes
        s = s.str.replace_all(_LATEX_NOISE, " ")
        for _ in range(2):  # \frac{\frac{1}{2}}{3}: the inner one first
            s = s.str.replace_all(_LATEX_FRAC, " ${1} / ${2} ")
        for pattern, plain in _LATEX_OPERATORS:
            s = s.str.replace_all(pattern, f" {plain} ")
    if mask_names:
        s = s.str.replace_all(_NAME, " name ")
    if mask_numbers:
        s = s.str.replace_all(_NUMBER, " 0 ")
    # Two cheap passes beat one `[^\p{L}\p{N}]+`: that pattern matches at every space, and
    # per-match overhead made it ~8x slower than the rest of shingling together.
    s = s.str.to_lowercase().str.replace_all(_NON_WORD, " ")
    for _ in range(2):  # "a-b-c": matches overlap, a second pass gets the rest
        s = s.str.replace_all(_WORD_HYPHEN, "${1} ${2}")
    s = s.str.replace_all(_OPERATOR, " ${0} ")
    return s.str.replace_all("  +", " ").str.strip_chars()


def token_hashes(
    norm: pl.Series, kind: ShingleKind = "word", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 hash per token (word, or utf-8 byte for "char") and token counts per text."""
    if kind == "char":
        lengths = norm.str.len_bytes().to_numpy().astype(np.int64)
        raw = np.frombuffer("".join(norm.to_list()).encode("utf-8"), dtype=np.uint8)
        table = mix64(np.arange(256, dtype=np.uint64) + np.uint64(seed * 256 + 1))
        return table[raw], lengths
    words = norm.str.split(" ")
    lengths = np.where(norm.to_numpy() == "", 0, words.list.len().to_numpy()).astype(np.int64)
    flat = words.explode()
    flat = flat.filter(flat != "")
    return flat.hash(seed=seed).to_numpy(), lengths


def _window_sums(x: np.ndarray, n: int, mult: np.ndarray) -> np.ndarray:
    """y[p] = sum_k x[p+k] * mult[k] for k < n, with mult[k] = base^(k+1), by doubling.

    Windows of 2m tokens are built from two windows of m (shift by m, scale by base^m), so
    a 13-gram costs ~6 vectorised multiply-adds instead of 13. Output is len(x) - n + 1 long.
    """
    block, blen = x * mult[0], 1  # windows of length blen
    result, covered = None, 0
    rest = n
    while rest:
        if rest & 1:
            if result is None:
                result, covered = block, blen
            else:
                shift = block[covered:]
                result = result[: shift.size] + shift * mult[covered - 1]
                covered += blen
        rest >>= 1
        if rest:
            block = block[: block.size - blen] + block[blen:] * mult[blen - 1]
            blen *= 2
    assert result is not None
    return result[: x.size - n + 1]


def ngram_hashes(
    tokens: np.ndarray, lengths: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hash every run of `n` consecutive tokens inside each text: (hashes, text index per hash).

    A text shorter than `n` tokens (but not empty) yields one shingle of all its tokens, so
    short prompts still dedup; an empty text yields none.
    """
    n = max(1, int(n))
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        starts[1:] = np.cumsum(lengths)[:-1]
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    total = int(counts.sum())
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    if total == 0:
        return np.zeros(0, dtype=np.uint64), doc
    first = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(total, dtype=np.int64) - first + starts[doc]
    base = _odd_multipliers(1, seed + 7919)[0]
    mult = np.cumprod(np.full(n, base, dtype=np.uint64))  # base^1 .. base^n (wrapping)
    size = tokens.size
    padded = np.concatenate([tokens.astype(np.uint64, copy=False), np.zeros(n, dtype=np.uint64)])
    full = _window_sums(padded, n, mult)[:size]
    acc = full[pos]
    short = np.flatnonzero(lengths < n)
    short = short[lengths[short] > 0]
    if short.size:  # texts shorter than n: redo their single shingle without the spill-over
        at = np.flatnonzero(np.isin(doc, short))
        acc[at] = 0
        for k in range(n):
            idx = pos[at] + k
            inside = idx < (starts + lengths)[doc[at]]
            acc[at] += np.where(inside, padded[idx] * mult[k], np.uint64(0))
    return mix64(acc), doc


def shingle_hashes(
    texts: Sequence[str | None] | pl.Series,
    *,
    ngram: int = 5,
    kind: ShingleKind = "word",
    mask_numbers: bool = False,
    mask_names: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise, tokenise and n-gram-hash `texts`: (uint64 hashes, text index per hash)."""
    norm = normalise(texts, mask_numbers=mask_numbers, mask_names=mask_names)
    tokens, lengths = token_hashes(norm, kind, seed)
    return ngram_hashes(tokens, lengths, ngram, seed)


def shingle_frame(
    texts: Sequence[str | None] | pl.Series, *, offset: int = 0, unique: bool = True, **kwargs
) -> pl.DataFrame:
    """Shingles as a polars frame (doc, hash): the join-friendly form for overlap counting."""
    h, d = shingle_hashes(texts, **kwargs)
    df = pl.DataFrame({"doc": d + offset, "hash": h})
    return df.unique() if unique else df
