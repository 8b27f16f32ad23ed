"""The self-prompt generator G: its training data, its training, and the prompts it writes.

Training data (once): for each seed prompt x*_i, 2 of its content keywords plus 1 keyword of
another seed prompt x*_j (noise), shuffled, fill the question-generation template (a prompt
with a single keyword gets a second noise keyword, so G always sees three); the target is
`<question>x*_i</question>\n<solution>y*_i</solution>`. G is fine-tuned from θ0.

Each round: keyword triples come from corpus paragraphs (3 keywords of one paragraph); G
samples a question for each; the text inside <question> is kept unless it is unparseable,
empty, over-long, a task the scorer cannot judge, a duplicate (exact or normalised) of a
seed prompt or an earlier round's prompt, or contaminated by an evaluation set (a near-duplicate
or a copied passage of an evaluation prompt: synpo.decontamination).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from synpo.data.keywords import corpus_keywords, seed_keywords
from synpo.data.loaders import iter_corpus
from synpo.decontamination import Decontaminator
from synpo.engines import Request, Sampling, generate_sharded, make_engine
from synpo.errors import UserError
from synpo.io import read_jsonl, write_json, write_jsonl
from synpo.recipe import Recipe
from synpo.templates import render

QUESTION = re.compile(r"^\s*<question>(.*)$", re.S)
# The question ends at its closing tag; a small model sometimes closes with the solution's
# tags instead, which still ends the question unambiguously.
QUESTION_END = ["</question>", "<solution>", "</solution>"]


def generator_training_rows(seed_rows: list[dict], k: int, noise: int, rng: random.Random) -> list[dict]:
    """Keyword -> question/solution SFT rows from the seed set (conversational prompt/completion)."""
    rows = []
    for i, row in enumerate(seed_rows):
        # other prompts than the row itself, enough to fill in for a prompt with few keywords
        picks = rng.sample(range(len(seed_rows)), min(len(seed_rows), k + noise + 1))
        others = [seed_rows[j] for j in picks if j != i]
        keywords = seed_keywords(row["prompt"], [o["prompt"] for o in others], rng, k=k, noise=noise)
        if keywords is None:
            continue
        rows.append({
            "id": row["id"],
            "prompt": [{"role": "user", "content": render("question_generation", keywords=", ".join(keywords))}],
            "completion": [{"role": "assistant",
                            "content": render("question_target", question=row["prompt"], solution=row["response"])}],
            "keywords": keywords,
        })
    return rows


def keyword_triples(recipe: Recipe, n: int, rng: random.Random, skip: int) -> list[list[str]]:
    """n keyword triples (3 keywords of one paragraph each), from consecutive corpus paragraphs
    after the first `skip` (earlier rounds' share); a corpus too small is read round again."""
    triples: list[list[str]] = []
    for attempt in range(2 + n):
        found = False
        for position, paragraph in enumerate(iter_corpus(recipe.data.corpus)):
            if attempt == 0 and position < skip:
                continue
            keywords = corpus_keywords(paragraph, rng, k=3)
            if keywords:
                found = True
                triples.append(keywords)
                if len(triples) == n:
                    return triples
        if not found and attempt > 0:
            break
    raise UserError(f"{recipe.data.corpus.path}: no paragraph has 3 content keywords to build prompts from")


def normalise(prompt: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", prompt.lower()).split())


def filter_prompts(completions, triples, *, max_chars: int, seen: set[str], valid,
                   contaminated) -> tuple[list, Counter]:
    """Kept (prompt, keywords) pairs and a Counter of drop reasons. `seen` is updated."""
    kept, dropped = [], Counter()
    parsed = []
    for completion, keywords in zip(completions, triples, strict=True):
        m = QUESTION.match(completion.text)
        # "stop": a closing tag or end of turn ended it; "length": cut off mid-question.
        if completion.finish_reasons[0] != "stop" or not m:
            dropped["unparseable"] += 1
            continue
        question = m.group(1).strip()
        if not question:
            dropped["empty"] += 1
        elif len(question) > max_chars:
            dropped["too_long"] += 1
        else:
            parsed.append((question, keywords))
    validity = valid([q for q, _ in parsed]) if parsed else []
    contamination = contaminated([q for q, _ in parsed]) if parsed else []  # a reason or None per question
    for (question, keywords), ok, reason in zip(parsed, validity, contamination):
        key = normalise(question)
        if not ok:
            dropped["invalid"] += 1
        elif question in seen or key in seen:
            dropped["duplicate"] += 1
        elif reason is not None:
            dropped["contaminated"] += 1
        else:
            seen.update((question, key))
            kept.append((question, keywords))
    return kept, dropped


def generate_prompts(recipe: Recipe, generator_dir: Path, t: int, out: Path, earlier: list[Path],
                     eval_prompts: list[str], seed_prompts: list[str], work: Path, scorer) -> dict:
    """Round t's prompts.jsonl, with a stats file beside it."""
    cfg = recipe.prompt_generator
    rng = random.Random(f"{recipe.seed}:prompts:{t}")
    triples = keyword_triples(recipe, cfg.num_prompts, rng, skip=(t - 1) * cfg.num_prompts)
    requests = [Request(f"r{t}-q{i:06d}", [{"role": "user",
                                            "content": render("question_generation", keywords=", ".join(kw))}])
                for i, kw in enumerate(triples)]
    sampling = Sampling(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                        max_new_tokens=cfg.sampling.max_new_tokens, seed=rng.randrange(2**31),
                        stop=QUESTION_END)
    engine = make_engine(recipe.engine_for("prompt_generator"), generator_dir, dtype=recipe.model.dtype,
                         trust_remote_code=recipe.model.trust_remote_code, seed=recipe.seed,
                         chat_template=recipe.model.chat_template)
    try:
        completions = generate_sharded(engine, requests, sampling, work / "shards",
                                       shard_size=recipe.engine_for("prompt_generator").shard_size,
                                       desc=f"round {t}: prompts")
    finally:
        engine.close()

    seen = set(seed_prompts) | {normalise(p) for p in seed_prompts}
    for path in earlier:
        for row in read_jsonl(path):
            seen.update((row["prompt"], normalise(row["prompt"])))
    contaminated = Decontaminator(eval_prompts, similarity=cfg.decontaminate_similarity,
                                  ngram=cfg.decontaminate_ngram, ngram_threshold=cfg.decontaminate_threshold)
    valid = scorer.valid if cfg.validate_prompts else (lambda ps: [True] * len(ps))
    kept, dropped = filter_prompts(completions, triples, max_chars=cfg.max_prompt_chars, seen=seen,
                                   valid=valid, contaminated=contaminated)
    provenance = {"round": t, "stage": "prompts", "model": "prompt_generator",
                  "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                               "max_new_tokens": sampling.max_new_tokens}}
    rows = [{"id": f"r{t}-p{i:06d}", "prompt": q, "keywords": kw, **provenance} for i, (q, kw) in enumerate(kept)]
    stats = {"generated": len(requests), "kept": len(rows), "dropped": dict(sorted(dropped.items()))}
    write_json(out.with_name("prompts_stats.json"), stats)
    write_jsonl(out, rows)
    return {"generated": len(requests), "kept": len(rows),
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())}}


def seed_prompts(recipe: Recipe, seed_rows: list[dict], t: int, out: Path) -> dict:
    """Round t's prompts.jsonl drawn from the seed prompts instead of written by G (`prompt_generator.enabled:
    false`, an ablation): num_prompts of them at most, in one seeded order, so that rounds take disjoint
    slices while the seed set lasts (and wrap around after)."""
    order = list(range(len(seed_rows)))
    random.Random(f"{recipe.seed}:seed_prompts").shuffle(order)
    n = min(recipe.prompt_generator.num_prompts, len(order))
    start = (t - 1) * n
    picks = [order[(start + i) % len(order)] for i in range(n)]
    rows = [{"id": f"r{t}-s{i:06d}", "prompt": seed_rows[j]["prompt"], "keywords": [], "seed_id": seed_rows[j]["id"],
             "round": t, "stage": "prompts", "model": "seed"} for i, j in enumerate(picks)]
    write_json(out.with_name("prompts_stats.json"), {"generated": 0, "kept": len(rows), "dropped": {},
                                                     "source": "seed"})
    write_jsonl(out, rows)
    return {"source": "seed", "kept": len(rows)}
