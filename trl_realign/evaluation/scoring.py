"""
Answer checking for the λ sweep: math-verify for math answers, exact match, or a user-supplied scorer.

A scorer is any callable `scorer(completion: str, answer: str) -> float` (a bool counts as 0/1); accuracy is its mean
over samples, i.e. Pass@1 averaged over the samples of each prompt as in the paper.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence


Scorer = Callable[[str, str], float]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced, or `None`."""
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def _normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match_scorer(completion: str, answer: str) -> float:
    """
    1.0 if the completion's answer equals `answer` up to whitespace, else 0.0.

    The completion's answer is the content of its last `\\boxed{...}` if it has one, otherwise the whole completion.
    """
    boxed = extract_boxed(completion)
    prediction = boxed if boxed is not None else completion
    return float(_normalize(prediction) == _normalize(str(answer)))


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify times out with signal.alarm(), which only works in the main thread (as in TRL's accuracy_reward)
    if threading.current_thread() is threading.main_thread():
        return 10, 5
    return None, None


def parse_gold(answer: str) -> list:
    """
    The gold answer parsed by `math_verify.parse`, `[]` if unparseable.

    Gold answers are usually bare LaTeX (MATH: `\\frac{14}{3}`, `\\left( 3, \\frac{\\pi}{2} \\right)`), so they are
    read inside `$...$` first: read bare, `x + 1` would give its last number, 1.
    """
    from math_verify import parse

    parsing_timeout, _ = _timeouts()
    answer = str(answer)
    parsed = [] if "$" in answer else parse(f"${answer}$", parsing_timeout=parsing_timeout)
    return parsed or parse(answer, parsing_timeout=parsing_timeout)


def _anchored_extraction() -> list:
    """
    TRL's `accuracy_reward` extraction (a `\\boxed{}` answer first, then LaTeX after an anchor such as "the final
    answer is"), plus plain expressions after the same anchors ("Answer: 12"). Never the last number of the text: in
    an unfinished trace that is whatever it stopped on (math-verify's default `try_extract_without_anchor=True`).
    """
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    latex = LatexExtractionConfig(
        normalization_config=NormalizationConfig(units=True), boxed_match_priority=0, try_extract_without_anchor=False
    )
    return [latex, ExprExtractionConfig(try_extract_without_anchor=False)]


def math_verify_scorer(completion: str, answer: str) -> float:
    """
    1.0 if math-verify finds the completion's final answer equivalent to `answer` (e.g. `\\frac{1}{2}` and `0.5`),
    else 0.0.

    The completion's answer is extracted as TRL's `accuracy_reward` does: a `\\boxed{}` answer first, then an anchored
    one ("the final answer is 3"); a completion without either scores 0. Raises `ValueError` if `answer` itself cannot
    be parsed; check a dataset up front with [`check_answers`].
    """
    from math_verify import parse, verify

    gold = parse_gold(answer)
    if not gold:
        raise ValueError(f"math-verify cannot parse the gold answer {answer!r}; use scorer='exact_match' for it.")
    parsing_timeout, verify_timeout = _timeouts()
    prediction = parse(
        completion,
        extraction_config=_anchored_extraction(),
        extraction_mode="first_match",
        parsing_timeout=parsing_timeout,
    )
    return float(verify(gold, prediction, timeout_seconds=verify_timeout))


SCORERS: dict[str, Scorer] = {"math_verify": math_verify_scorer, "exact_match": exact_match_scorer}


def get_scorer(scorer: str | Scorer) -> Scorer:
    """A scorer by name (`"math_verify"`, `"exact_match"`) or the callable itself."""
    if callable(scorer):
        return scorer
    if scorer not in SCORERS:
        raise ValueError(f"Unknown scorer {scorer!r}; choose one of {sorted(SCORERS)} or pass a callable.")
    return SCORERS[scorer]


def check_answers(answers: Sequence[str], scorer: str | Scorer) -> None:
    """Raise before any generation if `scorer="math_verify"` cannot parse some gold answers."""
    if get_scorer(scorer) is not math_verify_scorer:
        return
    bad = [(i, a) for i, a in enumerate(answers) if not parse_gold(a)]
    if bad:
        examples = ", ".join(f"row {i}: {a!r}" for i, a in bad[:5])
        raise ValueError(
            f"math-verify cannot parse {len(bad)} of the {len(answers)} gold answers ({examples}). Fix the answer "
            "column, or score with scorer='exact_match' or your own callable."
        )


def score(scorer: Scorer, completion: str, answer: str) -> float:
    """Run `scorer` and check that it returned a number in [0, 1]."""
    value = scorer(completion, answer)
    if isinstance(value, bool):
        return float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"A scorer must return a float or a bool, got {value!r} from {scorer!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"A scorer must return a value in [0, 1] (accuracy is its mean), got {value} from {scorer}.")
    return value
