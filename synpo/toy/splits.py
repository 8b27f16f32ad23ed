"""Seeded splits of the toy world, written as the JSONL files synpo's loaders read.

- `sft.jsonl`        prompt/response pairs that make the starting model (θ0), answered by a
                     *weak teacher* (see `world.weak_teacher`): right content, but chatter
                     around the answer for some phrasings, as an SFT set's answers fall short
                     of the seed set's (the paper: UltraChat SFT data vs GPT-4 seed answers)
                     A tenth of it asks the assistant to write an instruction (family
                     `write_instruction`), the general skill the prompt generator builds on.
- `seed.jsonl`       prompt/response pairs: the paper's seed set S (gold answers)
- `benchmark.jsonl`  held-out prompts with a reference answer and family
- `corpus.jsonl`     unlabeled paragraphs (`text`) from the same vocabulary, for keywords

Prompts are unique across all four files, so the benchmark never leaks into training.
"""

from __future__ import annotations

import random
from pathlib import Path

from synpo.toy.world import CATEGORIES, FAMILIES, ITEMS, sample_task, weak_teacher

SPLIT_SIZES = {"sft": 10000, "seed": 1500, "benchmark": 560}
CORPUS_SIZE = 3000
DEFAULT_SEED = 1234

# Personal names appear in the corpus so that keyword extraction has names to drop.
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack"]

# Words the corpus talks about tasks with; they overlap the prompts' own keywords.
TASK_WORDS = {
    "verb": ["sort", "arrange", "reverse", "count", "add", "subtract", "convert", "list", "find", "write",
             "change", "keep", "compute"],
    "order": ["ascending", "descending", "increasing", "decreasing", "backwards", "reverse"],
    "size": ["largest", "smallest", "biggest", "lowest", "maximum", "minimum"],
    "noun": ["numbers", "words", "letters", "list", "order", "number"],
    "style": ["capital", "uppercase", "upper"],
    "arith": ["plus", "minus", "add", "subtract", "sum"],
}

SENTENCES = [
    "{name} likes to {verb} the {category} in {order} order.",
    "The {item} and the {item2} were on the list of {category}.",
    "Every morning {name} counts the {category} near the {item}.",
    "{name} wrote the word {item} in {style} letters on the {item2}.",
    "Can you {verb} the {noun} that {name} found beside the {item}?",
    "The {size} {item} in the garden belongs to {name}.",
    "{name} asked for the {size} of the {noun} on the board.",
    "We had to {verb} {number} {category} before the {item2} arrived.",
    "A {color} {item} sat between the {item2} and the {noun}.",
    "{name} tried to {verb} the {noun} {order} while holding a {item}.",
    "Numbers like {n} and {m} are easy to {verb} for {name}.",
    "The teacher told {name} to keep only the {category} and {verb} the rest.",
    "{name} knows that {n} {arith} {m} is easy to work out.",
    "The {size} of the {noun} and the {size2} of the {category} are on the board.",
    "After lunch {name} wrote {number} {category} in {style} letters.",
]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven"]

# A share of the SFT split asks the assistant to *write* an instruction, as general SFT sets
# do. A real SFT model can write questions from pretraining; the tiny model learns it here,
# and the self-prompt generator builds on it.
WRITE_INSTRUCTION_SHARE = 0.1
WRITE_INSTRUCTION = ["Write a new instruction for an assistant.", "Give me a task to do.",
                     "Write one instruction a user might give.", "Make up a question for me."]


def _paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 4)):
        template = rng.choice(SENTENCES)
        fill = {
            "name": rng.choice(NAMES),
            "item": rng.choice(ITEMS),
            "item2": rng.choice(ITEMS),
            "category": rng.choice(list(CATEGORIES)),
            "color": rng.choice(CATEGORIES["colors"]),
            "number": rng.choice(NUMBER_WORDS),
            "size2": rng.choice(TASK_WORDS["size"]),
            "n": rng.randint(0, 99),
            "m": rng.randint(0, 99),
            **{slot: rng.choice(words) for slot, words in TASK_WORDS.items()},
        }
        sentences.append(template.format(**fill))
    return " ".join(sentences)


def build_splits(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
    """All toy splits as lists of rows; the same seed gives the same rows."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    families = sorted(FAMILIES)
    # The benchmark is drawn first and balanced over families, so its size never depends on
    # how many prompts the other splits happen to take.
    for split in ("benchmark", "seed", "sft"):
        rows = []
        while len(rows) < SPLIT_SIZES[split]:
            family = families[len(rows) % len(families)] if split == "benchmark" else None
            task = sample_task(rng, family)
            if task.prompt in seen:
                continue
            seen.add(task.prompt)
            row = {"id": f"{split}-{len(rows):05d}", "prompt": task.prompt, "family": task.family}
            if split == "sft" and rng.random() < WRITE_INSTRUCTION_SHARE:
                row = {**row, "prompt": rng.choice(WRITE_INSTRUCTION), "response": task.prompt,
                       "family": "write_instruction"}
                rows.append(row)
                continue
            if split == "benchmark":
                row["reference"] = task.gold
            else:
                row["response"] = weak_teacher(task) if split == "sft" else task.gold
            rows.append(row)
        splits[split] = rows
    splits["corpus"] = [{"id": f"corpus-{i:05d}", "text": _paragraph(rng)} for i in range(CORPUS_SIZE)]
    return splits


def write_splits(out_dir: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    from synpo.io import write_jsonl

    out_dir = Path(out_dir)
    paths = {}
    for name, rows in build_splits(seed).items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths
