"""
A synthetic reasoning task that ships with the package: column addition, written with more or less thinking.

The reference model A "thinks slowly": it adds the numbers column by column, answers, then checks the answer by
adding in the other order. The aligned model B is concise: it usually stops at the answer and sometimes answers at
once. Every style contains `Answer: <sum>`, so one scorer checks them all, and the number of generated tokens measures
how long the model thought. This mirrors the paper's setting (a long-chain-of-thought reasoner A and a concise,
RL-aligned B, Table 1) at a size a CPU trains in seconds. A tiny model rarely adds two numbers without writing the
columns down, so, as in the paper, pushing conciseness past B (λ > 1) trades accuracy for tokens.

The styles share every token up to two decisions: whether to write the columns at all (the first token) and whether
to check after answering. Mixing the two models' logits then gives coherent text at every λ; models that disagree at
every step (say, on how verbosely each column is written) mix into garbled text instead.

    12+79= -> long:    "2+9=11|1+7+1=9|Answer: 91|check: 79+12=91"
              compact: "2+9=11|1+7+1=9|Answer: 91"
              short:   "Answer: 91"
"""

from __future__ import annotations

import random
import re

from datasets import Dataset


STYLES = ("long", "compact", "short", "aligned", "mixed")
# The aligned model's habits: how often it writes each style
ALIGNED_MIX = {"compact": 0.8, "short": 0.2}
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def compact_solution(a: int, b: int) -> str:
    """The column sums, least significant digit first (with the carry as a third term), then the answer."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return "|".join(steps) + f"|Answer: {a + b}"


def long_solution(a: int, b: int) -> str:
    """The compact solution, then a check that adds the numbers in the other order."""
    return compact_solution(a, b) + f"|check: {b}+{a}={a + b}"


def short_solution(a: int, b: int) -> str:
    return f"Answer: {a + b}"


def prompt_of(a: int, b: int) -> str:
    return f"{a}+{b}="


def sample_problems(n: int, num_digits: int = 2, seed: int = 0, exclude: set | None = None) -> list[tuple[int, int]]:
    """`n` distinct pairs of `num_digits`-digit numbers (not in `exclude`), reproducible from `seed`."""
    low, high = 10 ** (num_digits - 1), 10**num_digits - 1
    space = (high - low + 1) ** 2 - len(exclude or ())
    if n > space:
        raise ValueError(f"Only {space} distinct {num_digits}-digit problems exist; asked for {n}.")
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    while len(out) < n:
        pair = (rng.randint(low, high), rng.randint(low, high))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def arithmetic_dataset(problems: list[tuple[int, int]], style: str = "long", seed: int = 0) -> Dataset:
    """
    A prompt/completion dataset (the `SFTTrainer` format) with an `answer` column and the `style` of each row.

    `"long"`, `"compact"`, `"short"`: every row in that style. `"aligned"`: the aligned model's habits (`ALIGNED_MIX`).
    `"mixed"`: the three styles in equal parts, the calibration data TrRa trains on.
    """
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; choose one of {list(STYLES)}.")
    writers = {"long": long_solution, "compact": compact_solution, "short": short_solution}
    rng = random.Random(seed)
    rows = []
    for a, b in problems:
        if style == "aligned":
            kind = rng.choices(list(ALIGNED_MIX), weights=list(ALIGNED_MIX.values()))[0]
        elif style == "mixed":
            kind = rng.choice(list(writers))
        else:
            kind = style
        rows.append({"prompt": prompt_of(a, b), "completion": writers[kind](a, b), "answer": str(a + b), "style": kind})
    return Dataset.from_list(rows)


def extract_answer(text: str) -> str | None:
    """The number after the first `Answer:`, or `None` when the model never answered."""
    match = _ANSWER.search(text)
    return match.group(1) if match else None


def score_answer(completion: str, answer: str) -> float:
    """1.0 when the completion's answer equals `answer`, else 0.0 (a scorer for `trl_realign.evaluation`)."""
    return float(extract_answer(completion) == str(answer).strip())
