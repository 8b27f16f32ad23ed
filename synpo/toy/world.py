"""The toy world: instruction tasks a program can check.

Every task belongs to a *family* (sort numbers, reverse words, ...). A family owns a few
phrasings (templates with slots), draws its arguments from a small vocabulary, computes the
gold answer, and can parse a prompt back into a task. Parsing is what makes the checker
usable as a scorer on *generated* prompts: a prompt is a valid task exactly when one family
parses it.

The checker gives partial credit, so it can play the part of the paper's reward model: a
response with the right items in the wrong order scores between 0 and 1, only the exact
gold string scores 1.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

CATEGORIES: dict[str, list[str]] = {
    "fruits": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon"],
    "animals": ["cat", "dog", "horse", "tiger", "lion", "rabbit", "mouse", "eagle", "shark", "whale"],
    "colors": ["red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown", "gray"],
    "tools": ["hammer", "saw", "drill", "wrench", "shovel", "ladder", "rope", "nail", "brush", "axe"],
}
ITEMS: list[str] = [w for words in CATEGORIES.values() for w in words]
CATEGORY_OF: dict[str, str] = {w: c for c, words in CATEGORIES.items() for w in words}

# Slot name -> regex that parses it back. Lists are ", "-joined numbers or " "-joined words.
_SLOT_PATTERNS = {
    "nums": r"(\d{1,2}(?:, \d{1,2}){2,6})",
    "words": r"([a-z]+(?: [a-z]+){1,5})",
    "items": r"([a-z]+(?:, [a-z]+){2,6})",
    "category": r"(" + "|".join(CATEGORIES) + r")",
    "a": r"(\d{1,2})",
    "b": r"(\d{1,2})",
}


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    args: dict = field(hash=False, compare=False)
    gold: str = ""
    template: int = 0


class Family:
    """One kind of task: its phrasings, argument sampler and gold answer.

    `templates` pairs a phrasing with the fixed arguments it implies (e.g. "ascending").
    `answer_kind` is "list" (compared item by item) or "number".
    """

    name: str = ""
    answer_kind: str = "list"
    templates: list[tuple[str, dict]] = []
    sloppy_templates: frozenset[int] = frozenset()
    """Phrasings the SFT split's weak teacher answers with chatter around the answer."""

    @property
    def sloppy_frame(self) -> str:
        return "The answer is {}." if self.answer_kind == "number" else "Sure! Here it is: {}"

    def sample_args(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def gold(self, args: dict) -> str:
        raise NotImplementedError

    def args_from_slots(self, slots: dict[str, str], fixed: dict) -> dict | None:
        raise NotImplementedError

    # ---- shared machinery -------------------------------------------------------------
    def __init__(self) -> None:
        self._regexes = [(self._compile(text), fixed) for text, fixed in self.templates]

    @staticmethod
    def _compile(text: str) -> re.Pattern:
        pattern, pos = "", 0
        for m in re.finditer(r"\{(\w+)\}", text):
            pattern += re.escape(text[pos : m.start()]) + f"(?P<{m.group(1)}>{_SLOT_PATTERNS[m.group(1)][1:-1]})"
            pos = m.end()
        pattern += re.escape(text[pos:])
        return re.compile(pattern)

    def render(self, template_index: int, args: dict) -> str:
        text, _ = self.templates[template_index]
        return text.format(**self.slots_from_args(args))

    def slots_from_args(self, args: dict) -> dict[str, str]:
        slots = {}
        if "nums" in args:
            slots["nums"] = ", ".join(map(str, args["nums"]))
        if "words" in args:
            slots["words"] = " ".join(args["words"])
        if "items" in args:
            slots["items"] = ", ".join(args["items"])
        for key in ("category", "a", "b"):
            if key in args:
                slots[key] = str(args[key])
        return slots

    def sample(self, rng: random.Random) -> Task:
        index = rng.randrange(len(self.templates))
        args = {**self.sample_args(rng), **self.templates[index][1]}
        prompt = self.render(index, args)
        return Task(self.name, prompt, args, self.gold(args), index)

    def parse(self, prompt: str) -> Task | None:
        for index, (regex, fixed) in enumerate(self._regexes):
            m = regex.fullmatch(prompt)
            if m:
                args = self.args_from_slots(m.groupdict(), fixed)
                if args is not None:
                    return Task(self.name, prompt, args, self.gold(args), index)
        return None


def _nums(text: str) -> list[int]:
    return [int(x) for x in text.split(", ")]


def _known_words(words: list[str]) -> list[str] | None:
    return words if all(w in CATEGORY_OF for w in words) else None


class SortNumbers(Family):
    name = "sort_numbers"
    sloppy_templates = frozenset({2, 3})
    templates = [
        ("Sort these numbers in ascending order: {nums}", {"descending": False}),
        ("Sort these numbers in descending order: {nums}", {"descending": True}),
        ("Arrange the numbers from smallest to largest: {nums}", {"descending": False}),
        ("Arrange the numbers from largest to smallest: {nums}", {"descending": True}),
        ("Put the following numbers in increasing order: {nums}", {"descending": False}),
        ("Put the following numbers in decreasing order: {nums}", {"descending": True}),
    ]

    def sample_args(self, rng):
        return {"nums": rng.sample(range(100), rng.randint(3, 4))}

    def gold(self, args):
        return ", ".join(map(str, sorted(args["nums"], reverse=args["descending"])))

    def args_from_slots(self, slots, fixed):
        return {"nums": _nums(slots["nums"]), **fixed}


class ReverseWords(Family):
    name = "reverse_words"
    sloppy_templates = frozenset({2})
    templates = [
        ("Reverse the order of these words: {words}", {}),
        ("Write these words in reverse order: {words}", {}),
        ("List these words backwards: {words}", {}),
    ]

    def sample_args(self, rng):
        return {"words": rng.sample(ITEMS, rng.randint(3, 4))}

    def gold(self, args):
        return " ".join(reversed(args["words"]))

    def args_from_slots(self, slots, fixed):
        words = _known_words(slots["words"].split(" "))
        return None if words is None else {"words": words}


class Uppercase(Family):
    name = "uppercase"
    sloppy_templates = frozenset({2})
    templates = [
        ("Write these words in capital letters: {words}", {}),
        ("Convert these words to uppercase: {words}", {}),
        ("Change these words to upper case: {words}", {}),
    ]

    def sample_args(self, rng):
        return {"words": rng.sample(ITEMS, rng.randint(2, 3))}

    def gold(self, args):
        return " ".join(w.upper() for w in args["words"])

    def args_from_slots(self, slots, fixed):
        words = _known_words(slots["words"].split(" "))
        return None if words is None else {"words": words}


class CountCategory(Family):
    name = "count_category"
    answer_kind = "number"
    sloppy_templates = frozenset({2})
    templates = [
        ("How many {category} are in this list: {items}?", {}),
        ("Count the {category} in this list: {items}", {}),
        ("Tell me the number of {category} in: {items}", {}),
    ]

    def sample_args(self, rng):
        category = rng.choice(list(CATEGORIES))
        n = rng.randint(3, 4)
        hits = rng.randint(0, n)
        others = [w for w in ITEMS if CATEGORY_OF[w] != category]
        items = rng.sample(CATEGORIES[category], hits) + rng.sample(others, n - hits)
        rng.shuffle(items)
        return {"category": category, "items": items}

    def gold(self, args):
        return str(sum(CATEGORY_OF[w] == args["category"] for w in args["items"]))

    def args_from_slots(self, slots, fixed):
        items = _known_words(slots["items"].split(", "))
        return None if items is None else {"category": slots["category"], "items": items}


class FilterCategory(Family):
    name = "filter_category"
    sloppy_templates = frozenset({2})
    templates = [
        ("List only the {category} from: {items}", {}),
        ("Keep only the {category} in this list: {items}", {}),
        ("Which of these are {category}: {items}?", {}),
    ]

    def sample_args(self, rng):
        category = rng.choice(list(CATEGORIES))
        n = rng.randint(3, 4)
        hits = rng.randint(1, n - 1)
        others = [w for w in ITEMS if CATEGORY_OF[w] != category]
        items = rng.sample(CATEGORIES[category], hits) + rng.sample(others, n - hits)
        rng.shuffle(items)
        return {"category": category, "items": items}

    def gold(self, args):
        kept = [w for w in args["items"] if CATEGORY_OF[w] == args["category"]]
        return ", ".join(kept) if kept else "none"

    def args_from_slots(self, slots, fixed):
        items = _known_words(slots["items"].split(", "))
        return None if items is None else {"category": slots["category"], "items": items}


class ExtremeNumber(Family):
    name = "extreme_number"
    answer_kind = "number"
    sloppy_templates = frozenset({4, 5})
    templates = [
        ("Which number is the largest: {nums}?", {"largest": True}),
        ("Which number is the smallest: {nums}?", {"largest": False}),
        ("Find the biggest number in: {nums}", {"largest": True}),
        ("Find the lowest number in: {nums}", {"largest": False}),
        ("What is the maximum of {nums}?", {"largest": True}),
        ("What is the minimum of {nums}?", {"largest": False}),
    ]

    def sample_args(self, rng):
        return {"nums": rng.sample(range(100), rng.randint(3, 4))}

    def gold(self, args):
        return str(max(args["nums"]) if args["largest"] else min(args["nums"]))

    def args_from_slots(self, slots, fixed):
        return {"nums": _nums(slots["nums"]), **fixed}


class Arithmetic(Family):
    name = "arithmetic"
    answer_kind = "number"
    sloppy_templates = frozenset({1, 3})
    templates = [
        ("What is {a} plus {b}?", {"op": "+"}),
        ("Add {a} and {b}.", {"op": "+"}),
        ("What is {a} minus {b}?", {"op": "-"}),
        ("Subtract {b} from {a}.", {"op": "-"}),
    ]

    def sample_args(self, rng):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return {"a": max(a, b), "b": min(a, b)}  # no negative results

    def gold(self, args):
        return str(args["a"] + args["b"] if args["op"] == "+" else args["a"] - args["b"])

    def args_from_slots(self, slots, fixed):
        a, b = int(slots["a"]), int(slots["b"])
        if fixed["op"] == "-" and b > a:
            return None
        return {"a": a, "b": b, **fixed}


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        SortNumbers(),
        ReverseWords(),
        Uppercase(),
        CountCategory(),
        FilterCategory(),
        ExtremeNumber(),
        Arithmetic(),
    )
}


def sample_task(rng: random.Random, family: str | None = None) -> Task:
    return FAMILIES[family or rng.choice(sorted(FAMILIES))].sample(rng)


def weak_teacher(task: Task) -> str:
    """The answer of the SFT split's teacher: right in content, but for some phrasings of
    every family it wraps the answer in chatter ("The answer is 12.") that the checker
    counts as wrong. θ0 learns the habit; the seed set's gold answers never have it.
    This is the toy world's version of the paper's gap between the SFT data's answers and
    the seed set's GPT-4 answers, which the improver learns to close."""
    family = FAMILIES[task.family]
    if task.template in family.sloppy_templates:
        return family.sloppy_frame.format(task.gold)
    return task.gold


def parse_task(prompt: str) -> Task | None:
    """The task a prompt states, or None when no family's phrasing matches it exactly."""
    prompt = prompt.strip()
    for family in FAMILIES.values():
        task = family.parse(prompt)
        if task is not None:
            return task
    return None


def is_valid_prompt(prompt: str) -> bool:
    return parse_task(prompt) is not None


# ---- the checker ----------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split())


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _list_credit(response: str, gold: str) -> float:
    got, want = re.findall(r"[A-Za-z]+|\d+", response), re.findall(r"[A-Za-z]+|\d+", gold)
    if not got:
        return 0.0
    overlap = sum((Counter(got) & Counter(want)).values())
    f1 = 2 * overlap / (len(got) + len(want))
    order = _lcs(got, want) / max(len(got), len(want))
    return 0.5 * f1 + 0.5 * order


def _number_credit(response: str, gold: str) -> float:
    got = re.findall(r"\d+", response)
    if not got:
        return 0.0
    value, want = int(got[0]), int(gold)
    closeness = max(0.0, 1.0 - abs(value - want) / max(3, want))
    extra = len(re.findall(r"\S+", response)) > 1  # the number plus other words
    return closeness * (0.5 if extra else 1.0)


def score_task(task: Task, response: str) -> float:
    """1.0 for the exact gold answer; partial credit in [0, 0.9] otherwise."""
    if _normalise(response) == task.gold:
        return 1.0
    if task.gold == "none":  # filter_category with no match: any item listed is wrong
        return 0.0
    credit = _number_credit if FAMILIES[task.family].answer_kind == "number" else _list_credit
    return round(0.9 * credit(response, task.gold), 4)


def score(prompt: str, response: str) -> float:
    """Checker score of `response` to `prompt`, in [0, 1]. Raises ValueError on a non-task prompt."""
    task = parse_task(prompt)
    if task is None:
        raise ValueError(f"not a toy task: {prompt!r}")
    return score_task(task, response)


def exact_match(prompt: str, response: str) -> bool:
    return score(prompt, response) == 1.0
