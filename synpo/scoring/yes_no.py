"""A small local LLM as the scorer, read from its next-token probabilities (`scorer.kind: yes_no`).

For machines where no reward model or judge endpoint is at hand (a CPU, a laptop): the model at
`scorer.path` (a checkpoint directory or a GGUF file, e.g. θ0 itself) is asked, through its own chat
template, whether the response is a good answer to the prompt (`prompts/judge_yes_no.jinja`, or
`scorer.template`), and the score is

    P("Yes") / (P("Yes") + P("No"))

over the first token of its reply, from one forward pass (no generation, no parsing: a small model
that never writes a well-formed `Rating: [[N]]` still yields a score). Units: a probability in [0, 1];
`improver.gap` / `pairs.gap` are in those units. The scores are only as good as the model: a 135M
model is a weak judge (see the recipe that uses it).
"""

from __future__ import annotations

from synpo.recipe import ScorerConfig

DEFAULT_TEMPLATE = "judge_yes_no.jinja"


class YesNoScorer:
    name = "yes_no"

    def __init__(self, cfg: ScorerConfig, device: str = "auto"):
        self.cfg = cfg
        self.device = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)
        self.model = self.tokenizer = None

    def valid(self, prompts):
        return [True] * len(prompts)

    def _load(self):
        from synpo.gguf import checkpoint
        from synpo.models import load_causal_lm, load_tokenizer
        from synpo.recipe import resolve_path

        path = checkpoint(resolve_path(self.cfg.path))
        self.tokenizer = load_tokenizer(path, trust_remote_code=self.cfg.trust_remote_code)
        self.model = load_causal_lm(path, dtype="float32" if self.device == "cpu" else "auto", device=self.device,
                                    trust_remote_code=self.cfg.trust_remote_code).eval()
        self.answer_ids = [self.tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No")]

    def question(self, prompt: str, response: str) -> list[dict]:
        from synpo.scoring.judge import render_judge_prompt

        template = DEFAULT_TEMPLATE if self.cfg.template == "judge_score.jinja" else self.cfg.template
        return [{"role": "user", "content": render_judge_prompt(template, prompt, response)}]

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        from synpo.engines.hf import render_chat

        if not prompts:
            return []
        if self.model is None:
            self._load()
        rows = [render_chat(self.tokenizer, self.question(p, r))[-self.cfg.max_length:]
                for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.cfg.batch_size):
            batch = order[start:start + self.cfg.batch_size]
            width = max(len(rows[i]) for i in batch)
            # left padding: every row's last real token sits in the last column; positions from the mask
            ids = torch.tensor([[pad] * (width - len(rows[i])) + rows[i] for i in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(rows[i])) + [1] * len(rows[i]) for i in batch], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            probs = logits.softmax(-1)[:, self.answer_ids]
            for i, (yes, no) in zip(batch, probs.tolist()):
                scores[i] = yes / (yes + no) if yes + no > 0 else 0.5
        return scores

    def close(self):
        self.model = self.tokenizer = None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
