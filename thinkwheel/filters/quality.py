"""Quality filters for candidates: one drop reason per row from a small fixed vocabulary.

Checks are column expressions or vectorised n-gram counts over the whole batch; only the
per-task answer-leak check loops (once per task, not per candidate).
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from thinkwheel.filters.shingles import ngram_hashes, normalise, token_hashes

MISSING_THINK = "missing_think"
UNCLOSED_THINK = "unclosed_think"
# two <think> or </think> tags, or text before the <think>: the export keeps the text between
# the first <think> and the last </think>, so it would train on stray or nested tags
MALFORMED_THINK = "malformed_think"
EMPTY_ANSWER = "empty_answer"
# stopped before it finished: at the token budget (finish_reason "length"), over the context,
# or by a hosted API's content filter
TRUNCATED = "truncated"
_UNFINISHED = ("length", "context_length", "content_filter")
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
REPETITIVE = "repetitive"
GARBAGE = "garbage"
ANSWER_LEAK = "answer_leak"
FALSE_ARITHMETIC = "false_arithmetic"  # drop_ref = the first false claim, e.g. "7+6=15"
MISSING_STEP = "missing_step"  # drop_ref = the first worked step not stated, e.g. "7+8+1=16"
QUALITY_REASONS = (
    MISSING_THINK,
    UNCLOSED_THINK,
    MALFORMED_THINK,
    TRUNCATED,
    EMPTY_ANSWER,
    TOO_LONG,
    TOO_SHORT,
    REPETITIVE,
    GARBAGE,
    ANSWER_LEAK,
    FALSE_ARITHMETIC,
    MISSING_STEP,
)

# Characters that are neither text, punctuation, math/currency symbols nor printable ASCII:
# control bytes, U+FFFD, private-use, emoji and other pictographs.
_GARBAGE = r"[^\p{L}\p{M}\p{N}\p{P}\p{Sm}\p{Sc}\s\x20-\x7E]"


def repeated_ngram_ratio(texts: pl.Series, n: int = 3) -> np.ndarray:
    """1 - distinct/total word n-grams per text: 0 for varied text, near 1 for loops."""
    tokens, lengths = token_hashes(normalise(texts))
    h, d = ngram_hashes(tokens, lengths, n)
    out = np.zeros(len(texts))
    if h.size:
        stats = (
            pl.DataFrame({"doc": d, "hash": h})
            .group_by("doc")
            .agg(pl.len().alias("total"), pl.col("hash").n_unique().alias("distinct"))
        )
        docs = stats["doc"].to_numpy()
        out[docs] = 1 - stats["distinct"].to_numpy() / stats["total"].to_numpy()
    return out


def garbage_ratio(texts: pl.Series) -> np.ndarray:
    """Share of characters that are not text (control codes, U+FFFD, pictographs)."""
    s = texts.cast(pl.Utf8).fill_null("")
    bad = s.str.count_matches(_GARBAGE).cast(pl.Float64)
    return (bad / s.str.len_chars().cast(pl.Float64).clip(1)).to_numpy()


_NUMBER_REF = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_OPERAND_BEFORE = re.compile(r"[=+\-*/×÷^<>−]\s*$")
_OPERAND_AFTER = re.compile(r"\s*[=+\-*/×÷^<>−]")


def answer_leaks(prompt: str | None, reference: str | None, min_chars: int = 3) -> bool:
    """True when the gold answer appears verbatim in the prompt as a standalone span.

    References shorter than `min_chars` non-space characters are ignored: "5" occurs in many
    honest prompts. Whitespace is collapsed so a reformatted reference solution still counts.
    """
    if not prompt or not reference:
        return False
    ref = " ".join(reference.split())
    if len(ref.replace(" ", "")) < min_chars:
        return False
    text = " ".join(prompt.split())
    pattern = r"(?<![\w.])" + re.escape(ref) + r"(?![\w])"
    if not _NUMBER_REF.fullmatch(ref):
        return re.search(pattern, text) is not None
    # a number that is an operand of the task's own expression (`5x + 44 = -11` with answer
    # -11) is a coincidence, not the answer given away
    return any(not (_OPERAND_BEFORE.search(text, 0, m.start()) or _OPERAND_AFTER.match(text, m.end()))
               for m in re.finditer(pattern, text))


def quality_reasons(
    candidates: pl.DataFrame,
    *,
    require_think: bool = True,
    min_answer_chars: int = 1,
    max_completion_chars: int = 8000,
    min_reasoning_chars: int = 0,
    max_repeat_ngram_ratio: float = 0.5,
    repeat_ngram: int = 3,
    max_garbage_ratio: float = 0.2,
) -> pl.Series:
    """Drop reason per candidate (null = passes), first failing check wins.

    Needs `completion`; uses `reasoning`/`answer` when present (records.split_think output),
    and `finish_reason`: a sample cut at the token budget is no training example even when
    its verifier passed it (a program cut after its last needed line, an unclosed code fence).
    """
    comp = candidates["completion"].cast(pl.Utf8).fill_null("")
    opens = comp.str.count_matches("<think>", literal=True).to_numpy()
    closes = comp.str.count_matches("</think>", literal=True).to_numpy()
    has_open, has_close = opens > 0, closes > 0
    # the rule of the think_format verifier: one of each, the <think> first (or pre-filled)
    starts_open = comp.str.contains(r"^\s*<think>").to_numpy()
    malformed = (opens > 1) | (closes > 1) | ((opens == 1) & has_close & ~starts_open)
    if "answer" in candidates.columns:
        answer = candidates["answer"].cast(pl.Utf8).fill_null("")
    else:
        tail = comp.str.split("</think>").list.last()
        answer = tail.fill_null("")
    if "reasoning" in candidates.columns:
        reasoning = candidates["reasoning"].cast(pl.Utf8).fill_null("")
    else:
        reasoning = pl.Series([""] * len(comp))
    answer_len = answer.str.strip_chars().str.len_chars().to_numpy()
    reasoning_len = reasoning.str.strip_chars().str.len_chars().to_numpy()
    comp_len = comp.str.len_chars().to_numpy()
    cut = (
        candidates["finish_reason"].is_in(_UNFINISHED).fill_null(False).to_numpy()
        if "finish_reason" in candidates.columns
        else np.zeros(len(comp), dtype=bool)
    )
    checks = [
        (require_think & has_open & ~has_close, UNCLOSED_THINK),
        (require_think & ~has_close, MISSING_THINK),
        (malformed, MALFORMED_THINK),
        (cut, TRUNCATED),
        (answer_len < min_answer_chars, EMPTY_ANSWER),
        (comp_len > max_completion_chars, TOO_LONG),
        (has_close & (reasoning_len < min_reasoning_chars), TOO_SHORT),
        (repeated_ngram_ratio(comp, repeat_ngram) > max_repeat_ngram_ratio, REPETITIVE),
        (garbage_ratio(comp) > max_garbage_ratio, GARBAGE),
    ]
    reason = np.full(len(comp), None, dtype=object)
    for mask, name in reversed(checks):  # earlier checks overwrite later ones
        reason[np.asarray(mask, dtype=bool)] = name
    return pl.Series("drop_reason", reason.tolist(), dtype=pl.Utf8)
