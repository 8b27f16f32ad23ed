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

from pydantic import BaseModel, ConfigDict

from synpo.data.keywords import corpus_keywords, seed_keywords
from synpo.data.loaders import iter_corpus
from synpo.decontamination import Decontaminator
from synpo.engines import Request, generate, sampling_of
from synpo.errors import UserError
from synpo.io import read_jsonl, write_json, write_jsonl
from synpo.recipe import CorpusData, EngineConfig, ModelConfig, SamplingConfig, ScorerConfig, TrainConfig
from synpo.run import stage_seed
from synpo.stages.train import Launch, train
from synpo.templates import render

QUESTION = re.compile(r"^\s*<question>(.*)$", re.S)
# The question ends at its closing tag; a small model sometimes closes with the solution's
# tags instead, which still ends the question unambiguously.
QUESTION_END = ["</question>", "<solution>", "</solution>"]


class GeneratorTraining(BaseModel):
    """Once: G <- SFT(θ0, keywords -> seed question/solution)."""

    model_config = ConfigDict(frozen=True)
    keywords: int
    noise_keywords: int
    train: TrainConfig
    base: ModelConfig
    seed: int


class PromptWriting(BaseModel):
    """Round t: X_t, the prompts G writes from corpus keywords, filtered."""

    model_config = ConfigDict(frozen=True)
    round: int
    num_prompts: int
    corpus: CorpusData
    sampling: SamplingConfig
    max_prompt_chars: int
    validate_prompts: bool
    scorer: ScorerConfig | None
    """The scorer that says which prompts are valid tasks (None: validate_prompts is off)."""
    decontaminate_similarity: float
    decontaminate_ngram: int
    decontaminate_threshold: float
    eval_suites: list[str]
    eval_data_dir: str | None
    """The evaluation sets no prompt may overlap."""
    base: ModelConfig
    engine: EngineConfig
    seed: int


class SeedPrompts(BaseModel):
    """Round t without G (`prompt_generator.enabled: false`, an ablation): a draw of the seed prompts."""

    model_config = ConfigDict(frozen=True)
    round: int
    num_prompts: int
    seed: int


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


def train_prompt_generator(inputs: GeneratorTraining, theta0: str, seed_rows: list[dict], data: Path, out: Path,
                           work: Path, launch: Launch, logs: Path) -> dict:
    """G, fine-tuned from θ0 on keyword -> question/solution rows built from the seed set (also kept in `data`)."""
    rng = random.Random(stage_seed(inputs.seed, "data"))
    rows = generator_training_rows(seed_rows, inputs.keywords, inputs.noise_keywords, rng)
    if not rows:
        raise UserError(f"{out.name}: no training rows: no seed prompt has {inputs.keywords} content keywords")
    write_jsonl(data, rows)
    write_jsonl(work / "train.jsonl", rows)
    metrics = train("sft", theta0, work / "train.jsonl", inputs.train, inputs.base,
                    stage_seed(inputs.seed, "train"), out, work, launch, logs)
    return {"rows": len(rows), "start": theta0, **metrics}


def keyword_triples(corpus: CorpusData, n: int, rng: random.Random, skip: int) -> list[list[str]]:
    """n keyword triples (3 keywords of one paragraph each), from consecutive corpus paragraphs
    after the first `skip` (earlier rounds' share); a corpus too small is read round again."""
    triples: list[list[str]] = []
    for attempt in range(2 + n):
        found = False
        for position, paragraph in enumerate(iter_corpus(corpus)):
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
    raise UserError(f"{corpus.path}: no paragraph has 3 content keywords to build prompts from")


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


def write_prompts(inputs: PromptWriting, generator: Path, earlier: list[Path], eval_prompts: list[str],
                  seed_prompts: list[str], out: Path, work: Path, scorer) -> dict:
    """Round t's prompts.jsonl, with a stats file beside it."""
    t = inputs.round
    rng = random.Random(stage_seed(inputs.seed, "keywords"))
    triples = keyword_triples(inputs.corpus, inputs.num_prompts, rng, skip=(t - 1) * inputs.num_prompts)
    requests = [Request(f"r{t}-q{i:06d}", [{"role": "user",
                                            "content": render("question_generation", keywords=", ".join(kw))}])
                for i, kw in enumerate(triples)]
    sampling = sampling_of(inputs.sampling, stage_seed(inputs.seed, "sampling"), stop=QUESTION_END)
    completions = generate(generator, requests, sampling, base=inputs.base, engine=inputs.engine,
                           shard_dir=work / "shards", desc=f"round {t}: prompts")

    seen = set(seed_prompts) | {normalise(p) for p in seed_prompts}
    for path in earlier:
        for row in read_jsonl(path):
            seen.update((row["prompt"], normalise(row["prompt"])))
    contaminated = Decontaminator(eval_prompts, similarity=inputs.decontaminate_similarity,
                                  ngram=inputs.decontaminate_ngram, ngram_threshold=inputs.decontaminate_threshold)
    valid = scorer.valid if inputs.validate_prompts else (lambda ps: [True] * len(ps))
    kept, dropped = filter_prompts(completions, triples, max_chars=inputs.max_prompt_chars, seen=seen,
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


def draw_seed_prompts(inputs: SeedPrompts, seed_rows: list[dict], out: Path) -> dict:
    """Round t's prompts.jsonl drawn from the seed prompts instead of written by G (`prompt_generator.enabled:
    false`, an ablation): num_prompts of them at most, in one seeded order, so that rounds take disjoint
    slices while the seed set lasts (and wrap around after)."""
    t = inputs.round
    order = list(range(len(seed_rows)))
    # one order for every round: rounds take disjoint slices
    random.Random(inputs.seed).shuffle(order)
    n = min(inputs.num_prompts, len(order))
    start = (t - 1) * n
    picks = [order[(start + i) % len(order)] for i in range(n)]
    rows = [{"id": f"r{t}-s{i:06d}", "prompt": seed_rows[j]["prompt"], "keywords": [], "seed_id": seed_rows[j]["id"],
             "round": t, "stage": "prompts", "model": "seed"} for i, j in enumerate(picks)]
    write_json(out.with_name("prompts_stats.json"), {"generated": 0, "kept": len(rows), "dropped": {},
                                                     "source": "seed"})
    write_jsonl(out, rows)
    return {"source": "seed", "kept": len(rows)}
