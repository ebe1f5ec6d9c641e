"""The vLLM offline engine (GPU): `vllm.LLM.chat` with per-request seeded `SamplingParams`.

vLLM is imported lazily, inside the engine, and its import errors are caught as `Exception`
(on a CPU machine it fails with RuntimeError/NotImplementedError, not only ImportError).

Each request gets its own seed derived from (seed, request content), the same rule as the hf
engine, so a request's samples don't depend on what else is in the batch or on how requests
are split across data-parallel replicas.

Data parallelism: `LLM(data_parallel_size>1)` is refused by current vLLM in a single process,
so `data_parallel_size > 1` starts that many persistent replica processes (spawned), each
pinned to its own `tensor_parallel_size` GPUs via CUDA_VISIBLE_DEVICES, and splits the
requests between them.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import multiprocessing as mp
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thinkwheel.chat_template import (
    continues,
    generation_prefill,
    prefilled_text,
    render_prompt,
    special_ids,
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

Progress = Callable[[int], None]


def import_vllm() -> Any:
    try:
        import vllm
    except Exception as err:  # not only ImportError: CPU-only installs raise at import
        raise RuntimeError(
            f"engine.kind 'vllm' needs a working vLLM install (pip install 'thinkwheel[gpu]' on a "
            f"CUDA machine): {type(err).__name__}: {err}"
        ) from err
    return vllm


class _Replica:
    """One `vllm.LLM` and the code that turns our requests into its calls and back."""

    def __init__(self, model: str, llm_kwargs: dict[str, Any], lora_path: str | None) -> None:
        self.vllm = import_vllm()
        self.llm = self.vllm.LLM(model=model, **llm_kwargs)
        self.stop_ids = turn_end_ids(self.llm)
        self.prefill = template_prefill(self.llm)
        self.fits = context_check(self.llm)
        self.drop = special_texts_to_drop(self.llm)
        self.plain = plain_tokenizer(self.llm)
        self.lora = None
        if lora_path:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(Path(lora_path).name or "adapter", 1, lora_path)

    def generate(
        self, messages: list[list[dict[str, str]]], params: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per conversation; one over the model's context comes back empty
        (finish_reason "context_length"): vLLM refuses the whole call for one such prompt."""
        fit = [i for i, ok in enumerate(self.fits(messages)) if ok]
        out: list[list[Completion]] = [[OVER_CONTEXT] * params.n for _ in messages]
        if fit:
            served = self._generate([messages[i] for i in fit], params)
            for i, row in zip(fit, served, strict=True):
                out[i] = row
        return out

    def _generate(
        self, messages: list[list[dict[str, str]]], params: SamplingParams
    ) -> list[list[Completion]]:
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        # vLLM samples greedily below 1e-5 and then refuses n > 1: decode once and copy
        greedy = params.temperature < 1e-5
        draws = 1 if greedy else params.n  # greedy samples are identical: decode once, copy
        per_request = [
            self.vllm.SamplingParams(
                n=draws,
                temperature=params.temperature,
                top_p=params.top_p if not greedy else 1.0,
                max_tokens=params.max_tokens,
                seed=sequence_seed(seed, msgs, 0),
                stop=list(params.stop) or None,
                stop_token_ids=self.stop_ids,
                **({"skip_special_tokens": False} if self.drop is not None else {}),
            )
            for msgs in messages
        ]
        continued = [continues(m) for m in messages]
        # a continued turn is sent as the token ids of the transformers engine's prompt: through
        # chat(continue_final_message=True) the template renders the turn, and Qwen3's puts an
        # empty thought before it, R1-Distill's refuses one past </think>
        as_ids = [i for i, cont in enumerate(continued) if cont or self.plain is not None]
        as_chat = [i for i, cont in enumerate(continued) if not cont and self.plain is None]
        outputs: list[Any] = [None] * len(messages)
        if as_ids:
            tok = self.plain if self.plain is not None else self.hf_tokenizer()
            prompts = [{"prompt_token_ids": tok(render_prompt(tok, messages[i], self.prefill),
                                                add_special_tokens=False)["input_ids"]}
                       for i in as_ids]
            got = self.llm.generate(prompts, sampling_params=[per_request[i] for i in as_ids],
                                    use_tqdm=False, lora_request=self.lora)
            self._place(outputs, as_ids, got)
        if as_chat:
            got = self.llm.chat([messages[i] for i in as_chat],
                                sampling_params=[per_request[i] for i in as_chat],
                                use_tqdm=False, lora_request=self.lora, add_generation_prompt=True)
            self._place(outputs, as_chat, got)
        # a continuation's text is only what follows the given assistant prefix: the template's
        # pre-fill (`<think>`) opened that prefix, not this text
        rows = [_completions(out, params, draws, "" if cont else self.prefill, self.drop)
                for out, cont in zip(outputs, continued, strict=True)]
        return [row * params.n for row in rows] if greedy else rows

    @staticmethod
    def _place(outputs: list[Any], idx: list[int], got: list[Any]) -> None:
        if len(got) != len(idx):
            raise RuntimeError(f"vLLM returned {len(got)} outputs for {len(idx)} requests")
        for i, out in zip(idx, got, strict=True):
            outputs[i] = out

    def hf_tokenizer(self) -> Any:
        """The model's transformers tokenizer, which renders a continued turn as the transformers
        engine does; vLLM's Mistral tokenizer has no chat template of that kind."""
        tok = self.llm.get_tokenizer()
        if getattr(tok, "IS_MISTRAL_TOKENIZER", False) or not hasattr(tok, "apply_chat_template"):
            raise RuntimeError("continuing a reply (sampling.repair) needs the model's "
                               "transformers tokenizer; vLLM's Mistral tokenizer has none: "
                               "set sampling.repair: 0 (and repair_steps: false) for this model")
        return tok


def turn_end_ids(llm: Any) -> list[int] | None:
    """The token that closes the chat template's assistant turns, as an extra stop id: a base
    model whose generation config stops only at "<|endoftext|>" would otherwise write past
    "<|im_end|>" to the token budget (the transformers engine adds the same id). A tokenizer
    we cannot probe (vLLM's Mistral tokenizer, say) adds none."""
    try:
        stop = stop_token_id(llm.get_tokenizer())
    except Exception:
        return None
    return None if stop is None else [stop]


def plain_tokenizer(llm: Any) -> Any:
    """The tokenizer of a model without a chat template (a base model), else None. vLLM's
    chat() refuses such a model ("you must provide a chat template"), where the transformers
    engine joins the turns' text one per line (`render_prompt`): the vLLM engine sends that
    text's token ids itself, as the context check measures it."""
    try:
        tok = llm.get_tokenizer()
    except Exception:
        return None
    if getattr(tok, "IS_MISTRAL_TOKENIZER", False) or not hasattr(tok, "chat_template"):
        return None  # vLLM's Mistral tokenizer has no such attribute: chat() renders for it
    return None if tok.chat_template else tok


def template_prefill(llm: Any) -> str:
    """What the chat template writes after the assistant header ("<think>\\n" for Qwen3-style
    templates): vLLM returns only the generated text, and a completion must read as the model's
    whole turn, as the transformers engine's does. A tokenizer we cannot probe adds none."""
    try:
        return generation_prefill(llm.get_tokenizer())
    except Exception:
        return ""


def context_check(llm: Any) -> Callable[[list[list[dict[str, str]]]], list[bool]]:
    """Whether each conversation's prompt leaves room for one generated token in the model's
    context (`max_model_len`), the check vLLM makes per prompt and answers for the whole
    call with a ValueError. Without a tokenizer or a context length to read, every prompt is
    sent, as before."""
    try:
        tokenizer = llm.get_tokenizer()
        limit = int(llm.model_config.max_model_len)
    except Exception:
        return lambda conversations: [True] * len(conversations)

    def fits(conversations: list[list[dict[str, str]]]) -> list[bool]:
        texts = [render_prompt(tokenizer, msgs) for msgs in conversations]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [len(x) < limit for x in ids]  # one batched call: a round is many prompts

    return fits


def special_texts_to_drop(llm: Any) -> list[str] | None:
    """When the tokenizer marks `<think>`/`</think>` special, vLLM's default decoding (without
    special tokens) drops them from every sample: decode with special tokens instead and drop
    the other special tokens' text (these, longest first). None: decode as vLLM does."""
    try:
        tokenizer = llm.get_tokenizer()
        keep = special_think_ids(tokenizer)
    except Exception:
        return None
    if not keep:
        return None
    drop = {tokenizer.convert_ids_to_tokens(i) for i in special_ids(tokenizer) - keep}
    return sorted((t for t in drop if t), key=len, reverse=True)


def _completions(request_output: Any, params: SamplingParams, draws: int,
                 prefill: str = "", drop: list[str] | None = None) -> list[Completion]:
    samples = sorted(request_output.outputs, key=lambda o: o.index)
    if len(samples) != draws:
        raise RuntimeError(f"vLLM returned {len(samples)} samples, expected {draws}")
    out = []
    for s in samples:
        text = s.text
        for special in drop or ():
            text = text.replace(special, "")
        cut = first_stop(text, params.stop)
        reason = s.finish_reason if isinstance(s.finish_reason, str) and s.finish_reason else "stop"
        if cut >= 0:
            text, reason = text[:cut], "stop"
        out.append(Completion(text=prefilled_text(text, prefill), finish_reason=reason,
                              n_tokens=len(s.token_ids)))
    return out


# the ranks vLLM's LoRAConfig accepts for max_lora_rank
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(lora_path: str) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's rank (its
    adapter_config.json `r`): a fixed 64 refused any adapter above it when it loaded."""
    try:
        r = int(json.loads((Path(lora_path) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return 64
    return next((k for k in LORA_RANKS if k >= r), LORA_RANKS[-1])


def _replica_main(conn: Any, gpus: str, model: str, kwargs: dict, lora: str | None) -> None:
    """Body of a data-parallel replica process: serve generate calls until told to stop."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        replica = _Replica(model, kwargs, lora)
        conn.send(("ready", None))
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if job is None:
                return
            try:
                conn.send(("ok", replica.generate(*job)))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:  # vLLM's engine core is a (non-daemon) child of this process: stop it, as close()
        del replica  # does in process, or this process's exit waits on it
        _free_vllm()


def _free_vllm() -> None:
    gc.collect()
    try:
        from vllm.distributed import cleanup_dist_env_and_memory
    except ImportError:  # an older vLLM: the collection above is what it had
        return
    cleanup_dist_env_and_memory()


def _reply(conn: Any) -> tuple[str, Any]:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return "error", "the replica process died"


_OPEN: weakref.WeakSet = weakref.WeakSet()  # engines with replica processes


def _close_replicas() -> None:
    """Replicas are not daemons, and multiprocessing's exit handler joins such children: this
    one, registered after it (handlers run last-registered first), tells them to stop."""
    for engine in list(_OPEN):
        engine.close()


class VLLMEngine:
    """`vllm.LLM` behind the `Engine` interface; replicas are processes when data_parallel > 1."""

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        lora_path: str | None = None,
        dtype: str = "auto",
        max_lora_rank: int | None = None,
        model_name: str | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.model_name = model_name or Path(self.model_path).name
        if lora_path:
            self.model_name += f"+{Path(lora_path).name}"
        self.lora_path = lora_path
        self.llm_kwargs: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": enable_prefix_caching,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
        }
        if max_model_len is not None:
            self.llm_kwargs["max_model_len"] = max_model_len
        if lora_path:
            self.llm_kwargs.update(enable_lora=True,
                                   max_lora_rank=max_lora_rank or adapter_rank(lora_path))
        self.data_parallel_size = data_parallel_size
        self._local: _Replica | None = None
        self._workers: list[tuple[Any, Any]] = []  # (process, connection)
        if data_parallel_size == 1:
            self._local = _Replica(self.model_path, self.llm_kwargs, lora_path)
        else:
            self._start_replicas(tensor_parallel_size)

    def _start_replicas(self, tp: int) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds CUDA/torch state
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = (
            visible.split(",") if visible else [str(i) for i in range(tp * self.data_parallel_size)]
        )
        for rank in range(self.data_parallel_size):
            mine = ",".join(gpus[rank * tp : (rank + 1) * tp])
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_replica_main,
                args=(child, mine, self.model_path, self.llm_kwargs, self.lora_path),
                # not a daemon: vLLM's LLM starts its engine core as a child process, which
                # Python refuses a daemon ("daemonic processes are not allowed to have
                # children"); close() stops and joins them
                daemon=False,
            )
            proc.start()
            child.close()  # the replica's end: kept open here, its death went unseen (a hang)
            self._workers.append((proc, parent))
        if not _OPEN:  # once multiprocessing has started a process, so its handler is older
            atexit.unregister(_close_replicas)
            atexit.register(_close_replicas)
        _OPEN.add(self)  # stopped at exit: multiprocessing would wait on them forever
        for _, conn in self._workers:
            try:
                status, detail = conn.recv()
            except (EOFError, OSError):  # died without a word: the OOM killer, a segfault
                status, detail = "error", "the process died before it was ready"
            if status != "ready":
                self.close()
                raise RuntimeError(f"a vLLM replica failed to start: {detail}")

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]:
        messages = [as_messages(r) for r in requests]
        if not messages:
            return []
        if self._local is not None:
            out = self._local.generate(messages, params)
        else:
            shards = [messages[r :: len(self._workers)] for r in range(len(self._workers))]
            for (_, conn), shard in zip(self._workers, shards, strict=True):
                conn.send((shard, params))
            # every reply is read before any error is raised: a reply left in a pipe would be
            # the answer to the next call's requests
            replies = [_reply(conn) for _, conn in self._workers]
            if failed := [payload for status, payload in replies if status != "ok"]:
                raise RuntimeError(f"a vLLM replica failed: {failed[0]}")
            parts = [payload for _, payload in replies]
            out = [None] * len(messages)
            for r, part in enumerate(parts):
                out[r :: len(self._workers)] = part
        if progress is not None:
            progress(len(messages) * params.n)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Free the GPU: replicas exit; the in-process LLM is dropped and vLLM's own cleanup
        (`cleanup_dist_env_and_memory`, what its tests run between models) releases its
        memory, which deleting the object alone leaves reserved. The flow closes the engine
        before training, which needs that memory."""
        if self._local is not None:
            self._local = None
            _free_vllm()
        for proc, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        self._workers = []

    def __del__(self) -> None:
        if self._workers:
            with contextlib.suppress(Exception):  # may run during interpreter shutdown
                self.close()
