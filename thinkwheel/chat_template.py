"""What a model's chat template does to a `<think>` conversation, found by rendering probes.

Templates differ in ways that silently change what a trainer learns. DeepSeek-R1-Distill's
keeps only the text after `</think>` in assistant turns, so SFT through it teaches answers
without their reasoning. Some pre-fill `<think>` after the assistant header, so the model's
own text starts inside the thought. Few mark the assistant turn with `{% generation %}`.
SFT and GRPO ask these questions once per tokenizer and train on the tokens the engine sees.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_THOUGHT, _ANSWER = "probe-thought-7319", "probe-answer-4261"
_PROBE_REPLY = f"{THINK_OPEN}{_THOUGHT}{THINK_CLOSE}\n{_ANSWER}"


def has_generation_markers(tokenizer: Any) -> bool:
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):
        template = template.get("default", "")
    return GENERATION_TAG.search(template) is not None


def continues(messages: Sequence[Mapping[str, str]]) -> bool:
    """A request ending in an assistant turn asks the engine to go on with that turn (vLLM's and
    transformers' `continue_final_message`): the reply is only the text written after it."""
    return bool(messages) and messages[-1].get("role") == "assistant"


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], prefill: str | None = None) -> str:
    """The prompt text the transformers engine generates from: the chat template with the
    generation prompt, or, for a base model without one, the turns' text one per line.

    A final assistant turn is continued: it follows the generation prompt as the model wrote it,
    less the pre-fill (`prefill`, found when not given) the template already put there."""
    if continues(messages):
        prompt = render_prompt(tokenizer, messages[:-1])
        head = messages[-1]["content"]
        prefill = generation_prefill(tokenizer) if prefill is None else prefill
        return prompt + (head[len(prefill):] if prefill and head.startswith(prefill) else head)
    if not tokenizer.chat_template:
        return "\n".join(m["content"] for m in messages) + "\n"
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generation_prefill(tokenizer: Any) -> str:
    """What the template writes after the assistant header, when that opens `<think>`.

    Returns e.g. "<think>\\n" for a template that pre-fills the think block, else "".
    """
    try:
        text = render_prompt(tokenizer, [{"role": "user", "content": "x"}])
    except Exception:  # a template that can't render a bare user turn has no pre-fill we can see
        return ""
    at = text.rfind(THINK_OPEN)
    if at == -1 or text[at + len(THINK_OPEN) :].strip():
        return ""
    return text[at:]


def _rendered_reply(tokenizer: Any) -> str | None:
    probe = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": _PROBE_REPLY},
    ]
    try:
        return tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return None


def renders_reply_as_written(tokenizer: Any) -> bool:
    """False when rendering a finished assistant turn changes its text: drops the `<think>` block
    (DeepSeek-R1-Distill's) or re-spaces it (Qwen3's writes `<think>\n…\n</think>\n\n`).
    Trained through such a template, SFT and DPO learn text the model is never sampled to write."""
    text = _rendered_reply(tokenizer)
    return text is None or _PROBE_REPLY in text


def end_of_turn(tokenizer: Any) -> str:
    """What the template writes after an assistant turn's text (e.g. "<|im_end|>\\n"): what the
    model must learn to emit to stop. Falls back to the tokenizer's eos token."""
    text = _rendered_reply(tokenizer)
    at = -1 if text is None else text.rfind(_ANSWER)
    tail = text[at + len(_ANSWER) :] if text is not None and at >= 0 else ""
    return tail or (tokenizer.eos_token or "")


def stop_token_id(tokenizer: Any) -> int | None:
    """The token that closes an assistant turn ("<|im_end|>", "<|eot_id|>"), when the template
    ends turns with a special or added token; else None."""
    eot = end_of_turn(tokenizer).strip()
    ids = tokenizer(eot, add_special_tokens=False)["input_ids"] if eot else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return ids[0] if ids and ids[0] in special else None


def stop_text(tokenizer: Any) -> str:
    """The end of turn cut just after the eos token it contains ("<|im_end|>\\n" -> "<|im_end|>"):
    for trainers that append eos to a text completion unless it already ends with one."""
    eot, eos = end_of_turn(tokenizer), tokenizer.eos_token or ""
    at = eot.find(eos) if eos else -1
    return eot[: at + len(eos)] if at >= 0 else eot


def self_added_bos(tokenizer: Any) -> str:
    """The bos text a tokenizer inserts on its own when encoding text; "" if it adds none. A
    rendered prompt that starts with it must lose it before such encoding, or it gets two."""
    bos_id = tokenizer.bos_token_id
    ids = tokenizer("x")["input_ids"]
    return tokenizer.bos_token if bos_id is not None and ids[:1] == [bos_id] else ""


def special_ids(tokenizer: Any) -> set[int]:
    """Every id a decoder skips as special: the named special tokens and the added tokens marked
    special in the tokenizer itself (`tokenizer.json`'s `"special": true`, which
    `all_special_ids` does not list: the bundled tokenizer's `<|im_start|>`)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return ids | {int(i) for i, tok in added.items() if getattr(tok, "special", False)}


def special_think_ids(tokenizer: Any) -> set[int]:
    """The ids of `<think>` / `</think>` when the tokenizer marks them special (a common way to
    add them), which every decoder that skips special tokens (ours, TRL's, vLLM's) drops: the
    samples then lose their tags and fail the format check. Empty when they are plain text."""
    try:
        special = special_ids(tokenizer)
        ids = {tokenizer.convert_tokens_to_ids(t) for t in (THINK_OPEN, THINK_CLOSE)}
    except Exception:
        return set()
    return {i for i in ids if isinstance(i, int) and i in special and i != tokenizer.unk_token_id}


def decode_text(tokenizer: Any, ids: list[int], keep: Collection[int] = ()) -> str:
    """`ids` as text without special tokens, except those in `keep` (`special_think_ids`)."""
    if not keep:
        return tokenizer.decode(ids, skip_special_tokens=True)
    drop = special_ids(tokenizer) - set(keep)
    return tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)


def prefilled_text(generated: str, prefill: str) -> str:
    """The assistant turn as a reader sees it: what the template pre-filled (`<think>\\n`), then
    what the model generated. Engines return only the generated part; without the pre-fill a
    thought cut off by the budget read as an answer (a draft "\\boxed{68}" in it passed)."""
    if not prefill or generated.lstrip().startswith(THINK_OPEN):
        return generated
    return prefill + generated


def completion_text(content: str, prefill: str) -> str:
    """The assistant text the model itself writes: without what the template already pre-filled."""
    if not prefill or not content.lstrip().startswith(THINK_OPEN):
        return content
    body = content.lstrip()[len(THINK_OPEN) :]
    rest = prefill[len(THINK_OPEN) :]
    return body[len(rest) :] if rest and body.startswith(rest) else body


def inference_tokens(
    tokenizer: Any, messages: list[dict[str, str]], *, prefill: str, eot: str
) -> dict[str, list[int]]:
    """`input_ids` and `labels` (-100 over the prompt) for a conversation, as the engine sees it.

    The prompt (every turn before the last assistant turn) is rendered with the generation
    prompt, exactly as at sampling time; the completion is the last assistant turn as the model
    writes it (`prefill` from `generation_prefill`), then the end of turn (`eot`, from
    `end_of_turn`). Prompt and completion are tokenized apart, as
    generation does. Nothing depends on how the template renders a finished assistant turn,
    so a template that strips reasoning or pre-fills `<think>` cannot change what is trained.
    Labels rather than a completion mask: TRL takes them as they are, and so does Unsloth,
    whose trainer skips TRL's mask handling for a tokenized set.
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last <= 0:
        raise ValueError("each conversation needs an assistant turn after the prompt")
    prompt = render_prompt(tokenizer, messages[:last])
    reply = completion_text(messages[last]["content"], prefill)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply + eot, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + reply_ids, "labels": [-100] * len(prompt_ids) + reply_ids}
