"""A reward model as the scorer: any `AutoModelForSequenceClassification` that outputs one score.

Each (prompt, response) pair is rendered as a two-turn conversation with the reward model's
*own* chat template (its tokenizer's, not the policy's), tokenized without extra special
tokens (the template decides BOS), and cut to `scorer.max_length` tokens (the BOS and the
last tokens are kept, so the response and the assistant header before it survive; a cut row
is counted and logged).

Batching gives the same scores as one pair at a time:
- rows are sorted by length, so a batch pads little, and padded on the *right*, so real
  tokens keep positions 0..n-1 exactly as unbatched (left padding shifts rotary positions);
- sequence-classification heads find each row's last token by looking for the pad id
  (transformers takes the last token that is not pad; ArmoRM-style custom heads take the
  token before the first pad). A pad id that also occurs in the text (e.g. pad = eos, and
  the template ends turns with eos) would move that position, so each batch uses a pad id
  that occurs in none of its rows. Pads sit after the last real token and are masked, so
  their embeddings never reach a real token.

The score is the head's single logit (`num_labels == 1`) or, for multi-objective models
such as ArmoRM, the output's `score` field (its gated preference score). Units are the
model's own: recipe gap thresholds (`improver.gap`, `pairs.gap`) are in these units
(ArmoRM's scores are small, the paper uses τ = 0.02 with it).

Custom-code models (the config's `auto_map` names a class for AutoModelForSequenceClassification,
like ArmoRM's) run only when the recipe says `scorer.trust_remote_code: true`.

The model is loaded on first use and released by `close()` (the loop calls it after each
scoring stage, so the GPU is free for the next stage's engine); a later call loads it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import ScorerConfig, resolve_path


def read_model_config(path: str) -> dict | None:
    """config.json of a local model directory, or (hub id) from the hub cache/hub; None if unreachable."""
    local = Path(path).expanduser()
    if local.is_dir():
        cfg = local / "config.json"
        return json.loads(cfg.read_text()) if cfg.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    except Exception:  # offline, gated, missing: the loader will report it properly
        return None


def needs_remote_code(config: dict | None) -> str | None:
    """The custom class a config asks for (its auto_map entry), or None for a stock transformers model."""
    auto_map = (config or {}).get("auto_map") or {}
    return auto_map.get("AutoModelForSequenceClassification")


def check_remote_code(path: str, trust_remote_code: bool, field: str = "scorer", config: dict | None = None,
                      import_code: bool = True) -> None:
    """UserError when the model needs its own code and the recipe did not say it trusts it, or (import_code)
    when that code does not import."""
    custom = needs_remote_code(config if config is not None else read_model_config(path))
    if custom and not trust_remote_code:
        raise UserError(f"{field}.path: {path} ships its own model code ({custom}); it runs only if the recipe "
                        f"says so: set {field}.trust_remote_code: true (read the code first)")
    if custom and import_code:
        import_remote_class(path, custom, field)


def import_remote_class(path: str, custom: str, field: str = "scorer"):
    """The model's own class, imported (no weights): code that no longer imports with the installed
    transformers stops the run here, not at the first scoring stage hours into it."""
    import transformers
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    remote_code_shims()
    local = Path(path).expanduser()
    try:
        return get_class_from_dynamic_module(custom, str(local) if local.is_dir() else path)
    except Exception as e:  # noqa: BLE001 - whatever the remote module raises while importing
        file = custom.rsplit(".", 1)[0].split("--")[-1] + ".py"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{field}.path: {path}: its own model code ({file}) does not import with transformers "
                        f"{transformers.__version__}: {type(e).__name__}: {first}") from None


def remote_code_shims() -> None:
    """Names reward models' own code imports that transformers 5 removed, put back as what they were.

    ArmoRM's modeling_custom.py does `from transformers.models.llama.modeling_llama import
    LLAMA_INPUTS_DOCSTRING` only to pass it to `add_start_docstrings_to_model_forward` (which
    transformers 5 kept): it is the text of a docstring, nothing runs it. The rest of what that file
    calls still works in transformers 5 (`config.use_return_dict`, and the backbone's
    `past_key_values=` / `output_attentions=` / `return_dict=` arguments, renamed or taken as kwargs)."""
    from transformers.models.llama import modeling_llama

    if not hasattr(modeling_llama, "LLAMA_INPUTS_DOCSTRING"):
        modeling_llama.LLAMA_INPUTS_DOCSTRING = ""


class RewardModelScorer:
    name = "reward_model"

    def __init__(self, cfg: ScorerConfig, device: str = "auto", ray_address: str | None = None):
        from synpo.scoring.parallel import ScoringWorkers, wants_workers

        self.cfg = cfg
        self.path = resolve_path(cfg.path)
        self.device = device
        self.model = None
        self.tokenizer = None
        self.truncated = 0
        check_remote_code(self.path, cfg.trust_remote_code)
        # copies of the model on every GPU (scoring/parallel.py); this process then only tokenizes
        self.workers = ScoringWorkers(cfg, device, ray_address) if wants_workers(cfg, device, ray_address) else None

    # ---- loading ----
    def _load_tokenizer(self) -> None:
        if self.tokenizer is not None:
            return
        from transformers import AutoTokenizer

        from synpo.models import load_pretrained

        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.path, "reward model tokenizer",
                                         trust_remote_code=self.cfg.trust_remote_code)
        if self.tokenizer.chat_template is None:
            raise UserError(f"scorer.path: {self.path}: the reward model's tokenizer has no chat template; "
                            "a reward model is scored on its own chat format")

    def _load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification

        from synpo.models import load_pretrained

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = device
        trust = self.cfg.trust_remote_code
        self._load_tokenizer()
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        if trust:
            remote_code_shims()
        model = load_pretrained(AutoModelForSequenceClassification.from_pretrained, self.path, "reward model",
                                dtype=dtype, trust_remote_code=trust, use_safetensors=True)
        self.model = model.to(device).eval()

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
        if self.model is None:
            return
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- scoring ----
    def render(self, prompt: str, response: str) -> list[int]:
        """Token ids of the (prompt, response) conversation in the reward model's template, cut to max_length."""
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.cfg.max_length:
            # Keep the end: the response, the assistant header before it (ArmoRM gates on it and raises
            # without it) and the last token the head reads; the prompt's start goes, BOS kept.
            self.truncated += 1
            head = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
            ids = head + ids[len(ids) - (self.cfg.max_length - len(head)):]
        return ids

    def valid(self, prompts):
        return [True] * len(prompts)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from synpo.progress import log, progress

        self._load_tokenizer()
        before = self.truncated
        ids = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[start : start + self.cfg.batch_size] for start in range(0, len(order), self.cfg.batch_size)]
        scores: list[float] = [0.0] * len(ids)
        with progress("scoring", total=len(ids), unit="pair") as bar:

            def done(k: int, batch_scores: list[float]) -> None:
                for i, s in zip(batches[k], batch_scores):
                    scores[i] = s
                bar.advance(len(batches[k]))

            if self.workers is not None:  # the same batches, each scored by whichever copy is free
                self.workers.map("score_batches", [([[ids[i] for i in batch]],) for batch in batches],
                                 lambda k, result: done(k, result[0]))
            else:
                self._load()
                for k, batch in enumerate(batches):
                    done(k, self._score_batch([ids[i] for i in batch]))
        if self.truncated > before:
            log(f"[yellow]reward model[/yellow]: {self.truncated - before} of {len(ids)} conversations were longer "
                f"than scorer.max_length={self.cfg.max_length} tokens and were cut")
        return scores

    def _score_batch(self, batch: list[list[int]]) -> list[float]:
        import torch

        pad = unused_token_id(batch, self.model.get_input_embeddings().num_embeddings,
                              self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, x in enumerate(batch):
            input_ids[row, : len(x)] = torch.tensor(x)
            attention[row, : len(x)] = 1
        text_config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        text_config.pad_token_id = pad
        self.model.config.pad_token_id = pad
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device))
        return [float(x) for x in single_score(out, self.path).float().cpu()]


def unused_token_id(batch: list[list[int]], vocab: int, *preferred: int | None) -> int:
    """A token id in no row of the batch: the tokenizer's pad (or eos) when free, else the highest free id."""
    used = set().union(*map(set, batch))
    for candidate in preferred:
        if candidate is not None and 0 <= candidate < vocab and candidate not in used:
            return candidate
    return next(i for i in range(vocab - 1, -1, -1) if i not in used)


def single_score(out, path: str):
    """One score per row from a classification output."""
    score = getattr(out, "score", None)
    if score is not None:  # ArmoRM-style multi-objective models expose their preference score
        return score.reshape(-1)
    logits = out.logits
    if logits.shape[-1] != 1:
        raise UserError(f"scorer.path: {path} has {logits.shape[-1]} output labels and no `score` output; "
                        "a reward model must give one score per conversation")
    return logits[:, 0]
