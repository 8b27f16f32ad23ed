"""Build synpo/corpora/python_docs.jsonl: the prose paragraphs of the Python documentation's topic
pages that every CPython ships as `pydoc_data.topics` (the text `help("TOPIC")` prints; the Python
Software Foundation's documentation, PSF License Version 2). A real English text corpus that exists
on any machine with Python, for recipes that must run without downloads (recipes/smollm2-135m-cpu.yaml).

    python scripts/build_python_docs_corpus.py [OUT]

Kept: paragraphs (blank-line separated) of 120-1200 characters whose lines are not indented (code,
grammar rules and tables are) and that hold no `>>>` prompt; lines joined with spaces. Each row:
{"text", "topic"}. The result depends on the Python version it is built with (3.11 for the shipped
file), not on anything else.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "synpo" / "corpora" / "python_docs.jsonl"


def paragraphs():
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[topic]):
            lines = block.strip("\n").splitlines()
            if not lines or any(line.startswith((" ", "\t")) for line in lines) or ">>>" in block:
                continue
            text = " ".join(line.strip() for line in lines)
            if 120 <= len(text) <= 1200 and not set(text) <= set("*=-~^ "):
                yield {"text": text, "topic": topic}


def main(out: Path = OUT) -> None:
    rows = list(dict.fromkeys(json.dumps(r, ensure_ascii=False) for r in paragraphs()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{out}: {len(rows)} paragraphs, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
