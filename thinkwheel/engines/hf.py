"""The transformers engine: batched `model.generate` on CPU (or any torch device).

Sampling is reproducible per sequence: each (seed, request content, sample index) gets its own
random stream, drawn with a counter-based hash of the decode step, so a completion does not
depend on batch size, request order or what else is in the call. This is what lets a crashed
shard be re-run and produce the same candidates. (Floating-point differences between padded
batch shapes can in rare near-tie cases still flip a token; that is the only caveat.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thinkwheel.chat_template import (
    continues,
    decode_text,
    generation_prefill,
    prefilled_text,
    render_prompt,
    special_think_ids,
    stop_token_id,
)
from thinkwheel.engines.base import (
    OVER_CONTEXT,
    Completion,
    Request,
    SamplingParams,
    as_messages,
    first_stop,
    sequence_seed,
)

_M32 = 0xFFFFFFFF
Progress = Callable[[int], None]  # called with the number of sequences just finished


def _mix32(x: Any) -> Any:
    """Murmur-style 32-bit finaliser on an int64 tensor (values stay below 2**63)."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return ((x >> 16) ^ x) & _M32


class _SeededSampler:
    """Logits processor that samples each row from its own stream and returns a one-hot mask.

    Generation runs in greedy mode, so the argmax of the returned scores is the sampled token.
    Why not `do_sample=True`: that draws every row from torch's global RNG, which ties a row's
    output to the batch it happened to land in.
    """

    def __init__(self, row_seeds: Any, prompt_len: int, temperature: float, top_p: float):
        self.row_seeds = row_seeds
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.prompt_len
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p  # keeps at least the top token
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        counter = _mix32(torch.full_like(self.row_seeds, step) * 0x9E3779B + 0x7F4A7C15)
        draws = _mix32(self.row_seeds ^ counter).double().add_(0.5).div_(2.0**32)
        target = (draws.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        token = torch.searchsorted(cdf, target).clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token, 0.0)


class _InGenerated:
    """A stop string counts only inside the generated text. transformers' StopStringCriteria
    reads the prompt too, so a stop ("\\n\\n", "\\n<") that began in the prompt's last
    characters ended the generation at its first token, where vLLM and servers match only what
    the model wrote. A flagged row is checked against its decoded text (rarely: a stop is
    seldom hit), which is what the text is cut by afterwards."""

    def __init__(self, inner: Any, tokenizer: Any, stop: tuple[str, ...], prompt_len: int,
                 keep: set[int]):
        self.inner, self.tokenizer, self.stop, self.prompt_len = inner, tokenizer, stop, prompt_len
        self.keep = keep  # the special think ids decoding keeps (the engine's, found once)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        hit = self.inner(input_ids, scores, **kwargs)
        for row in hit.nonzero().flatten().tolist():
            text = decode_text(self.tokenizer, input_ids[row, self.prompt_len:].tolist(), self.keep)
            hit[row] = any(s in text for s in self.stop)
        return hit


class HFEngine:
    """A local transformers model behind the `Engine` interface; load once, generate many times."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        device: str = "cpu",
        dtype: str = "auto",
        model_name: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = str(model_path)
        self.model_name = model_name or Path(self.model_path).name
        self.batch_size = batch_size
        self.device = device
        if dtype == "auto":
            torch_dtype = torch.float32 if device == "cpu" else "auto"
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        self.model.to(device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos])
        if (turn_end := stop_token_id(self.tokenizer)) is not None:
            self.eos_ids.add(turn_end)  # a base model's config may not stop at "<|im_end|>"
        self.pad_id: int = self.tokenizer.pad_token_id
        # positions the model has: a longer prompt gets no text, a long one a smaller budget
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.prefill = generation_prefill(self.tokenizer)  # "<think>\n" for Qwen3-style templates
        self.think_ids = special_think_ids(self.tokenizer)  # kept when decoding
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    @classmethod
    def load(cls, model_path: str | os.PathLike[str], **kwargs: Any) -> HFEngine:
        return cls(model_path, **kwargs)

    def render(self, request: Request) -> str:
        """The prompt text a request turns into (chat template with the generation prompt, and
        a final assistant turn to continue after it)."""
        return render_prompt(self.tokenizer, as_messages(request), self.prefill)

    def generate(
        self,
        requests: Sequence[Request],
        params: SamplingParams,
        progress: Progress | None = None,
        *,
        seeds: Sequence[int | None] | None = None,
    ) -> list[list[Completion]]:
        """n completions per request, in order; batches of `batch_size` sequences. `seeds`, one
        per request, stand in for `params.seed` (a server batches calls that each send one)."""
        import torch

        if not requests:
            return []
        greedy = params.temperature <= 0
        draws = 1 if greedy else params.n  # greedy samples are identical: decode once, copy
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        texts = [self.render(r) for r in requests]
        # a continued turn's reply is the new text alone: the template's pre-fill is in the turn
        prefills = ["" if continues(as_messages(r)) else self.prefill for r in requests]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        results: dict[tuple[int, int], Completion] = {}
        seqs: list[tuple[int, int, int]] = []  # (request index, sample index, sequence seed)
        for i, req in enumerate(requests):
            if self.context is not None and lengths[i] >= self.context:
                results.update({(i, j): OVER_CONTEXT for j in range(draws)})
                continue
            msgs = as_messages(req)
            own = seed if seeds is None or seeds[i] is None else seeds[i]
            seqs += [(i, j, sequence_seed(own, msgs, j)) for j in range(draws)]
        if progress is not None and results:
            progress(len(results) * (params.n if greedy else 1))
        seqs.sort(key=lambda s: lengths[s[0]])  # similar lengths together: less padding
        with torch.inference_mode():
            for start in range(0, len(seqs), self.batch_size):
                batch = seqs[start : start + self.batch_size]
                outs = self._generate_batch([texts[i] for i, _, _ in batch], batch, params, greedy,
                                            [prefills[i] for i, _, _ in batch])
                results.update({(i, j): c for (i, j, _), c in zip(batch, outs, strict=True)})
                if progress is not None:
                    progress(len(batch) * (params.n if greedy else 1))
        return [
            [results[(i, 0 if greedy else j)] for j in range(params.n)]
            for i in range(len(requests))
        ]

    def _generate_batch(
        self,
        prompts: list[str],
        batch: list[tuple[int, int, int]],
        params: SamplingParams,
        greedy: bool,
        prefills: list[str],
    ) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList

        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        budget = params.max_tokens  # past the model's positions it writes noise, not text
        if self.context is not None:
            budget = max(1, min(budget, self.context - prompt_len))
        processors = LogitsProcessorList()
        if not greedy:
            row_seeds = torch.tensor(
                [s for _, _, s in batch], dtype=torch.int64, device=self.device
            )
            processors.append(
                _SeededSampler(row_seeds, prompt_len, params.temperature, params.top_p)
            )
        out = self.model.generate(
            **enc,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=budget,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            logits_processor=processors,
            stopping_criteria=self._stop_criterion(params.stop, prompt_len),
        )
        return [self._completion(row[prompt_len:].tolist(), params, budget, prefill)
                for row, prefill in zip(out, prefills, strict=True)]

    def _stop_criterion(self, stop: tuple[str, ...], prompt_len: int) -> Any:
        from transformers import StoppingCriteriaList, StopStringCriteria

        if not stop:
            return None
        if stop not in self._stop_criteria:  # building it scans the vocabulary: do it once
            self._stop_criteria[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return StoppingCriteriaList(
            [_InGenerated(self._stop_criteria[stop], self.tokenizer, stop, prompt_len,
                          self.think_ids)])

    def _completion(self, ids: list[int], params: SamplingParams, budget: int,
                    prefill: str) -> Completion:
        end = next((k + 1 for k, t in enumerate(ids) if t in self.eos_ids), None)
        hit_eos = end is not None
        ids = ids[:end] if hit_eos else ids
        if not hit_eos and self.pad_id not in self.eos_ids:
            while ids and ids[-1] == self.pad_id:  # padding after a stop-string halt
                ids = ids[:-1]
        text = decode_text(self.tokenizer, ids, self.think_ids)
        cut = first_stop(text, params.stop)
        if cut >= 0:
            text = text[:cut]
        reason = "stop" if hit_eos or cut >= 0 or len(ids) < budget else "length"
        return Completion(text=prefilled_text(text, prefill), finish_reason=reason,
                          n_tokens=len(ids))
