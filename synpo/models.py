"""Loading models and tokenizers from local directories or hub ids, with clear errors.

safetensors only; `trust_remote_code` is off unless the caller (the recipe) turns it on. A base
to train under QLoRA loads quantized here (`bnb_config`); synpo.training.quantization builds on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from synpo.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_path(path: str) -> None:
    """Raise UserError unless `path` is a model directory or something shaped like a hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json); point to a saved Hugging Face model")
        return
    if p.is_file() and p.name.lower().endswith(".gguf"):
        return  # converted into a checkpoint directory when the run starts (synpo.gguf)
    if p.exists():
        raise UserError(f"{path}: is a file, not a model directory (nor a .gguf file)")
    if not _HUB_ID.match(path) or path.startswith((".", "/", "~")):
        raise UserError(f"{path}: model path does not exist")


def load_pretrained(loader, path: str, what: str, **kwargs):
    """`loader(path, **kwargs)` (a transformers `from_pretrained`) with the path checked first and
    a load failure turned into a one-line UserError naming the path and `what` was being loaded."""
    check_model_path(path)
    try:
        return loader(str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else path, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: could not load {what}: {first}") from None
    except ImportError as e:
        # transformers imports optional packages it finds installed (mistral-common for any
        # `model_type: mistral` tokenizer); one installed without its own dependencies fails here.
        broken = _broken_package(e)
        if broken is None:
            raise UserError(f"{path}: could not load {what}: {str(e).strip().splitlines()[0]}") from None
        raise UserError(f"{path}: could not load {what}: {broken} is installed but does not import ({e}); "
                        f"install it with its dependencies (pip install {broken}) or uninstall it") from None


def _broken_package(error: ImportError) -> str | None:
    """The installed distribution whose import raised `error` (from the traceback's files), if any."""
    import traceback

    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        match = re.search(r"site-packages/([A-Za-z0-9_]+)/", frame.filename.replace("\\", "/"))
        if match and match.group(1) != "transformers":
            return match.group(1).replace("_", "-")
    return None


def chat_template_text(value: str) -> str:
    """The recipe's `model.chat_template` as template text: inline Jinja as it is, or a file's text.

    Jinja text is never probed as a path: a real template (Llama-3's is 389 characters) makes
    `Path.is_file` raise `OSError: File name too long`. A template always holds `{{` or `{%`;
    anything else must name an existing file."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # not a usable path either (too long, bad characters)
        is_file = False
    if not is_file:
        raise UserError(f"model.chat_template: {value[:80]}: neither a Jinja template (no {{{{ or {{%) "
                        "nor an existing file; give the template text or a path to a .jinja file")
    return path.read_text(encoding="utf-8")


def load_tokenizer(path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    from transformers import AutoTokenizer

    tok = load_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = chat_template_text(chat_template)
    if tok.chat_template is None:
        raise UserError(f"{path}: the tokenizer has no chat template; set model.chat_template in the recipe")
    template_with_bos = bos_completed_template(tok)
    if template_with_bos is not None:
        tok.chat_template = template_with_bos
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def bos_completed_template(tokenizer) -> str | None:
    """The chat template with `{{ bos_token }}` in front when it renders no BOS although the
    tokenizer adds one to what it encodes; None when nothing is missing.

    synpo tokenizes rendered chats with add_special_tokens=False so that a template which writes
    its own BOS (Llama-3, Mistral-Instruct) gets exactly one. A template that writes none
    (alignment-handbook's, on zephyr-7b-sft-full) was trained through a tokenizer that added the
    BOS itself: without it here every prompt the model sees would lack the token it always had."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("a")["input_ids"][:1] != [bos]:
        return None  # the tokenizer adds no BOS (Qwen): the template is the whole story
    chat = [{"role": "user", "content": "a"}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render this: preflight reports it
        return None
    if tokenizer(text, add_special_tokens=False)["input_ids"][:1] == [bos]:
        return None
    return "{{ bos_token }}" + tokenizer.chat_template


def effective_chat_template(path: str, trust_remote_code: bool = False, chat_template: str | None = None) -> str:
    """The template synpo renders `path`'s chats with (the recipe's override, BOS completed), as text
    for a process that loads the tokenizer itself (the vLLM worker)."""
    return load_tokenizer(path, trust_remote_code=trust_remote_code, chat_template=chat_template).chat_template


def torch_dtype(name: str):
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def _require_bnb():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("train.quantization needs bitsandbytes: pip install -e '.[bnb]'") from None


def bnb_config(quantization: str, compute_dtype=None):
    """transformers' BitsAndBytesConfig for "4bit" (NF4, double quantization) or "8bit" (LLM.int8)."""
    import torch
    from transformers import BitsAndBytesConfig

    _require_bnb()
    if compute_dtype is None or compute_dtype == "auto":
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise UserError(f"train.quantization: {quantization!r} is not one of 4bit, 8bit")


def load_causal_lm(path: str, *, dtype: str = "auto", adapter: str | None = None, device: str = "cpu",
                   trust_remote_code: bool = False, quantization: str | None = None):
    """A causal LM ready for inference or training; a PEFT adapter, if given, merged in."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    if quantization:
        kwargs.update(quantization_config=bnb_config(quantization, torch_dtype(dtype)), device_map={"": device})
    model = load_pretrained(AutoModelForCausalLM.from_pretrained, path, "model", **kwargs)
    if not quantization:
        model.to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole
SAMPLED_CHUNKS, CHUNK_BYTES = 32, 1 << 20


def checkpoint_fingerprint(path: str) -> str:
    """A fingerprint of a model directory's content, for caches keyed by the model evaluated.

    Every file's relative path and size; small files (configs, tokenizer, chat template, a tiny
    model's weights) hashed whole; larger ones (7B shards) hashed on their first and last
    megabyte (the safetensors header with its offsets is at the start) and 30 more megabytes
    spread evenly, so a retrained checkpoint of the same shapes differs in seconds, not
    minutes of reading 16 GB. A hub id has no local content: the id is its identity."""
    import hashlib

    p = Path(path).expanduser()
    if not p.is_dir():
        return hashlib.sha256(f"hub:{path}".encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(p).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= FULL_HASH_BYTES:
                digest.update(fh.read())
                continue
            step = (size - CHUNK_BYTES) // (SAMPLED_CHUNKS - 1)
            for i in range(SAMPLED_CHUNKS):
                fh.seek(i * step)
                digest.update(fh.read(CHUNK_BYTES))
    return digest.hexdigest()[:16]
