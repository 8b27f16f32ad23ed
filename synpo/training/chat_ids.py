"""Training ids that are the chat template's ids, for SFT, DPO and SimPO alike.

TRL's SFTTrainer and DPOTrainer tokenise conversational rows with `apply_chat_template`, so the
ids they train on are the template's. TRL's CPOTrainer (SimPO) does not: it renders the text,
then prepends the tokenizer's BOS when the prompt does not start with it and appends the
tokenizer's eos when an answer does not end with it. With a template whose turns end in
another token that trains on a token the model never sees at inference (Qwen2.5:
`<|im_end|>\\n<|im_end|>`; a Llama-3 base tokenizer with the Llama-3 chat template:
`<|eot_id|><|end_of_text|>`). And it truncates only the answer, keeping a row whose prompt
fills `max_length` with zero answer tokens: SimPO's length-normalised log-probability is then
0/0, a NaN loss. `SimPOTrainer` tokenises as the template does, and `drop_long_prompts` removes
(and counts) such rows before any trainer sees them.
"""

from __future__ import annotations

from trl.experimental.cpo import CPOTrainer


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt's ids with the generation prompt, as the engines render it for generation."""
    from synpo.engines.hf import render_chat

    return render_chat(tokenizer, messages)


def drop_long_prompts(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Rows whose prompt leaves room for at least one answer token within max_length, and how
    many were dropped (the rule TRL's SFT/DPO trainers apply silently; here it is counted)."""
    kept = [r for r in rows if len(prompt_ids(tokenizer, r["prompt"])) < max_length]
    return kept, len(rows) - len(kept)


def drop_cut_answers(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """SFT rows whose whole conversation fits in max_length, and how many did not. TRL would cut
    such a row's answer at max_length: the model would learn the answer without its end (no end of
    turn), i.e. not to stop. Dropped and counted instead."""
    kept = [r for r in rows if len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                                                 return_dict=True)["input_ids"]) <= max_length]
    return kept, len(rows) - len(kept)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class SimPOTrainer(CPOTrainer):
    """CPOTrainer whose rows are the chat template's ids: no BOS or eos of its own.

    CPOTrainer hands `tokenize_row` the rendered prompt (with the generation prompt) and the
    rendered rest of each conversation; prompt + answer tokenised together is exactly
    `apply_chat_template(prompt + answer)`. The answer starts where the prompt's ids and the
    conversation's diverge (as TRL's DPOTrainer does); the sequence is cut at max_length, and
    rows whose prompt fills it were dropped beforehand (`drop_long_prompts`)."""

    def tokenize_row(self, feature, model=None) -> dict:
        tokenizer = self.processing_class
        prompt = tokenizer(feature["prompt"], add_special_tokens=False)["input_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            ids = tokenizer(feature["prompt"] + feature[side], add_special_tokens=False)["input_ids"]
            start = _common_prefix(prompt, ids)
            ids = ids[: self.max_length]
            row[f"{side}_input_ids"] = ids
            row[f"{side}_attention_mask"] = [1] * len(ids)
            row[f"{side}_labels"] = [-100] * min(start, len(ids)) + ids[start:]
        return row
