"""The vLLM side of synpo's `vllm` engine. Self-contained: stdlib, vllm and transformers only.

vLLM pins its own torch/transformers, so it usually lives in a venv of its own
(scripts/setup_vllm_env.sh) where synpo is not installed. The engine then starts this file by
path with that venv's python:

    VLLM_PYTHON synpo/engines/vllm_worker.py '{"model": DIR, "adapter": null, "dtype": "float32", ...}'

It loads the model once and serves jobs, one JSON line each on stdin:

    {"op": "generate", "requests": IN.jsonl, "output": OUT.jsonl, "sampling": {...}}
        IN rows: {"id", "messages"}; OUT rows (written atomically): {"id", "texts",
        "finish_reasons", "num_tokens"}; sampling: synpo's Sampling as a dict
    {"op": "render", "messages": [...]}  -> the prompt's token ids
    {"op": "exit"}

and answers each job with one JSON line on stdout: {"ok": true, ...} or {"ok": false, "error"}.
The first line it writes is {"ok": true, "ready": true, ...} once the model is loaded.
Everything else (vLLM's logs) goes to stderr. When vLLM is importable in synpo's own
environment, the engine uses `Generator` from this module in-process instead.

Prompts are rendered by the tokenizer's own chat template and handed to vLLM as token ids,
so vLLM adds nothing (exactly the BOS the template writes). Text is decoded and cut at stop
strings exactly as synpo's hf engine does, so both engines give the same completion rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile


def prepare_environment(*, on_cpu: bool, offline: bool) -> None:
    """vLLM settings that must be in the environment before it starts (defaults only)."""
    if offline:  # every model path is a local directory: never reach for the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(cache, "synpo", "vllm"))
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes most of RAM
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # one machine; no network lookups
        # The engine core in this process: no extra process to bind threads to or to leak.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def request_seed(seed: int, index: int) -> int:
    """One seed per request of a call, from the call's seed and the request's position."""
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:8], 16)


def lora_rank(adapter: str) -> int:
    """The smallest rank vLLM accepts (it takes a fixed set) that holds the adapter's."""
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        r = int(json.load(f)["r"])
    return next(k for k in (1, 8, 16, 32, 64, 128, 256, 320, 512) if k >= r)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one was found (as synpo.engines.base)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def template_end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant answer (Llama-3's
    <|eot_id|>, ChatML's <|im_end|>, Mistral's </s>), as a one-element list, or [] if none.

    A template override on a base tokenizer ends turns with a token that is not the tokenizer's
    eos (Llama-3 base: eos <|end_of_text|>, turns end with <|eot_id|>); generation must stop
    there too, or answers run on into an invented next turn. Found by rendering a two-turn chat,
    so it holds for any template. (synpo's hf engine uses this function too.)"""
    marker = "synpo-end-of-turn-probe"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that cannot render this chat (Jinja raises anything): nothing to learn
        return []
    if not isinstance(text, str) or marker not in text:
        return []
    after = text[text.rindex(marker) + len(marker):]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return next(([i] for i in ids if i in special), [])


PROMPT_TOO_LONG = "prompt_too_long"  # the finish reason of a request whose prompt fills the context


def context_budgets(prompt_lengths: list[int], max_new_tokens: int, limit: int | None) -> list[int]:
    """Tokens each request may generate within a context of `limit` tokens: max_new_tokens where the
    prompt leaves that much room, less where it does not (the answer is capped), 0 where the prompt
    alone fills the context (vLLM would reject it, and with it the whole batch)."""
    if limit is None:
        return [max_new_tokens] * len(prompt_lengths)
    return [max(0, min(max_new_tokens, limit - n)) for n in prompt_lengths]


def stop_token_ids(eos, tokenizer) -> list[int]:
    """Ids that end an answer: the generation config's eos ids `eos` (None, one or several), the
    tokenizer's eos, and the chat template's end-of-turn token."""
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for i in [tokenizer.eos_token_id, *template_end_of_turn_ids(tokenizer)]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


class Generator:
    """vLLM's offline LLM on one model (and optionally one LoRA adapter on it)."""

    def __init__(self, model: str, *, adapter: str | None = None, dtype: str = "auto", seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, trust_remote_code: bool = False,
                 chat_template: str | None = None):
        import torch

        self.on_cpu = not torch.cuda.is_available()
        prepare_environment(on_cpu=self.on_cpu, offline=False)
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        if chat_template:  # the recipe's override (the worker may run in another venv: text, not a path)
            self.tokenizer.chat_template = chat_template
        self.stop_ids = self._end_of_turn_ids(model, GenerationConfig)
        kwargs = dict(model=model, dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                      trust_remote_code=trust_remote_code, enable_prefix_caching=True,
                      enforce_eager=self.on_cpu)  # CPU: no graph compilation (slow, and no gain here)
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(adapter))
            self.lora = LoRARequest("adapter", 1, adapter)
        self.llm = LLM(**kwargs)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _end_of_turn_ids(self, model: str, generation_config_cls) -> list[int]:
        """As the hf engine: the generation config's eos ids, the tokenizer's and the template's end of turn."""
        try:
            ids = generation_config_cls.from_pretrained(model).eos_token_id
        except OSError:
            ids = None
        return stop_token_ids(ids, self.tokenizer)

    def render(self, messages: list[dict]) -> list[int]:
        """Chat-template token ids with the generation prompt; the template alone decides BOS."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[dict], sampling: dict) -> list[dict]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling["temperature"] == 0
        n = sampling["n"]
        stop = list(sampling.get("stop") or [])
        ids = [self.render(r["messages"]) for r in requests]
        budgets = context_budgets([len(x) for x in ids], sampling["max_new_tokens"], self.max_model_len)
        run = [i for i, b in enumerate(budgets) if b > 0]
        params = [SamplingParams(n=1 if greedy else n, temperature=sampling["temperature"],
                                 top_p=1.0 if greedy else sampling["top_p"], max_tokens=budgets[i],
                                 stop=stop or None, stop_token_ids=self.stop_ids,
                                 seed=request_seed(sampling["seed"], i) if requests[i].get("seed") is None
                                 else requests[i]["seed"])
                  for i in run]
        prompts = [TokensPrompt(prompt_token_ids=ids[i]) for i in run]
        outputs = dict(zip(run, self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
                           if run else []))
        rows = []
        for i, request in enumerate(requests):
            if i not in outputs:  # one over-long prompt must not fail the others: an empty answer, marked
                rows.append({"id": request["id"], "texts": [""] * n, "finish_reasons": [PROMPT_TOO_LONG] * n,
                             "num_tokens": [0] * n, "prompt_tokens": len(ids[i]), "capped": False})
                continue
            samples = [self._sample(o, stop) for o in outputs[i].outputs]
            if greedy:  # every greedy sample is the same: decode once (vLLM refuses n > 1 at temperature 0)
                samples = samples * n
            rows.append({"id": request["id"], "texts": [s[0] for s in samples],
                         "finish_reasons": [s[1] for s in samples], "num_tokens": [s[2] for s in samples],
                         "prompt_tokens": len(ids[i]), "capped": budgets[i] < sampling["max_new_tokens"]})
        return rows

    def _sample(self, output, stop: list[str]) -> tuple[str, str, int]:
        """(text, finish reason, generated tokens) decoded the way the hf engine decodes."""
        ids = list(output.token_ids)
        ended = bool(ids) and ids[-1] in self.stop_ids
        text, cut = cut_at_stop(self.tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True), stop)
        stopped = ended or cut or output.finish_reason == "stop"
        return text.strip(), "stop" if stopped else "length", len(ids)

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


# ---- child-process mode ----------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, rows: list[dict]) -> None:
    """Atomically: a temporary file beside `path`, renamed over it when complete."""
    fd, tmp = tempfile.mkstemp(prefix=".vllm-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def serve(options: dict) -> int:
    # stdout carries the protocol only: keep a private copy of it, send fd 1 (vLLM's prints) to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)

    def reply(**message) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        import torch

        local = os.path.isdir(options["model"]) and (not options.get("adapter") or os.path.isdir(options["adapter"]))
        prepare_environment(on_cpu=not torch.cuda.is_available(), offline=local)
        generator = Generator(**options)
    except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
        reply(ok=False, error=f"{type(e).__name__}: {e}")
        return 1
    import vllm

    reply(ok=True, ready=True, vllm=vllm.__version__, device="cpu" if generator.on_cpu else "cuda")
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        if job["op"] == "exit":
            break
        try:
            if job["op"] == "render":
                reply(ok=True, ids=generator.render(job["messages"]))
            elif job["op"] == "generate":
                rows = generator.generate(_read_jsonl(job["requests"]), job["sampling"])
                _write_jsonl(job["output"], rows)
                reply(ok=True, output=job["output"], rows=len(rows))
            else:
                reply(ok=False, error=f"unknown op {job['op']!r}")
        except Exception as e:  # noqa: BLE001
            reply(ok=False, error=f"{type(e).__name__}: {e}")
    if not generator.on_cpu:
        generator.close()  # GPU: vLLM stops its engine-core and tensor-parallel processes in order
    # Then leave without the interpreter's slow teardown of vLLM (seconds on a CPU): the
    # process's exit hands all of its memory back at once.
    sys.stderr.flush()
    channel.close()
    os._exit(0)


if __name__ == "__main__":
    # Run by path, Python puts this file's directory first on sys.path, and that directory holds
    # synpo's own engines/vllm.py, which would shadow the real vllm package. Drop it.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.exit(serve(json.loads(sys.argv[1])))
