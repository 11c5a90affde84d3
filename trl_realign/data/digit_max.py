"""
A synthetic task where the aligned model answers at once and the reference thinks step by step: the largest digit.

The reference model A scans the digits left to right and writes the running maximum after each one, then answers; the
aligned model B answers directly. B's behaviour branches away from A's at the first completion token, so off-policy
TrRa, which trains only on A's traces, never shows the student the states that follow B's choice ("Answer" first);
on-policy TrRa, where the student samples its own completions, does. The quickstart's second stage compares the two.

    3729=  -> scan:   "3|7|7|9|Answer: 9"
              direct: "Answer: 9"

The answer format is the column-addition task's (`Answer: <number>`), so its scorer applies.
"""

from __future__ import annotations

import random

from datasets import Dataset


STYLES = ("scan", "direct")


def scan_solution(digits: str) -> str:
    """The running maximum after each digit, then the answer."""
    running, steps = -1, []
    for d in digits:
        running = max(running, int(d))
        steps.append(str(running))
    return "|".join(steps) + f"|Answer: {running}"


def direct_solution(digits: str) -> str:
    return f"Answer: {max(int(d) for d in digits)}"


def sample_digit_strings(n: int, length: int = 8, seed: int = 0, exclude: set | None = None) -> list[str]:
    """`n` distinct digit strings of `length` digits (not in `exclude`), reproducible from `seed`."""
    if n > 10**length - len(exclude or ()):
        raise ValueError(f"Only {10**length} distinct strings of {length} digits exist; asked for {n}.")
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    while len(out) < n:
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        if digits not in seen:
            seen.add(digits)
            out.append(digits)
    return out


def digit_max_dataset(strings: list[str], style: str = "scan") -> Dataset:
    """A prompt/completion dataset (the `SFTTrainer` format) with an `answer` column, every row in `style`."""
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; choose one of {list(STYLES)}.")
    write = scan_solution if style == "scan" else direct_solution
    rows = [{"prompt": f"{s}=", "completion": write(s), "answer": str(max(int(d) for d in s)), "style": style}
            for s in strings]  # fmt: skip
    return Dataset.from_list(rows)
