"""scorer.kind yes_no (synpo.scoring.yes_no): a local LM's P(Yes) / (P(Yes) + P(No)) as the score."""

from __future__ import annotations

import pytest
import torch

from synpo.errors import UserError
from synpo.recipe import ScorerConfig, load_recipe

torch.set_num_threads(1)

PROMPTS = ["What is the capital of France?", "List three fruits.", "What is the capital of France?"]
ANSWERS = ["The capital of France is Paris, a city on the Seine.", "Apple, banana, cherry.", "Bananas."]


def test_yes_no_needs_a_model_path(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("scorer:\n  kind: yes_no\n")
    with pytest.raises(UserError, match="scorer.path: required when kind is yes_no"):
        load_recipe(recipe)


def test_scores_are_the_models_yes_probability_batched_or_not(smollm2):
    from synpo.engines.hf import render_chat
    from synpo.models import load_causal_lm, load_tokenizer
    from synpo.scoring.yes_no import YesNoScorer

    batched = YesNoScorer(ScorerConfig(kind="yes_no", path=str(smollm2), batch_size=3), device="cpu")
    scores = batched.score(PROMPTS, ANSWERS)
    tokenizer, model = load_tokenizer(str(smollm2)), load_causal_lm(str(smollm2), dtype="float32")
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    for prompt, answer, score in zip(PROMPTS, ANSWERS, scores):
        ids = render_chat(tokenizer, batched.question(prompt, answer))
        assert tokenizer.decode(ids).endswith("Reply with Yes or No.<|im_end|>\n<|im_start|>assistant\n")
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        expected = (probs[yes] / (probs[yes] + probs[no])).item()
        assert score == pytest.approx(expected, abs=1e-4)  # left-padded batch = one row alone
    assert len(set(scores)) == 3 and all(0 < s < 1 for s in scores)
