"""``builtin:arithmetic`` — procedurally generated multi-step word problems with verifiable answers.

Needs no download, so the tiny pipeline runs anywhere. Each problem is a short story with
``difficulty`` operations (1–5) on small integers, a step-by-step trace for ``<think>`` and the
integer answer. Generation is a pure function of ``(seed, index, difficulty, max_operand)``, so a
record can be regenerated on its own and shards are reproducible.

    >>> generate_arithmetic(1, seed=0)[0]["answer"]  # doctest: +SKIP
    '7'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kim", "Leo", "Mia", "Noah"]
ITEMS = ["apples", "books", "coins", "pens", "stamps", "shells", "marbles", "cards", "cookies", "stickers"]

# Operation phrasings: (kind, template). ``{n}`` is the operand, ``{x}`` the item noun. Every phrase is
# five tokens of the built-in tokenizer with the operand (if stated) two tokens before its end, and every
# name and item is one token, so an operand sits at the same distance from the end of every question with
# the same number of steps (22 tokens for one step). The tiny masked-diffusion model attends by relative
# position (RoPE); with the earlier phrasings of 3-12 tokens it copied the operand next to the question's
# end but often not the first one (docs/results.md). Doubling and halving name their operand by the verb.
_PHRASES = {
    "add": ["buys {n} more {x}", "finds {n} more {x}", "wins {n} more {x}", "gets {n} more {x}"],
    "sub": ["gives {n} {x} away", "throws {n} {x} away", "sends {n} {x} away"],
    "mul": {2: "doubles all of the {x}", 3: "triples all of the {x}"},
    "div": {2: "halves all of the {x}"},
}
MAX_DIFFICULTY = 5


@dataclass(frozen=True)
class ArithmeticProblem:
    id: str
    question: str
    thinking: str  # the step-by-step trace, without <think> tags
    answer: str  # the integer answer as a string
    difficulty: int

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "thinking": self.thinking,
            "answer": self.answer,
            "difficulty": self.difficulty,
        }


def _one_problem(rng: random.Random, idx: str, difficulty: int, max_operand: int) -> ArithmeticProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_operand)
    clauses, steps = [f"{name} has {value} {item}."], []
    for _ in range(difficulty):
        # Keep numbers small and non-negative; division only when exact, multiply only small values.
        kinds = ["add", "sub"]
        if value <= max_operand:
            kinds.append("mul")
        divisors = [d for d in _PHRASES["div"] if value % d == 0]
        if divisors:
            kinds.append("div")
        kind = rng.choice(kinds)
        if kind == "add":
            n = rng.randint(1, max_operand)
            new, sym = value + n, "+"
        elif kind == "sub":
            n = rng.randint(1, max(1, value - 1)) if value > 1 else 0
            if n == 0:
                kind, n, new, sym = "add", 1, value + 1, "+"
            else:
                new, sym = value - n, "-"
        elif kind == "mul":
            n = rng.randint(2, 3)
            new, sym = value * n, "*"
        else:
            n = rng.choice(divisors)
            new, sym = value // n, "/"
        phrases = _PHRASES[kind]
        phrase = (phrases[n] if isinstance(phrases, dict) else rng.choice(phrases)).format(n=n, x=item)
        clauses.append(f"Then {'she' if name in {'Ann', 'Cara', 'Eva', 'Gia', 'Ivy', 'Kim', 'Mia'} else 'he'} {phrase}.")
        steps.append(f"{value} {sym} {n} = {new}")
        value = new
    question = " ".join(clauses) + f" How many {item} does {name} have now?"
    thinking = ". ".join(steps) + "."
    return ArithmeticProblem(id=idx, question=question, thinking=thinking, answer=str(value), difficulty=difficulty)


def generate_arithmetic(
    n: int, *, seed: int = 0, difficulty: int | tuple[int, int] = (1, 3), max_operand: int = 9, start: int = 0
) -> list[dict]:
    """Generate ``n`` problems (records ``start … start+n-1`` of the stream for ``seed``).

    Args:
        n: number of problems.
        seed: stream seed; the same ``(seed, index)`` always gives the same problem.
        difficulty: number of operations, an int or an inclusive ``(lo, hi)`` range (1–5).
        max_operand: largest operand of additions/subtractions and of the starting value.
        start: index of the first record (so chunks of one stream can be generated in parallel).
    """
    lo, hi = (difficulty, difficulty) if isinstance(difficulty, int) else difficulty
    if not (1 <= lo <= hi <= MAX_DIFFICULTY):
        raise ValueError(f"difficulty must be within 1..{MAX_DIFFICULTY}, got {difficulty!r}")
    if max_operand < 2:
        raise ValueError(f"max_operand must be >= 2, got {max_operand}")
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"arithmetic:{seed}:{i}")
        d = rng.randint(lo, hi)
        out.append(_one_problem(rng, f"arith-{seed}-{i:08d}", d, max_operand).as_dict())
    return out
