"""Pre-train the bundled model from scratch on CPU: `thinkwheel pretrain` (or `python -m thinkwheel.pretrain`).

No hub is reachable, so the default run needs a model we make ourselves. This script reads
top to bottom: corpus -> tokenizer -> model -> training loop -> save. The corpus is procedural
tasks with worked `<think>` traces plus the two meta-tasks the LLM generators use ("write a new
task like these examples" for Self-Instruct, "rewrite this task to be harder" for
Evol-Instruct). The model is deliberately small and briefly trained, so that it is imperfect
and the flywheel has something to improve. The eval split's prompts are excluded.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
from rich import print as log
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from thinkwheel.config import BUNDLED_HELD_OUT, EvalConfig, ExportConfig
from thinkwheel.generators import procedural

TEMPLATES = Path(__file__).parent / "generators" / "templates"
SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]
# Qwen-style ChatML; {% generation %} marks the assistant tokens so TRL can mask the rest.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HELD_OUT_PER_FAMILY = BUNDLED_HELD_OUT  # the eval split may use up to this many per family
EVOL_OPS = ["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input"]


# ---------------------------------------------------------------- corpus
def solve_example(rng: random.Random, excluded: set[str]) -> tuple[str, str]:
    family = rng.choice(list(procedural.FAMILIES))
    difficulty = rng.choices([1, 2, 3], weights=[5, 3, 2])[0]
    while True:  # small families at difficulty 1 are mostly outside the held-out split
        p = procedural.make_problem(family, difficulty, rng.randrange(10**9), 0)
        if p.prompt not in excluded:
            return p.prompt, f"<think>{p.trace}</think>\n{p.answer}"


def self_instruct_example(rng: random.Random) -> tuple[str, str]:
    """k example tasks mostly from one family; the target is a fresh task of that family."""
    main = rng.choice(list(procedural.FAMILIES))
    domain_fams = list(procedural.MATH if main in procedural.MATH else procedural.CODE)
    k = rng.randint(3, 8)
    fams = [main if rng.random() < 0.7 else rng.choice(domain_fams) for _ in range(k)]
    d = rng.choice([1, 2])
    shown = [procedural.make_problem(f, d, rng.randrange(10**9), 0).prompt for f in fams]
    examples = "\n".join(f"Task {i + 1}: {t}" for i, t in enumerate(shown))
    new = procedural.make_problem(main, d, rng.randrange(10**9), 0).prompt
    user = (TEMPLATES / "self_instruct.txt").read_text().format(examples=examples)
    return user, f"<think>another {main.replace('_', ' ')} task</think>\n{new}"


def evol_example(rng: random.Random) -> tuple[str, str]:
    """In-depth: the same family one difficulty up. In-breadth: a sibling family."""
    family = rng.choice(list(procedural.FAMILIES))
    d = rng.choice([1, 2, 3])
    parent = procedural.make_problem(family, d, rng.randrange(10**9), 0).prompt
    if rng.random() < 0.8:
        op = rng.choice(EVOL_OPS)
        child = procedural.make_problem(family, d + 1, rng.randrange(10**9), 0).prompt
        user = (TEMPLATES / "evol_in_depth.txt").read_text().format(operator=op, task=parent)
        return user, f"<think>{op.replace('_', ' ')}: bigger numbers</think>\n{child}"
    fams = list(procedural.MATH if family in procedural.MATH else procedural.CODE)
    other = rng.choice([f for f in fams if f != family])
    child = procedural.make_problem(other, d, rng.randrange(10**9), 0).prompt
    user = (TEMPLATES / "evol_in_breadth.txt").read_text().format(task=parent)
    return user, f"<think>same domain, {other.replace('_', ' ')}</think>\n{child}"


def build_corpus(n: int, seed: int, excluded: set[str]) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    system = ExportConfig().system_prompt
    convs = []
    for _ in range(n):
        r = rng.random()
        if r < 0.8:
            user, assistant = solve_example(rng, excluded)
        elif r < 0.9:
            user, assistant = self_instruct_example(rng)
        else:
            user, assistant = evol_example(rng)
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if rng.random() < 0.7:  # mostly with our system prompt; robust without it
            msgs.insert(0, {"role": "system", "content": system})
        convs.append(msgs)
    return convs


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (lossless on code indentation) with one token per digit (for arithmetic)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=1024,
    )


# ---------------------------------------------------------------- model
def make_model(vocab_size: int, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 16 * 16,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


# ---------------------------------------------------------------- training
def encode(tokenizer: PreTrainedTokenizerFast, conv: list[dict[str, str]]) -> tuple[list, list]:
    """Token ids and labels: loss on the assistant turn only (prompt tokens are -100).

    Prompts are random numbers and names the model cannot predict; spending the gradient on
    them slowed learning to solve in our runs.
    """
    enc = tokenizer.apply_chat_template(
        conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    labels = [t if m else -100 for t, m in zip(ids, enc["assistant_masks"], strict=True)]
    return ids, labels


def pad_batch(encoded: list[tuple[list, list]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """One conversation per row, right-padded. No packing: a packed neighbour's numbers in the
    context made copying the prompt's numbers harder to learn."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (i, lab) in enumerate(encoded):
        ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(i)] = 1
    return ids, labels, mask


def train(
    out: Path = Path(__file__).parent / "assets" / "model",
    examples: int = 40_000,
    steps: int = 1000,
    batch: int = 32,
    block: int = 320,  # max tokens per conversation (longer ones are cut)
    hidden: int = 192,
    layers: int = 4,
    vocab: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 0,
    save_every: int = 0,
    stop_at: int = 0,
) -> dict:
    """Defaults are the bundled model's recipe; `thinkwheel pretrain` regenerates it."""
    t0 = time.time()
    if threads:
        torch.set_num_threads(threads)
    ev = EvalConfig()
    held_out = procedural.generate_tasks(per_family=HELD_OUT_PER_FAMILY, difficulty=ev.difficulty, seed=ev.seed)
    excluded = set(held_out["prompt"].to_list())
    convs = build_corpus(examples, seed, excluded)
    roles = [f"{r}\n" for r in ("system", "user", "assistant")] * 1000
    tokenizer = train_tokenizer([m["content"] for c in convs[:20000] for m in c] + roles, vocab)
    encoded = [encode(tokenizer, c) for c in convs]
    n_tok = sum(len(e[0]) for e in encoded)
    log(f"corpus: {len(encoded)} conversations, {n_tok} tokens ({time.time() - t0:.0f}s)")

    model = make_model(len(tokenizer), hidden, layers, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters")
    encoded = [(i[:block], lab[:block]) for i, lab in encoded]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )
    rng = random.Random(seed)
    model.train()
    for step in range(stop_at or steps):  # stop_at: end early on the same LR schedule
        ids, labels, mask = pad_batch(rng.sample(encoded, batch), tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == (stop_at or steps) - 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
        if save_every and step and step % save_every == 0:  # a crash loses one interval
            save(model, tokenizer, Path(str(out) + f".step{step}"), {"step": step})
            model.train()

    info = {
        "parameters": n_params,
        "examples": examples,
        "steps": steps,
        "stop_at": stop_at or steps,
        "batch": batch,
        "block": block,
        "seed": seed,
        "final_loss": round(loss.item(), 4),
        "seconds": round(time.time() - t0, 1),
    }
    save(model, tokenizer, Path(out), info)
    return info


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, info: dict) -> None:
    """Atomic: write beside, then swap in, so a killed run never leaves half a model."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretrain.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


if __name__ == "__main__":
    import typer

    typer.run(train)
