"""Write the unfiltered built-in set ``arithmetic-all``: 60 one-step word
problems from the six templates of the filtered ``arithmetic`` set, drawn with a
fixed seed (the same file every time).

``arithmetic`` holds 17 problems picked, from an earlier draw of 60 from these
templates, because the embedded model solved each in 2 to 7 of 8 samples; that
draw was not kept.  This set is not filtered by any model, so figures on it are
not figures on a set chosen for the model.

    python tools/make_arithmetic.py   # rewrites src/scaffold_actors/data/arithmetic-all.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ben", "Lily", "Sam", "Mia", "Anna", "Tom"]
OUT = Path(__file__).resolve().parent.parent / "src/scaffold_actors/data/arithmetic-all.jsonl"


def draw(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 15), rng.randint(2, 9)
        return (
            f"{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
            a + b,
        )
    if kind == 1:
        a, b = rng.randint(2, 14), rng.randint(2, 12)
        return (
            f"{name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages in total?",
            a + b,
        )
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return (
            f"Each bag has {a} candies. {name} buys {b} bags. How many candies does {name} have?",
            a * b,
        )
    if kind == 3:
        a = rng.randint(5, 15)
        b = rng.randint(1, a - 1)
        return (
            f"There are {a} birds on a tree. {b} fly away. How many birds are still on the tree?",
            a - b,
        )
    if kind == 4:
        a = rng.randint(5, 15)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} marbles and gave away {b}. How many marbles are left?", a - b
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return f"A box holds {a} pencils. How many pencils are in {b} boxes?", a * b


def main() -> None:
    rng = random.Random(0)
    seen: dict[str, int] = {}
    while len(seen) < 60:
        q, a = draw(rng)
        seen.setdefault(q, a)
    OUT.write_text(
        "".join(json.dumps({"question": q, "answer": str(a)}) + "\n" for q, a in seen.items()),
        encoding="utf-8",
    )
    print(f"{OUT}: {len(seen)} problems")


if __name__ == "__main__":
    main()
