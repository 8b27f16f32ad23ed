"""PairRM (llm-blender) as the scorer: it compares two responses to one prompt, it does not rate one.

PairRM reads the prompt and both candidates together and outputs a logit that the first is
better. `compare(prompts, better, worse)` asks llm-blender for that logit in both orders
(`mode="[A,B]+[B,A]"`, which cancels PairRM's position bias). llm-blender then returns, per
row, score(A) - score(B) where both scores come from ranking the two candidates together
(`rank(..., return_scores=True)`): logit(A over B) - logit(B over A), positive when A wins.
That number is the score gap `score_gaps` uses, so `improver.gap` and `pairs.gap` are in
these units (the paper uses τ = 0.20 with PairRM).

`score()` alone has no meaning for a comparer; only the sampling-ranking baseline would need
it, and it ranks its k samples with `rank()` (PairRM's full comparison matrix) instead.

llm-blender is an optional extra (`pip install -e ".[pairrm]"`), imported when the scorer is made
(so a missing package stops the run before any stage). Checked against llm-blender 0.0.2 (its
`Blender.loadranker / compare / rank`) with a tiny random-weight PairRM built locally.
"""

from __future__ import annotations

from synpo.errors import UserError
from synpo.recipe import ScorerConfig, resolve_path


def _encode_texts(texts, tokenizer, max_length=None):
    """llm-blender's `collator.encode_texts` with the tokenizer call transformers 5 kept."""
    p = tokenizer(texts, max_length=max_length, padding="max_length", return_tensors="pt", truncation=True)
    return p["input_ids"], p["attention_mask"]


def _import_blender():
    # llm-blender 0.0.2 predates transformers 5, which removed two names it uses:
    # - transformers.utils.hub.TRANSFORMERS_CACHE, only its default download directory: the hub cache;
    # - tokenizer.batch_encode_plus, called once, in its collator's encode_texts: the same call
    #   through tokenizer(...), with the same arguments.
    import transformers.utils.hub as hub

    if not hasattr(hub, "TRANSFORMERS_CACHE"):
        from huggingface_hub.constants import HF_HUB_CACHE

        hub.TRANSFORMERS_CACHE = HF_HUB_CACHE
    try:
        import llm_blender
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] not in ("llm_blender",):
            raise UserError(f"llm-blender is installed but its dependency {e.name!r} is missing: "
                            "pip install -e \".[pairrm]\"") from None
        raise UserError("scorer.kind pairwise needs the llm-blender package: pip install -e \".[pairrm]\" "
                        "(or pip install llm-blender)") from None
    except ImportError as e:
        raise UserError(f"llm-blender does not import with this environment ({e}); "
                        "check its version against transformers") from None
    from transformers import PreTrainedTokenizerBase

    if not hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        try:
            from llm_blender.pair_ranker import collator
        except ImportError:  # another layout of the package: nothing to adapt
            return llm_blender
        collator.encode_texts = _encode_texts
    return llm_blender


def _quiet(method) -> dict:
    """disable_tqdm where this llm-blender version takes it (synpo shows its own progress)."""
    import inspect

    return {"disable_tqdm": True} if "disable_tqdm" in inspect.signature(method).parameters else {}


class PairwiseScorer:
    name = "pairwise"

    def __init__(self, cfg: ScorerConfig, device: str = "auto", ray_address: str | None = None):
        from synpo.scoring.parallel import ScoringWorkers, wants_workers

        self.cfg = cfg
        self.path = resolve_path(cfg.path)
        self.device = device
        self.blender = None
        _import_blender()  # fail before any stage runs, not hours later at the first comparison
        # copies of PairRM on every GPU (scoring/parallel.py), each given runs of whole batches
        self.workers = ScoringWorkers(cfg, device, ray_address) if wants_workers(cfg, device, ray_address) else None

    def _split(self, method: str, columns: list[list]) -> list:
        """method over runs of whole batches on the copies, concatenated back in row order."""
        from synpo.scoring.parallel import row_blocks

        blocks = row_blocks(len(columns[0]), self.cfg.batch_size, len(self.workers))
        parts = self.workers.map(method, [tuple([c[i] for i in block] for c in columns) for block in blocks])
        return [x for part in parts for x in part]

    def _load(self):
        if self.blender is None:
            import torch

            llm_blender = _import_blender()
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            blender = llm_blender.Blender()
            blender.loadranker(self.path, device=device)
            self.blender = blender
        return self.blender

    def valid(self, prompts):
        return [True] * len(prompts)

    def compare(self, prompts: list[str], better: list[str], worse: list[str]) -> list[float]:
        """Per row, PairRM's rank-score difference of `better` over `worse` (> 0: it wins)."""
        if not prompts:
            return []
        if self.workers is not None:
            return self._split("compare", [list(prompts), list(better), list(worse)])
        blender = self._load()
        logits = blender.compare(list(prompts), list(better), list(worse), batch_size=self.cfg.batch_size,
                                 return_logits=True, mode="[A,B]+[B,A]", **_quiet(blender.compare))
        # Symmetric mode: each candidate's score is its mean row of the 2x2 comparison matrix,
        # (l_AB - l_BA) / 2 for A and (l_BA - l_AB) / 2 for B, so the difference is l_AB - l_BA.
        return [float(x) for x in logits]

    def rank(self, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """Scores of each prompt's candidates relative to each other (PairRM's full comparison matrix)."""
        if self.workers is not None:
            return self._split("rank", [list(prompts), [list(c) for c in candidates]])
        blender = self._load()
        scores = blender.rank(list(prompts), [list(c) for c in candidates], return_scores=True,
                              batch_size=self.cfg.batch_size, **_quiet(blender.rank))
        return [[float(x) for x in row] for row in scores]

    def score(self, prompts, responses):
        raise UserError("scorer.kind pairwise compares two responses and cannot rate one alone; it serves "
                        "pairs.strategy synpo (gaps via compare) and sampling_ranking (via rank)")

    def close(self):
        if self.workers is not None:
            self.workers.close()
        if self.blender is not None:
            import gc

            import torch

            self.blender = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
