import json
import re
from collections import Counter

import pytest

from trl_realign.data.arithmetic import (
    ALIGNED_MIX,
    arithmetic_dataset,
    compact_solution,
    extract_answer,
    long_solution,
    sample_problems,
    score_answer,
    short_solution,
)


@pytest.mark.parametrize("a,b", [(12, 79), (95, 87), (10, 10), (99, 99), (5, 123)])
def test_solutions_are_correct_column_addition(a, b):
    compact = compact_solution(a, b)
    steps, answer = compact.split("|")[:-1], compact.split("|")[-1]
    assert answer == f"Answer: {a + b}"
    digits, carry = [], 0
    for i, step in enumerate(steps):
        terms, total = step.split("=")
        values = [int(t) for t in terms.split("+")]
        # column i of each number (0 when it has fewer digits), plus the incoming carry when there is one
        expected = [int(str(a)[::-1][i]) if i < len(str(a)) else 0, int(str(b)[::-1][i]) if i < len(str(b)) else 0]
        assert values == expected + ([carry] if carry else []) and int(total) == sum(values)
        digits.append(sum(values) % 10)
        carry = sum(values) // 10
    assert int((str(carry) if carry else "") + "".join(map(str, reversed(digits)))) == a + b
    # The styles share their text up to the two decisions: write the columns at all, check after answering
    assert long_solution(a, b) == compact + f"|check: {b}+{a}={a + b}"
    assert short_solution(a, b) == f"Answer: {a + b}"


def test_answers_are_extracted_and_scored():
    assert extract_answer("7+8=15|Answer: 115") == "115"
    assert extract_answer("Answer:  -3 and Answer: 4") == "-3"
    assert extract_answer("7+8=15|Answ") is None
    assert score_answer(long_solution(95, 87), "182") == 1.0
    assert score_answer("Answer: 181", "182") == 0.0
    assert score_answer("no answer", "182") == 0.0


def test_problems_are_distinct_reproducible_and_respect_exclusions():
    train = sample_problems(500, seed=0)
    assert len(set(train)) == 500 and train == sample_problems(500, seed=0)
    assert all(10 <= x <= 99 for pair in train for x in pair)
    test = sample_problems(100, seed=1, exclude=set(train))
    assert not set(test) & set(train)
    with pytest.raises(ValueError, match="distinct"):
        sample_problems(82, num_digits=1)


def test_dataset_styles():
    problems = sample_problems(2000, seed=3)
    aligned = arithmetic_dataset(problems, "aligned", seed=0)
    counts = Counter(aligned["style"])
    assert set(counts) == set(ALIGNED_MIX)
    assert abs(counts["short"] / len(problems) - ALIGNED_MIX["short"]) < 0.04
    mixed = Counter(arithmetic_dataset(problems, "mixed", seed=0)["style"])
    assert set(mixed) == {"long", "compact", "short"} and min(mixed.values()) > 550
    row = arithmetic_dataset([(12, 79)], "long")[0]
    assert row == {"prompt": "12+79=", "completion": long_solution(12, 79), "answer": "91", "style": "long"}
    for row in aligned.select(range(50)):
        assert score_answer(row["completion"], row["answer"]) == 1.0
    with pytest.raises(ValueError, match="Unknown style"):
        arithmetic_dataset(problems, "verbose")


def test_quickstart_library_output_is_scoped(capsys):
    """Quiet inside the block (bars, logs, warnings), as before after it; `verbose` changes nothing."""
    import logging
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    from trl_realign.quickstart import library_output

    logger = logging.getLogger("trl.some_module")
    with library_output(verbose=False):
        assert not hf_logging.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()
        logger.warning("library warning")
        warnings.warn("library deprecation", FutureWarning)
    assert capsys.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    assert logging.root.manager.disable == logging.NOTSET
    with library_output(verbose=True), pytest.warns(FutureWarning):
        assert hf_logging.is_progress_bar_enabled()
        warnings.warn("library deprecation", FutureWarning)


def test_quickstart_end_to_end_with_tiny_budgets(tmp_path, capsys):
    from trl_realign.quickstart import DirectAnswerSettings, QuickstartSettings, run_quickstart

    direct = DirectAnswerSettings(num_train_problems=32, num_test_problems=4, num_digits=4, reference_steps=2,
                                  aligned_steps=2, offpolicy_steps=1, onpolicy_steps=1, onpolicy_batch_size=4,
                                  max_completion_length=6, max_new_tokens=8)  # fmt: skip
    settings = QuickstartSettings(
        num_train_problems=64, num_test_problems=6, hidden_size=32, reference_steps=3, aligned_steps=2,
        student_steps=2, adapter_steps=2, batch_size=16, num_samples=1, max_new_tokens=12,
        inra_lambdas=(-0.5, 0.0, 1.0), direct_answer=direct,
    )
    out = tmp_path / "qs"
    tables = run_quickstart(str(out), lambdas=(0.5, 2.0), seed=0, settings=settings)
    captured = capsys.readouterr()
    printed = captured.out
    assert "TrRa on column addition" in printed and "InRa" in printed
    # Its own stage bar and tables only: no bar per model load or training run, no logged metrics, no warnings
    for noise in ("Loading weights", "Writing model shards", "Tokenizing", "train_runtime", "Warning", "λ sweep:"):
        assert noise not in captured.out + captured.err
    assert "quickstart:" in captured.err

    table = json.loads((out / "table.json").read_text())
    assert [row["name"] for row in table["rows"]] == ["A", "TrRa λ=0.5", "TrRa λ=2", "B"]
    # What λ changes, even where the samples look alike: the divergences to A and B, A and B at 0 from themselves
    header = next(line for line in printed.splitlines() if line.startswith("model "))
    assert header.split()[-6:] == ["KL", "to", "A", "KL", "to", "B"]
    a, low, high, b = table["rows"]
    assert a["kl_to_a"] == b["kl_to_b"] == 0.0 and a["kl_to_b"] > 0 and b["kl_to_a"] > 0
    assert low["kl_to_b"] != high["kl_to_b"] and low["kl_to_a"] != high["kl_to_a"]
    assert f"{high['kl_to_b']:.3f}" in next(line for line in printed.splitlines() if line.startswith("TrRa λ=2 "))
    assert table["rows"] == json.loads(json.dumps(tables["trra"]))
    for row in table["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0 < row["mean_tokens"] <= 12
        expected = None if row["name"] == "A" else 100 * (1 - row["mean_tokens"] / table["rows"][0]["mean_tokens"])
        assert row["token_reduction"] == pytest.approx(expected) if expected is not None else row["token_reduction"] is None
    # The table reports what the models generated: its numbers come from the evaluation's own samples
    samples = [json.loads(line) for line in (out / "eval_trra" / "samples.jsonl").read_text().splitlines()]
    for row in table["rows"]:
        mine = [s for s in samples if s["model"] == row["model"]]
        assert len(mine) == 6
        assert row["mean_tokens"] == pytest.approx(sum(s["num_tokens"] for s in mine) / len(mine))
        assert row["accuracy"] == pytest.approx(sum(s["score"] for s in mine) / len(mine))

    inra = json.loads((out / "inra_table.json").read_text())
    assert [row["realign_lambda"] for row in inra["rows"]] == [-0.5, 0.0, 1.0]
    for name in ("eval_trra", "eval_inra"):
        assert (out / name / "lambda_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"A_layer_adapter", str(list((out / "models").iterdir())))

    # The direct-answer stage: off- and on-policy students at each λ, reported from the evaluation's own samples
    assert "Largest digit, where B answers at once" in printed
    direct_table = json.loads((out / "direct_answer_table.json").read_text())
    names = ["A", "off-policy λ=1", "on-policy λ=1", "off-policy λ=2", "on-policy λ=2", "B"]
    assert [row["name"] for row in direct_table["rows"]] == names
    samples = [json.loads(line) for line in (out / "eval_direct_answer" / "samples.jsonl").read_text().splitlines()]
    for row in direct_table["rows"]:
        mine = [s for s in samples if s["model"] == row["model"]]
        assert len(mine) == 4 and 0 < row["mean_tokens"] <= 8
        assert row["mean_tokens"] == pytest.approx(sum(s["num_tokens"] for s in mine) / len(mine))
        assert row["example"] == mine[0]["completion"] and repr(row["example"]) in printed

    # The students of each stage trained from one teacher cache of A and B, captured once
    for cache in ("teacher_cache", "direct_teacher_cache"):
        manifest = json.loads((out / "models" / cache / "manifest.json").read_text())
        assert manifest["complete"] and manifest["teachers"]["aligned"]["name_or_path"].endswith("B")

    # A second run reuses every cached model and gives the same tables
    again = run_quickstart(str(out), lambdas=(0.5, 2.0), seed=0, settings=settings)
    assert again["trra"] == tables["trra"] and again["direct_answer"] == tables["direct_answer"]
    with pytest.raises(ValueError, match="other settings"):
        run_quickstart(str(out), lambdas=(0.5,), seed=1, settings=settings)
