"""Keyword extraction for the self-prompt generator.

Content keywords are lower-cased alphabetic words of 3+ letters that are neither stopwords
nor personal names. Names are found by a documented heuristic, not a tagger:
- a capitalised word that is not the first word of a sentence is a proper noun;
- a capitalised first word of a sentence is a name when it is in the bundled first-name list
  (`NAMES`), or when the same word appears capitalised elsewhere mid-sentence in the text.
"""

from __future__ import annotations

import random
import re

STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each either else ever
every few for from further get gets got had hadn't has hasn't have haven't having he he'd he'll he's her here here's
hers herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it's its itself just let's
like made make many may me might more most much must mustn't my myself need no nor not now of off often on once one
only or other ought our ours ourselves out over own per please rather really same say says shall shan't she she'd
she'll she's should shouldn't since so some such than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've this those though through thus to too toward under until up upon
us use used using very via was wasn't way we we'd we'll we're we've well were weren't what what's when when's where
where's whether which while who who's whom whose why why's will with within without won't would wouldn't yes yet you
you'd you'll you're you've your yours yourself yourselves also another anything around away back because become came
come comes even give given goes going gone good great here keep let lets look looks much next put same see seen seem
seems still take takes tell tells thing things think told took want wanted wants went whatever whenever wherever
""".split())

NAMES = frozenset("""
aaron abigail adam alex alexander alice amanda amy andrew angela anna anne anthony ashley barbara ben benjamin betty
bob brandon brian carol caroline catherine charles charlie chris christopher daniel david deborah dennis diana
donald dorothy edward elizabeth emily emma eric frank gary george grace hannah harry helen henry irene isabella jack
jacob james jane jason jennifer jessica john jonathan joseph joshua julia justin karen kate kathleen kevin kimberly
laura linda lisa liam lucas lucy margaret maria mark mary matthew michael michelle nancy nathan nicholas noah oliver
olivia patricia paul peter rachel rebecca richard robert ryan samuel sandra sarah scott sophia stephen steven susan
thomas timothy tom victoria william zoe
""".split())

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def content_keywords(text: str) -> list[str]:
    """The text's content keywords, lower-cased, in order of first appearance, without repeats."""
    proper: set[str] = set()
    sentences = [s for s in _SENTENCE.split(text) if s.strip()]
    for sentence in sentences:
        for i, m in enumerate(_WORD.finditer(sentence)):
            if i > 0 and m.group()[0].isupper():
                proper.add(m.group().lower())
    keywords: list[str] = []
    for sentence in sentences:
        for i, m in enumerate(_WORD.finditer(sentence)):
            word = m.group().lower().strip("'-")
            if len(word) < 3 or word in STOPWORDS or word in proper or word in keywords:
                continue
            if i == 0 and m.group()[0].isupper() and word in NAMES:
                continue
            keywords.append(word)
    return keywords


def seed_keywords(prompt: str, other_prompts: list[str], rng: random.Random, k: int = 2,
                  noise: int = 1) -> list[str] | None:
    """k content keywords of `prompt` plus noise keywords of other prompts, shuffled: always
    k + noise keywords when the other prompts have enough, one keyword per other prompt.

    A prompt with fewer than k content keywords gets more noise in their place, so that the
    generator always sees as many keywords as corpus triples give it at generation time;
    otherwise it learns that a 3-keyword input never asks for a one-keyword task ("What is
    the maximum of ...") and never writes one. None when `prompt` has no content keyword.
    Noise keywords are drawn among words `prompt` does not contain, so noise is off-topic.
    """
    own = content_keywords(prompt)
    if not own:
        return None
    chosen = rng.sample(own, min(k, len(own)))
    wanted = k + noise - len(chosen)
    for other in other_prompts:
        if wanted == 0:
            break
        candidates = [w for w in content_keywords(other) if w not in own and w not in chosen]
        if candidates:
            chosen.append(rng.choice(candidates))
            wanted -= 1
    rng.shuffle(chosen)
    return chosen


def corpus_keywords(paragraph: str, rng: random.Random, k: int = 3) -> list[str] | None:
    """k random content keywords of one paragraph, or None when it has fewer."""
    words = content_keywords(paragraph)
    return rng.sample(words, k) if len(words) >= k else None
