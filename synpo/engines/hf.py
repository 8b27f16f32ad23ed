"""The Hugging Face engine: batched `generate` on the local device (the CPU default).

Requests are rendered with the tokenizer's chat template, sorted by length so each batch
pads little, left-padded, and generated with the KV cache until end of turn (every eos id of
the generation config) or a stop string. `batch_size` counts sequences: with n samples per
prompt a batch holds batch_size // n prompts. One seed per call makes the whole call
deterministic (the batches a call forms depend only on its input) without touching the
caller's random state. Greedy decoding with n > 1 decodes once and repeats the answer.
"""

from __future__ import annotations

from dataclasses import asdict

from synpo.engines.base import Completion, Request, Sampling, cut_at_stop
from synpo.engines.vllm_worker import stop_token_ids


class HFEngine:
    name = "hf"

    def __init__(self, model_path: str, *, adapter: str | None = None, dtype: str = "auto",
                 batch_size: int = 64, device: str | None = None, trust_remote_code: bool = False,
                 chat_template: str | None = None):
        import torch

        from synpo.models import load_causal_lm, load_tokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code, chat_template=chat_template)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model_path, dtype=dtype, adapter=adapter, device=self.device,
                                    trust_remote_code=trust_remote_code)
        self.model.eval()
        self.batch_size = batch_size
        self.stop_ids = eos_ids(self.model, self.tokenizer)

    def render(self, request: Request) -> list[int]:
        """Token ids of the conversation with the generation prompt, exactly as the template gives them."""
        return render_chat(self.tokenizer, request.messages)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        import torch

        greedy = sampling.temperature == 0
        per_prompt = 1 if greedy else sampling.n
        run = Sampling(**{**asdict(sampling), "n": per_prompt})
        ids = [self.render(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(ids[i]))
        prompts_per_batch = max(1, self.batch_size // per_prompt)
        out: dict[int, Completion] = {}
        devices = [torch.cuda.current_device()] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling.seed)
            for start in range(0, len(order), prompts_per_batch):
                batch = order[start : start + prompts_per_batch]
                for i, (texts, reasons, counts) in zip(batch, self._generate_batch([ids[i] for i in batch], run)):
                    repeat = sampling.n if greedy else 1
                    out[i] = Completion(requests[i].id, texts * repeat, reasons * repeat, counts * repeat)
        return [out[i] for i in range(len(requests))]

    def _generate_batch(self, batch_ids: list[list[int]], sampling: Sampling):
        import torch

        tok = self.tokenizer
        width = max(len(x) for x in batch_ids)
        input_ids = torch.full((len(batch_ids), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, x in enumerate(batch_ids):
            input_ids[row, width - len(x):] = torch.tensor(x)
            attention[row, width - len(x):] = 1
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n, use_cache=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=self.stop_ids)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
        with torch.inference_mode():
            generated = self.model.generate(input_ids=input_ids.to(self.device),
                                            attention_mask=attention.to(self.device), **kwargs)
        new = generated[:, width:].tolist()
        stops = set(kwargs["eos_token_id"])
        results = []
        for row in range(len(batch_ids)):
            texts, reasons, counts = [], [], []
            for seq in new[row * sampling.n : (row + 1) * sampling.n]:
                n_tokens = next((k + 1 for k, t in enumerate(seq) if t in stops), None)
                ended = n_tokens is not None
                seq = seq[: n_tokens - 1] if ended else [t for t in seq if t != tok.pad_token_id]
                text, cut = cut_at_stop(tok.decode(seq, skip_special_tokens=True), sampling.stop)
                texts.append(text.strip())
                reasons.append("stop" if ended or cut else "length")
                counts.append(n_tokens if ended else len(seq))
            results.append((texts, reasons, counts))
        return results

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def render_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template token ids with the generation prompt; the template alone decides BOS."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the generation config's (may be several, e.g. Llama 3), the tokenizer's eos
    and the chat template's end-of-turn token (a template override on a base tokenizer)."""
    return stop_token_ids(model.generation_config.eos_token_id, tokenizer)
