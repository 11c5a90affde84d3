import csv
import glob
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from trl_realign.evaluation import (
    EvalConfig,
    SamplingSettings,
    build_prompts,
    count_generated_tokens,
    evaluate,
    exact_match_scorer,
    extract_boxed,
    generate_completions,
    get_scorer,
    lambda_sweep_figure,
    load_eval_dataset,
    math_verify_scorer,
    plot_lambda_sweep,
    resolve_eos_token_ids,
    summarize,
)
from trl_realign.evaluation.scoring import check_answers, score
from trl_realign.testing import tiny_causal_lm


FIXTURES = Path(__file__).parent / "fixtures"
SCORING_CASES = [json.loads(line) for line in open(FIXTURES / "scoring_cases.jsonl")]
ARITHMETIC = str(FIXTURES / "arithmetic.jsonl")  # columns: question, answer
EOS = 3  # tiny_config's and the char tokenizer's EOS id


def fast_config(tmp_path, **overrides) -> EvalConfig:
    """Tiny budgets: three prompts, a handful of tokens."""
    kwargs = dict(
        output_dir=str(tmp_path / "eval"),
        dataset_name=ARITHMETIC,
        prompt_column="question",
        prompt_template="{prompt}",
        num_samples=2,
        max_new_tokens=6,
        batch_size=4,
        scorer="exact_match",
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return EvalConfig(**kwargs)


def greedy(model, tokenizer, text, max_new_tokens=6):
    """Reference: the model alone on one prompt (no padding), greedy; returns the new token ids."""
    inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=EOS)
    return out[0, inputs["input_ids"].shape[1] :]


def model_that_stops_sometimes(tokenizer, prompts, seed=1, max_new_tokens=6):
    """
    A tiny model with a second EOS id: a token it emits greedily on the first prompt but not on some other prompt, so
    that within `max_new_tokens` some greedy completions end in EOS and others run out of tokens. Returns the model and
    that id.
    """
    model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
    completions = [greedy(model, tokenizer, prompt, max_new_tokens).tolist() for prompt in prompts]
    others = completions[1:]
    stop_id = next(t for t in completions[0] if t != EOS and any(t not in other for other in others))
    model.generation_config.eos_token_id = [EOS, stop_id]
    return model, stop_id


def read_outputs(output_dir):
    records = [json.loads(line) for line in open(os.path.join(output_dir, "samples.jsonl"))]
    summary = json.load(open(os.path.join(output_dir, "summary.json")))
    with open(os.path.join(output_dir, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    return records, summary, rows


def assert_outputs_agree(output_dir, returned):
    """The JSONL, the JSON and CSV summaries and the returned summary are the same numbers."""
    records, summary, rows = read_outputs(output_dir)
    assert summary == returned
    assert summarize(records) == summary
    assert len(rows) == len(summary)
    for row, expected in zip(rows, summary):
        assert float(row["realign_lambda"]) == expected["realign_lambda"]
        assert float(row["accuracy"]) == pytest.approx(expected["accuracy"])
        assert float(row["mean_tokens"]) == pytest.approx(expected["mean_tokens"])
        assert float(row["truncation_rate"]) == pytest.approx(expected["truncation_rate"])
        assert int(row["num_samples"]) == expected["num_samples"]
    for entry in summary:  # and summarize() itself against a direct computation
        key = (entry["model"], entry["realign_lambda"])
        rows_of = [r for r in records if (r["model"], r["realign_lambda"]) == key]
        assert entry["num_samples"] == len(rows_of)
        assert entry["accuracy"] == pytest.approx(sum(r["score"] for r in rows_of) / len(rows_of))
        assert entry["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in rows_of) / len(rows_of))
        assert entry["truncation_rate"] == pytest.approx(sum(not r["finished"] for r in rows_of) / len(rows_of))
    assert_valid_png(os.path.join(output_dir, "lambda_sweep.png"))
    return records


def assert_valid_png(path, size=None):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) > 5_000  # axes, lines and labels, not an empty canvas
    if size is not None:
        assert (width, height) == size


# ----------------------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("case", SCORING_CASES, ids=lambda case: case["completion"][:30])
def test_scorers_on_fixture(case):
    assert exact_match_scorer(case["completion"], case["answer"]) == case["exact_match"]
    if case["math_verify"] is not None:
        assert math_verify_scorer(case["completion"], case["answer"]) == case["math_verify"]


def test_math_verify_needs_an_anchored_answer():
    """As TRL's accuracy_reward: a number the trace merely ends on is no answer; a box or "the answer is" is."""
    assert math_verify_scorer("Let me think... 2+3 is 5, wait let me recheck 5", "5") == 0.0
    assert math_verify_scorer("Let me think... so the final answer is 5", "5") == 1.0
    assert math_verify_scorer(r"Let me think... $x = \boxed{5}$", "5") == 1.0


def test_extract_boxed_takes_the_last_balanced_box():
    assert extract_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b}} done") == r"\frac{a}{b}"
    assert extract_boxed(r"\boxed{\{1, \{2\}\}}") == r"\{1, \{2\}\}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed("no box") is None
    assert extract_boxed(r"\boxed{unclosed") is None


def test_custom_scorer_and_scorer_lookup():
    def first_char(completion, answer):
        return completion[:1] == answer

    assert get_scorer(first_char) is first_char
    assert get_scorer("exact_match") is exact_match_scorer
    assert score(first_char, "5 apples", "5") == 1.0 and score(first_char, "6", "5") == 0.0
    with pytest.raises(ValueError, match="Unknown scorer"):
        get_scorer("bleu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score(lambda c, a: 2.0, "x", "y")
    with pytest.raises(TypeError, match="float or a bool"):
        score(lambda c, a: "yes", "x", "y")


def test_truncated_samples_score_zero_unless_asked(tmp_path, tokenizer):
    """A completion that ran out of tokens has no final answer: it scores 0, whatever the scorer says of its text."""

    def always_right(completion, answer):
        return 1.0

    common = dict(realign_lambdas=[1.0], temperature=0.0, num_samples=1)
    strict_args = fast_config(tmp_path / "strict", **common)
    questions = [json.loads(line)["question"] for line in open(ARITHMETIC)]
    model, _ = model_that_stops_sometimes(tokenizer, build_prompts(questions, tokenizer, strict_args))
    strict = evaluate(strict_args, checkpoints=[model], tokenizer=tokenizer, scorer=always_right)
    records = assert_outputs_agree(strict_args.output_dir, strict)
    finished = [record["finished"] for record in records]
    assert True in finished and False in finished
    assert [record["score"] for record in records] == [float(f) for f in finished]
    truncation_rate = finished.count(False) / len(finished)
    assert strict[0]["truncation_rate"] == pytest.approx(truncation_rate)
    assert strict[0]["accuracy"] == pytest.approx(1 - truncation_rate)

    lenient_args = fast_config(tmp_path / "lenient", score_truncated=True, **common)
    lenient = evaluate(lenient_args, checkpoints=[model], tokenizer=tokenizer, scorer=always_right)
    assert lenient[0]["accuracy"] == 1.0 and lenient[0]["truncation_rate"] == pytest.approx(truncation_rate)


def test_unparseable_gold_answers_fail_before_generation(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="row 1"):
        check_answers(["2", ""], "math_verify")
    check_answers(["2", ""], "exact_match")  # exact match needs no parsing
    dataset = Dataset.from_list([{"question": "1+1=", "answer": "2"}, {"question": "?", "answer": ""}])
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    args = fast_config(tmp_path, scorer="math_verify", realign_lambdas=[1.0])
    with pytest.raises(ValueError, match="cannot parse 1 of the 2 gold answers"):
        evaluate(args, checkpoints=[model], tokenizer=tokenizer, dataset=dataset)
    assert not os.path.exists(args.output_dir)


# ------------------------------------------------------------------------------------------------ generation, tokens


def test_count_generated_tokens_stops_at_first_eos():
    pad = 0
    completion_ids = torch.tensor(
        [
            [5, 6, EOS, pad, pad],  # EOS then padding
            [5, 6, 7, 8, 9],  # no EOS: ran to max_new_tokens
            [EOS, pad, pad, pad, pad],  # EOS first
            [5, EOS, EOS, EOS, EOS],  # pad token == EOS token (Qwen-style)
            [5, pad, 6, 11, pad],  # a generated pad id before the end is a real token; 11 is a second EOS id
        ]
    )
    counts, finished = count_generated_tokens(completion_ids, [EOS, 11])
    assert counts.tolist() == [3, 5, 1, 2, 4]
    assert finished.tolist() == [True, False, True, True, True]
    with pytest.raises(ValueError, match="EOS"):
        count_generated_tokens(completion_ids, [])


def test_generate_completions_equals_each_prompt_alone(tokenizer):
    """Sorting by length, padding and batching must give each prompt its own greedy completion and token count."""
    model = tiny_causal_lm("qwen2", seed=7, vocab_size=len(tokenizer))
    prompts = ["1+1=", "a much longer prompt: 12*12=", "xy", "9-4="]
    alone = [greedy(model, tokenizer, p, max_new_tokens=8) for p in prompts]
    # Make the 3rd generated token of the longest completion an EOS too, so that rows stop at different steps
    longest = max(range(len(prompts)), key=lambda i: len(alone[i]))
    assert len(alone[longest]) >= 4
    stop_id = int(alone[longest][2])
    eos_ids = [EOS, stop_id]
    completions = generate_completions(
        model,
        tokenizer,
        prompts,
        num_samples=1,
        batch_size=3,
        eos_token_ids=eos_ids,
        sampling=SamplingSettings(max_new_tokens=8),
    )
    assert [len(samples) for samples in completions] == [1, 1, 1, 1]
    for prompt, samples in zip(prompts, completions):
        inputs = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        reference = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=eos_ids
        )[0, inputs["input_ids"].shape[1] :]
        assert samples[0].num_tokens == len(reference) and samples[0].token_ids == reference.tolist()
        assert samples[0].finished == bool(torch.isin(reference, torch.tensor(eos_ids)).any())
        assert samples[0].text == tokenizer.decode(reference, skip_special_tokens=True)
    assert completions[longest][0].num_tokens <= 3 and completions[longest][0].finished


def test_sampling_settings_reach_generate_and_eos_ids_come_from_model_and_tokenizer(tokenizer):
    from trl_realign.evaluation.generation import generate_kwargs

    greedy_kwargs = generate_kwargs(SamplingSettings(5, num_beams=2))
    assert greedy_kwargs == {"max_new_tokens": 5, "num_beams": 2, "do_sample": False, "temperature": None,
                             "top_p": None, "top_k": None}  # fmt: skip
    sampled = generate_kwargs(SamplingSettings(5, temperature=0.7, top_p=0.9, top_k=20))
    assert sampled == {"max_new_tokens": 5, "num_beams": 1, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                       "top_k": 20}  # fmt: skip
    for bad in (dict(max_new_tokens=0), dict(max_new_tokens=4, top_p=0.0), dict(max_new_tokens=4, temperature=-1)):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)

    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = [7, EOS]
    assert resolve_eos_token_ids(model, tokenizer) == [7, EOS]
    model.generation_config.eos_token_id = 9
    assert resolve_eos_token_ids(model, tokenizer) == [9, tokenizer.eos_token_id]


def test_generate_completions_needs_a_mixing_model_for_lambdas(tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="realign_lambda"):
        generate_completions(model, tokenizer, ["a"], [0.5], sampling=SamplingSettings(4), eos_token_ids=[EOS])
    with pytest.raises(ValueError, match="one per prompt"):
        generate_completions(model, tokenizer, ["a", "b"], [0.5], sampling=SamplingSettings(4), eos_token_ids=[EOS])


# ----------------------------------------------------------------------------------------------------- data, prompts


def test_load_eval_dataset_from_files_folders_and_objects(tmp_path):
    rows = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}]
    dataset = Dataset.from_list(rows)
    dataset.to_json(str(tmp_path / "d.jsonl"))
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.to_csv(str(tmp_path / "d.csv"), index=False)
    with open(tmp_path / "d.json", "w") as f:
        json.dump(rows, f)
    DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "saved"))
    for source in ("d.jsonl", "d.parquet", "d.csv", "d.json", "saved"):
        loaded = load_eval_dataset(str(tmp_path / source), split="test")
        # CSV reads the answers back as numbers
        assert [(r["question"], str(r["answer"])) for r in loaded] == [(r["question"], r["answer"]) for r in rows]
    assert load_eval_dataset(dataset) is dataset
    assert load_eval_dataset(DatasetDict({"test": dataset}), split="test") is dataset
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_eval_dataset(DatasetDict({"test": dataset}), split="validation")
    with pytest.raises(FileNotFoundError, match="not exist"):
        load_eval_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="dataset_name"):
        load_eval_dataset(None)


def test_build_prompts_with_and_without_chat_template(tokenizer):
    args = EvalConfig(prompt_template="Q: {prompt} A:", system_prompt="Be brief.")
    prompts = build_prompts(["1+1=", [{"role": "user", "content": "hi"}]], tokenizer, args)
    assert prompts == ["<|system|>Be brief.<|user|>Q: 1+1= A:<|assistant|>", "<|user|>hi<|assistant|>"]
    raw = EvalConfig(prompt_template="Q: {prompt} \\boxed{}", use_chat_template=False)
    assert build_prompts(["1+1="], tokenizer, raw) == ["Q: 1+1= \\boxed{}"]
    with pytest.raises(ValueError, match="chat messages"):
        build_prompts([[{"role": "user", "content": "hi"}]], tokenizer, raw)


def test_eval_config_validates_and_parses_with_trl_parser(tmp_path):
    from trl import TrlParser

    with pytest.raises(ValueError, match="num_samples=1"):
        EvalConfig(temperature=0.0, num_samples=4)
    with pytest.raises(ValueError, match="prompt"):
        EvalConfig(prompt_template="no placeholder")
    config_file = tmp_path / "eval.yaml"
    config_file.write_text("checkpoints: [a, b]\nrealign_lambdas: [0.5, 1.5]\nnum_samples: 4\n")
    (args,) = TrlParser((EvalConfig,)).parse_args_and_config(
        ["--config", str(config_file), "--report_to", "wandb", "--use_chat_template", "false", "--top_p", "0.9",
         "--score_truncated", "true"]
    )
    assert args.checkpoints == ["a", "b"] and args.realign_lambdas == [0.5, 1.5] and args.num_samples == 4
    assert args.report_to == ["wandb"] and args.use_chat_template is False and args.top_p == 0.9
    assert (args.temperature, args.max_new_tokens) == (0.7, 4096)
    assert args.score_truncated is True and EvalConfig().score_truncated is False


# ---------------------------------------------------------------------------------------------------------- plotting


def test_plot_is_a_png_with_accuracy_truncation_and_tokens(tmp_path):
    summary = [
        {"method": "inra", "realign_lambda": lam, "accuracy": acc, "truncation_rate": cut, "mean_tokens": tokens}
        for lam, acc, cut, tokens in [(1.0, 0.3, 0.1, 900.0), (0.0, 0.2, 0.4, 1500.0), (0.5, 0.25, 0.2, 1200.0)]
    ]
    path = plot_lambda_sweep(summary, str(tmp_path / "sweep.png"), title="MATH-500")
    assert_valid_png(path, size=(1680, 480))
    panels = lambda_sweep_figure(summary).axes
    assert [axes.get_ylabel() for axes in panels] == [
        "Accuracy (Pass@1, %)", "Truncated (no EOS, %)", "Mean generated tokens"
    ]
    for axes, expected in zip(panels, ([20, 25, 30], [40, 20, 10], [1500, 1200, 900])):
        (line,) = axes.get_lines()[:1]
        assert list(line.get_xdata()) == [0.0, 0.5, 1.0]
        assert list(line.get_ydata()) == pytest.approx(expected)
    with pytest.raises(ValueError, match="truncation_rate"):
        plot_lambda_sweep([{k: v for k, v in summary[0].items() if k != "truncation_rate"}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_lambda_sweep([], str(tmp_path / "empty.png"))


def test_plot_rate_panels_share_one_percent_scale():
    """A sweep that never truncates still shows its truncation rate on 0-100 %, as accuracy is, not on 0-1."""
    summary = [
        {"method": "inra", "realign_lambda": lam, "accuracy": acc, "truncation_rate": 0.0, "mean_tokens": 20.0}
        for lam, acc in [(0.0, 0.995), (1.0, 0.4)]
    ]
    accuracy, truncation, tokens = lambda_sweep_figure(summary).axes
    assert accuracy.get_ylim() == truncation.get_ylim() == (0.0, 100.0)
    assert list(truncation.get_lines()[0].get_ydata()) == [0.0, 0.0]
    assert list(accuracy.get_lines()[0].get_ydata()) == pytest.approx([99.5, 40.0])
    assert tokens.get_ylim() != (0.0, 100.0)


# -------------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def inra_setup(tokenizer):
    from trl_realign.modeling.adapter import adapter_parameter_names, add_layer_adapter
    from trl_realign.modeling.inra import InRaForCausalLM

    base = tiny_causal_lm("qwen2", seed=4, vocab_size=len(tokenizer))
    expanded = add_layer_adapter(tiny_causal_lm("qwen2", seed=4, vocab_size=len(tokenizer)))
    adapter = set(adapter_parameter_names(expanded))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in expanded.named_parameters():
            if name in adapter:
                param.add_(torch.randn_like(param) * 0.3)
    return base, expanded, InRaForCausalLM.from_model(expanded)


def test_evaluate_inra_per_row_lambda(tmp_path, tokenizer, inra_setup, monkeypatch):
    base, expanded, inra = inra_setup
    lambdas_seen = []
    original = inra.generate

    def recording_generate(*args, **kwargs):
        lambdas_seen.append(kwargs["realign_lambda"].tolist())
        return original(*args, **kwargs)

    monkeypatch.setattr(inra, "generate", recording_generate)

    # Greedy: λ=0 must reproduce the base model and λ=1 the expanded model, although rows of a batch mix λ
    args = fast_config(tmp_path, temperature=0.0, num_samples=1, realign_lambdas=[0.0, 0.5, 1.0], batch_size=4)
    summary = evaluate(args, model=inra, tokenizer=tokenizer)
    records = assert_outputs_agree(args.output_dir, summary)
    assert [row["realign_lambda"] for row in summary] == [0.0, 0.5, 1.0]
    assert all(row["method"] == "inra" and row["num_prompts"] == 3 and row["num_samples"] == 3 for row in summary)
    assert any(len(set(batch)) > 1 for batch in lambdas_seen)  # one batch held several λ
    prompts = build_prompts([json.loads(line)["question"] for line in open(ARITHMETIC)], tokenizer, args)
    for record in records:
        reference_model = {0.0: base, 1.0: expanded}.get(record["realign_lambda"])
        if reference_model is not None:
            expected = greedy(reference_model, tokenizer, prompts[record["prompt_index"]])
            assert record["completion"] == tokenizer.decode(expected, skip_special_tokens=True)
            assert record["num_tokens"] == len(expected)
    ends = {lam: [r["completion"] for r in records if r["realign_lambda"] == lam] for lam in (0.0, 1.0)}
    assert ends[0.0] != ends[1.0]


def test_evaluate_sampling_with_custom_scorer(tmp_path, tokenizer, inra_setup, capfd):
    inra = inra_setup[2]

    def even_length(completion, answer):  # a scorer with a non-trivial mean
        return len(completion) % 2 == 0

    args = fast_config(tmp_path, realign_lambdas=[-0.5, 1.5], num_samples=3, disable_tqdm=False, score_truncated=True)
    summary = evaluate(args, model=inra, tokenizer=tokenizer, scorer=even_length)
    progress_bar = capfd.readouterr().err
    assert "λ sweep" in progress_bar and "6/6" in progress_bar  # 3 prompts × 2 λ
    records = assert_outputs_agree(args.output_dir, summary)
    assert len(records) == 3 * 2 * 3
    assert all(r["score"] == float(len(r["completion"]) % 2 == 0) for r in records)
    assert all(1 <= r["num_tokens"] <= args.max_new_tokens for r in records)
    assert {r["sample_index"] for r in records} == {0, 1, 2}


def test_evaluate_dera_pair(tmp_path, tokenizer, inra_setup):
    base, expanded, _ = inra_setup
    args = fast_config(tmp_path, temperature=0.0, num_samples=1, realign_lambdas=[1.0, 0.0])
    summary = evaluate(args, model=expanded, ref_model=base, tokenizer=tokenizer)
    records = assert_outputs_agree(args.output_dir, summary)
    assert [row["method"] for row in summary] == ["dera", "dera"]
    assert [row["realign_lambda"] for row in summary] == [0.0, 1.0]  # sorted by λ
    prompts = build_prompts([json.loads(line)["question"] for line in open(ARITHMETIC)], tokenizer, args)
    for record in records:
        reference_model = base if record["realign_lambda"] == 0.0 else expanded
        expected = greedy(reference_model, tokenizer, prompts[record["prompt_index"]])
        assert record["completion"] == tokenizer.decode(expected, skip_special_tokens=True)


def test_evaluate_inra_and_dera_from_paths_agree(tmp_path, tokenizer, inra_setup):
    """The config-only route (as `trl-realign eval`): an InRa checkpoint, and DeRa over its two paths."""
    base, expanded, _ = inra_setup
    for name, model in (("base", base), ("expanded", expanded)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    common = dict(temperature=0.0, num_samples=1, realign_lambdas=[0.0, 0.7, 1.3], dtype="float32", device="cpu")
    inra_args = fast_config(tmp_path / "inra", model_name_or_path=str(tmp_path / "expanded"), **common)
    dera_args = fast_config(
        tmp_path / "dera",
        model_name_or_path=str(tmp_path / "expanded"),
        ref_model_name_or_path=str(tmp_path / "base"),
        **common,
    )
    inra_summary, dera_summary = evaluate(inra_args), evaluate(dera_args)
    assert [row["method"] for row in inra_summary + dera_summary] == ["inra"] * 3 + ["dera"] * 3
    inra_records = assert_outputs_agree(inra_args.output_dir, inra_summary)
    dera_records = assert_outputs_agree(dera_args.output_dir, dera_summary)
    assert [r["completion"] for r in inra_records] == [r["completion"] for r in dera_records]
    assert [r["num_tokens"] for r in inra_records] == [r["num_tokens"] for r in dera_records]


def test_evaluate_plain_checkpoints_from_paths(tmp_path, tokenizer):
    paths = []
    for seed in (1, 2):
        model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
        path = str(tmp_path / f"student-{seed}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    args = fast_config(
        tmp_path, checkpoints=paths, realign_lambdas=[0.5, 2.0], temperature=0.0, num_samples=1, dtype="float32"
    )
    summary = evaluate(args)
    records = assert_outputs_agree(args.output_dir, summary)
    assert [(row["model"], row["realign_lambda"]) for row in summary] == [(paths[0], 0.5), (paths[1], 2.0)]
    prompts = build_prompts([json.loads(line)["question"] for line in open(ARITHMETIC)], tokenizer, args)
    for seed, path in zip((1, 2), paths):
        model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
        for record in (r for r in records if r["model"] == path):
            expected = greedy(model, tokenizer, prompts[record["prompt_index"]])
            assert record["completion"] == tokenizer.decode(expected, skip_special_tokens=True)
            assert record["num_tokens"] == len(expected)


def test_evaluate_logs_a_wandb_table(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    args = fast_config(tmp_path, realign_lambdas=[1.0], num_samples=1, temperature=0.0, report_to=["wandb"])
    summary = evaluate(args, checkpoints=[model], tokenizer=tokenizer)
    tables = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "eval" / "*.json"))
    sweep = [t for t in tables if os.path.basename(t).startswith("lambda_sweep")]
    assert len(sweep) == 1 and any(os.path.basename(t).startswith("samples") for t in tables)
    table = json.load(open(sweep[0]))
    assert table["columns"] == list(summary[0]) and "truncation_rate" in table["columns"]
    assert table["data"] == [[row[c] for c in table["columns"]] for row in summary]
    import wandb

    assert wandb.run is None  # evaluate finished the run it started


def test_evaluate_leaves_an_active_wandb_run_alone_unless_report_to_says_wandb(tmp_path, tokenizer, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    run = wandb.init(mode="offline", project="user-run")
    logged = []
    monkeypatch.setattr(run, "log", lambda *args, **kwargs: logged.append(args))
    try:
        common = dict(realign_lambdas=[1.0], num_samples=1, temperature=0.0)
        quiet = fast_config(tmp_path / "quiet", report_to=[], **common)
        evaluate(quiet, checkpoints=[model], tokenizer=tokenizer)
        assert logged == [] and wandb.run is run
        loud = fast_config(tmp_path / "loud", report_to=["wandb"], **common)
        evaluate(loud, checkpoints=[model], tokenizer=tokenizer)
        assert len(logged) == 1 and "eval/lambda_sweep" in logged[0][0]
        assert wandb.run is run  # the user's run is logged into, not finished
    finally:
        run.finish()


def test_evaluate_rejects_bad_input_before_loading(tmp_path, tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="No model"):
        evaluate(fast_config(tmp_path))
    with pytest.raises(ValueError, match="one λ label per checkpoint"):
        evaluate(fast_config(tmp_path, realign_lambdas=[0.5]), checkpoints=[model, model], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="does not take `realign_lambda`"):
        evaluate(fast_config(tmp_path), model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(fast_config(tmp_path, realign_lambdas=[1.0]), checkpoints=[model])
    with pytest.raises(ValueError, match="not both"):
        args = fast_config(tmp_path, checkpoints=["x"], realign_lambdas=[1.0])
        evaluate(args, checkpoints=[model], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no column 'problem'"):
        args = fast_config(tmp_path, prompt_column="problem", realign_lambdas=[1.0])
        evaluate(args, checkpoints=[model], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="aligned model"):
        evaluate(fast_config(tmp_path), ref_model=model, tokenizer=tokenizer)


def test_tokenizer_without_pad_token_pads_with_eos_on_a_copy(tmp_path, tokenizer):
    import copy

    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    model = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer))
    common = dict(realign_lambdas=[1.0], temperature=0.0, num_samples=1)
    summary = evaluate(fast_config(tmp_path / "a", **common), checkpoints=[model], tokenizer=no_pad)
    reference = evaluate(fast_config(tmp_path / "b", **common), checkpoints=[model], tokenizer=tokenizer)
    assert no_pad.pad_token is None  # the caller's tokenizer is left as it was
    # left padding with EOS instead of <pad> changes nothing under the attention mask
    assert summary == reference
    completions = [[r["completion"] for r in read_outputs(tmp_path / d / "eval")[0]] for d in ("a", "b")]
    assert completions[0] == completions[1]
