"""Query sets for the quality-signal tests: sentences of the pydoc corpus (tests/data) as
in-distribution queries, and sentences of another corpus (kitchen recipes, generated from a
fixed vocabulary) as a shifted distribution."""

from __future__ import annotations

import random
import re

from tests.conftest import DATA, load_jsonl

_DISHES = ["onions", "garlic", "tomatoes", "carrots", "lentils", "rice", "chicken", "mushrooms",
           "potatoes", "spinach", "butter", "cream", "basil", "ginger", "noodles", "beans"]  # fmt: skip
_VERBS = ["simmer", "roast", "chop", "whisk", "knead", "saute", "braise", "grill", "stir",
          "season", "marinate", "bake"]  # fmt: skip
_WHEN = ["until golden", "over low heat", "for ten minutes", "in a heavy pan", "with a pinch of salt",
         "before serving", "in the oven", "until tender"]  # fmt: skip


def corpus() -> list[dict[str, str]]:
    """The pydoc sections as documents {id, text}."""
    return [
        {"id": str(r["id"]), "text": str(r["text"])}
        for r in load_jsonl(DATA / "pydoc_sections.jsonl")
    ]


def pydoc_sentences(seed: int = 0) -> list[str]:
    """Sentences of the pydoc sections with at least six words, shuffled."""
    out = []
    for doc in corpus():
        for sentence in re.split(r"(?<=[.!?])\s+", doc["text"].replace("\n", " ")):
            if len(sentence.split()) >= 6:
                out.append(sentence.strip()[:300])
    random.Random(seed).shuffle(out)
    return out


def recipe_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(_VERBS)} the {rng.choice(_DISHES)} and {rng.choice(_DISHES)} "
        f"{rng.choice(_WHEN)}, then {rng.choice(_VERBS)} the {rng.choice(_DISHES)}"
        for _ in range(n)
    ]
