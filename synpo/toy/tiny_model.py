"""Build the embedded tiny model: a byte-level BPE tokenizer, a chat template, a small
Llama, SFT-trained with TRL on the toy world's SFT split.

`scripts/build_tiny_model.py` is the command-line face of this module; tests use the
pieces to make tiny stand-ins (random-weight policies, reward models) on the fly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# The prompt generator's tags are whole (non-special) tokens: text like any other, decoded
# with the rest, but one token each so a 1M-parameter model learns the format quickly.
TAG_TOKENS = ["<question>", "</question>", "<solution>", "</solution>"]

# Every turn ends with EOS, so generation stops at the end of the assistant's turn. The
# {% generation %} markers let TRL mask everything but the assistant's words.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

TINY_ARCH = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384, max_position_embeddings=512)


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Llama-like special tokens and our chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = [PAD, BOS, EOS, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Plain tokenizer(text) adds BOS like Llama's; chat rendering must then not add it twice.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
    )
    from tokenizers import AddedToken

    fast.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_random_model(tokenizer, seed: int = 0, **arch):
    """A randomly initialised Llama sized by TINY_ARCH (overridable), matched to `tokenizer`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **{**TINY_ARCH, **arch},
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    return model


def sft_train(model, tokenizer, rows: list[dict], out_dir: str | Path, *, steps: int, lr: float,
              batch_size: int = 32, seed: int = 0) -> dict:
    """SFT `model` on prompt/response rows with TRL's SFTTrainer (loss on the answers only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ])
    args = SFTConfig(
        output_dir=str(out_dir), max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), per_device_train_batch_size=batch_size, weight_decay=0.0,
        seed=seed, data_seed=seed, use_cpu=True, bf16=False, gradient_checkpointing=False,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], max_length=256,
        dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    return {"train_loss": result.training_loss, "steps": result.global_step}


def tokenizer_corpus(splits: dict[str, list[dict]], templates: list[str]) -> list[str]:
    texts = [r["prompt"] for r in splits["sft"] + splits["seed"]]
    texts += [r["response"] for r in splits["sft"] + splits["seed"]]
    texts += [r["text"] for r in splits["corpus"]]
    texts += templates
    random.Random(0).shuffle(texts)
    return texts


def save_model(model, tokenizer, out_dir: str | Path, meta: dict | None = None) -> None:
    """Save a standard HF checkpoint directory (safetensors, tokenizer, chat template, generation config)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if meta is not None:
        (out_dir / "synpo_build.json").write_text(json.dumps(meta, indent=2) + "\n")
