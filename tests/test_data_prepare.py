"""Dataset preparation on small local files in the real schemas (tests/fixtures/data)."""

import copy
import json
from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers import processors

from trl_realign.data.loading import check_dataset_source, load_dataset_source
from trl_realign.data.prepare import (
    DatasetPreparationArguments,
    extract_short_cot,
    prepare_dataset,
    prepare_openr1_math,
    prepare_openr1_short_cot,
    prepare_ultrafeedback,
    render_prompt,
)


DATA = Path(__file__).parent / "fixtures" / "data"


def rows_of(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def openr1():
    return load_dataset_source(str(DATA / "openr1_math.jsonl"))["train"]


@pytest.fixture
def think_tokenizer(tokenizer):
    # A DeepSeek-R1-like template: the generation prompt opens a thinking block
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|><think>\n' }}{% endif %}"
    )
    return tok


def expected_openr1(use_llama_judge, keep, lo=None, hi=None):
    """Naive reference: walk the raw rows; the char tokenizer makes token count == character count."""
    out = []
    for row in rows_of("openr1_math.jsonl"):
        for i, gen in enumerate(row["generations"]):
            correct = row["correctness_math_verify"][i] or (use_llama_judge and (row["correctness_llama"] or [0] * 9)[i])
            if correct and row["is_reasoning_complete"][i] and (lo is None or len(gen) >= lo) and (hi is None or len(gen) <= hi):
                out.append((row["problem"], gen))
                if keep == "first":
                    break
    return out


@pytest.mark.parametrize("use_llama_judge", [False, True])
@pytest.mark.parametrize("keep,lo,hi", [("all", None, None), ("first", None, None), ("all", 27, 60), ("first", None, 30)])
def test_openr1_math_selects_correct_complete_traces_within_bounds(openr1, tokenizer, use_llama_judge, keep, lo, hi):
    got = prepare_openr1_math(openr1, tokenizer, min_tokens=lo, max_tokens=hi, keep=keep, use_llama_judge=use_llama_judge)
    expected = expected_openr1(use_llama_judge, keep, lo, hi)
    assert len(expected) > 0
    assert got.column_names == ["prompt", "completion", "num_completion_tokens"]
    assert [(r["prompt"], r["completion"]) for r in got] == [
        (f"<|user|>{problem}<|assistant|>", gen) for problem, gen in expected
    ]
    assert [r["num_completion_tokens"] for r in got] == [len(tokenizer(g, add_special_tokens=False)["input_ids"]) for _, g in expected]


def test_openr1_math_does_not_reopen_think_block(openr1, think_tokenizer):
    got = prepare_openr1_math(openr1, think_tokenizer, min_tokens=None, max_tokens=None, keep="first")
    assert got[0]["prompt"] == "<bos><|user|>1+1?<|assistant|><think>\n"
    assert got[0]["completion"] == "one plus one is two ok</think>\n\nThe answer is 2."


def test_short_cot_extraction():
    assert extract_short_cot("<think>\nlong\n</think>\n\n The answer is 2. ") == "The answer is 2."
    # the last </think> counts: text quoting the tag inside the reasoning is still reasoning
    assert extract_short_cot("<think>a </think> b</think>c") == "c"
    assert extract_short_cot("<think>\nnever finished") is None
    assert extract_short_cot("<think>x</think>\n  ") is None


def test_openr1_short_cot(openr1, tokenizer, think_tokenizer):
    got = prepare_openr1_short_cot(openr1, tokenizer, keep="all", use_llama_judge=True)
    expected = [(p, extract_short_cot(g)) for p, g in expected_openr1(True, "all")]
    assert [(r["prompt"], r["completion"]) for r in got] == [(f"<|user|>{p}<|assistant|>", s) for p, s in expected]
    # bounds apply to the short completion: "**2**" and "Six" are short, "The answer is 2." is not
    short = prepare_openr1_short_cot(openr1, tokenizer, max_tokens=5, keep="all", use_llama_judge=True)
    assert short["completion"] == ["**2**", "Six"]
    # a template that opens a thinking block gets it closed at once
    closed = prepare_openr1_short_cot(openr1, think_tokenizer, keep="first")
    assert closed[0]["completion"] == "</think>\n\nThe answer is 2."


def test_render_prompt_drops_duplicate_bos(tokenizer, think_tokenizer):
    assert render_prompt("q", think_tokenizer).startswith("<bos>")  # this tokenizer does not add BOS itself
    adds_bos = copy.deepcopy(think_tokenizer)
    adds_bos._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", adds_bos.bos_token_id)]
    )
    assert render_prompt("q", adds_bos) == "<|user|>q<|assistant|><think>\n"
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt("q", no_template)


def test_openr1_schema_errors(tokenizer, openr1):
    with pytest.raises(ValueError, match="correctness_math_verify"):
        prepare_openr1_math(Dataset.from_list([{"problem": "p", "generations": ["g"]}]), tokenizer)
    with pytest.raises(ValueError, match="larger than"):
        prepare_openr1_math(openr1, tokenizer, min_tokens=10, max_tokens=5)


def test_ultrafeedback_binarized():
    raw = load_dataset_source(str(DATA / "ultrafeedback_binarized.jsonl"))["train"]
    pairs = prepare_ultrafeedback(raw)
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    rows = [r for r in rows_of("ultrafeedback_binarized.jsonl") if r["score_chosen"] != r["score_rejected"]]
    assert pairs.to_list() == [
        {"prompt": r["chosen"][:1], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]} for r in rows
    ]
    assert len(prepare_ultrafeedback(raw, drop_ties=False)) == 3
    broken = Dataset.from_list([{**rows[0], "rejected": [{"role": "user", "content": "other"}, rows[0]["rejected"][1]]}])
    with pytest.raises(ValueError, match="share every turn"):
        prepare_ultrafeedback(broken)


def test_ultrafeedback_raw_best_against_random_worse():
    raw = load_dataset_source(str(DATA / "ultrafeedback_raw.jsonl"))["train"]
    rejected_seen = set()
    for seed in range(8):
        pairs = prepare_ultrafeedback(raw, seed=seed).to_list()
        assert pairs == prepare_ultrafeedback(raw, seed=seed).to_list()  # deterministic
        assert [p["prompt"][0]["content"] for p in pairs] == ["Say hi", "Capital of France?"]  # the tie is dropped
        assert [p["chosen"] for p in pairs] == [[{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Paris"}]]
        assert pairs[1]["rejected"] == [{"role": "assistant", "content": "Lyon"}]
        rejected_seen.add(pairs[0]["rejected"][0]["content"])
    assert rejected_seen == {"Go away", "hm"}  # random among the lower-rated ones, never the best


def test_ultrafeedback_unknown_schema():
    with pytest.raises(ValueError, match="Unrecognised UltraFeedback schema"):
        prepare_ultrafeedback(Dataset.from_list([{"text": "x"}]))


def test_prepare_dataset_dispatch(openr1, tokenizer):
    args = DatasetPreparationArguments(dataset_preparation="openr1_math", min_completion_tokens=27)
    assert prepare_dataset(openr1, args, tokenizer).to_list() == prepare_openr1_math(openr1, tokenizer, 27, None).to_list()
    assert prepare_dataset(openr1, DatasetPreparationArguments(), tokenizer) is openr1
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        prepare_dataset(openr1, args)
    with pytest.raises(ValueError, match="Unknown `dataset_preparation"):
        DatasetPreparationArguments(dataset_preparation="openr1")
    assert DatasetPreparationArguments(dataset_preparation="none").dataset_preparation is None


def test_load_dataset_source_formats(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    ds = Dataset.from_list(rows)
    ds.to_json(tmp_path / "d.jsonl")
    ds.to_parquet(tmp_path / "d.parquet")
    ds.save_to_disk(tmp_path / "saved")
    (tmp_path / "folder").mkdir()
    ds.to_json(tmp_path / "folder" / "train.jsonl")
    for name in ("d.jsonl", "d.parquet", "saved", "folder"):
        assert load_dataset_source(str(tmp_path / name))["train"].to_list() == rows, name


def test_dataset_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_dataset_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_dataset_source("./data/prepared")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported dataset file"):
        check_dataset_source(str(tmp_path / "data.txt"))
    check_dataset_source("open-r1/OpenR1-Math-220k")  # hub ids are not checked offline
