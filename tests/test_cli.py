"""The `trl-realign` CLI: parsing, early errors, the accelerate relaunch, recipes, and the non-training subcommands."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_realign.cli import launch
from trl_realign.cli.errors import UsageError
from trl_realign.cli.main import COMMANDS, run_command
from trl_realign.cli.parsing import parse_command_line
from trl_realign.testing import tiny_causal_lm


ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "recipes"
DATA = Path(__file__).parent / "fixtures" / "data"
RECIPE_COMMANDS = {"trra": "trra", "onpolicy": "onpolicy", "inra": "sft", "dpo": "dpo", "sweeps": "sweep", "eval": "eval"}
PARSED_COMMANDS = ("trra", "onpolicy", "sft", "dpo", "expand", "generate", "sweep", "prepare", "eval")


def command_module(name):
    return importlib.import_module(f"trl_realign.cli.{COMMANDS[name][0]}")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load weights or a tokenizer fails the test: errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the bad input was reported")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("cli_models")
    for name, seed in (("A", 0), ("B", 1)):
        tiny_causal_lm("qwen2", seed=seed, vocab_size=len(tokenizer)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(1, 5)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def trra_args(models, *extra):
    return ["--model_name_or_path", str(models / "A"), "--aligned_model_name_or_path", str(models / "B"),
            "--dataset_name", str(models / "data.jsonl"), "--use_cpu", "true", "--bf16", "false",
            "--report_to", "none", "--output_dir", "unused", *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------------------- help
def test_top_level_help_lists_every_command(capsys):
    run_command(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out
    with pytest.raises(UsageError, match="unknown command 'trian'.*trra, onpolicy"):
        run_command(["trian"])


@pytest.mark.parametrize("name", PARSED_COMMANDS)
def test_help_documents_every_option(name, capsys):
    parser = command_module(name).make_parser()
    undocumented = [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()]
    assert undocumented == []
    with pytest.raises(SystemExit) as exit_info:
        run_command([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for action in parser._actions:
        assert action.option_strings[0] in out
    if name in ("trra", "sft", "dpo", "sweep"):
        assert "--accelerate_config" in out and "--num_processes" in out


# --------------------------------------------------------------------------------------------------- early errors
def test_unknown_yaml_key_is_reported_before_loading(models, tmp_path, no_model_loading):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("realign_lambda: 2.0\nrealign_lamda: 3.0\n")
    with pytest.raises(ValueError, match=r"unknown keys in the YAML recipe.*'realign_lamda'"):
        run_command(["trra", "--config", str(recipe), *trra_args(models)])


def test_missing_config_file(models, no_model_loading):
    with pytest.raises(FileNotFoundError, match="config file 'missing.yaml' not found"):
        run_command(["trra", "--config", "missing.yaml", *trra_args(models)])


def test_missing_data_file(models, tmp_path, no_model_loading):
    args = trra_args(models)
    args[args.index("--dataset_name") + 1] = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*does not exist"):
        run_command(["trra", *args])


def test_missing_model_folder(models, no_model_loading):
    args = trra_args(models)
    args[args.index("--aligned_model_name_or_path") + 1] = "./no/such/model"
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        run_command(["trra", *args])


def test_unknown_accelerate_config(models, no_model_loading):
    with pytest.raises(ValueError, match=r"unknown `--accelerate_config zero4`.*zero2.*zero3_offload.*--config_file"):
        run_command(["trra", *trra_args(models), "--accelerate_config", "zero4"])


def test_accelerate_config_file_errors(models, tmp_path, no_model_loading):
    with pytest.raises(FileNotFoundError, match="accelerate config file 'mine.yaml'"):
        run_command(["trra", *trra_args(models), "--config_file", "mine.yaml"])
    (tmp_path / "mine.yaml").write_text("num_processes: 2\n")
    with pytest.raises(ValueError, match="either `--accelerate_config NAME` or `--config_file FILE`"):
        run_command(["trra", *trra_args(models), "--accelerate_config", "zero2", "--config_file", str(tmp_path / "mine.yaml")])


def test_unknown_flag(models, no_model_loading):
    with pytest.raises(ValueError, match=r"unknown argument '--realign_lamda'"):
        run_command(["trra", *trra_args(models), "--realign_lamda", "2"])


def test_bf16_on_a_machine_without_it(models, tmp_path, monkeypatch, no_model_loading):
    """TRL's default bf16 becomes float32 there, and says so; bf16 asked for explicitly is refused, naming the fix."""
    from trl_realign.cli import parsing

    monkeypatch.setattr(parsing, "_bf16_supported", lambda: False)
    args = trra_args(models)
    for option in ("--use_cpu", "--bf16"):
        del args[args.index(option) : args.index(option) + 2]
    parsed = parse_command_line(command_module("trra").make_parser(), "trra", args)
    assert parsed.args[1].bf16 is False and "float32" in parsed.note and "TRL's default bf16" in parsed.note
    with pytest.raises(ValueError, match=r"ask for bf16, which this machine does not support.*`--bf16 false`"):
        run_command(["trra", *args, "--bf16", "true"])
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text("bf16: true\n")
    with pytest.raises(ValueError, match=r"`--bf16 false` or set `bf16: false` in the recipe"):
        run_command(["trra", "--config", str(recipe), *args])
    # bf16 on the CPU, asked for, is what transformers allows
    parsed = parse_command_line(command_module("trra").make_parser(), "trra", [*args, "--bf16", "true", "--use_cpu", "true"])
    assert parsed.args[1].bf16 is True and parsed.note is None


@pytest.mark.parametrize("name", ["sft", "dpo"])
def test_adapter_commands_refuse_model_lora(models, name, no_model_loading):
    with pytest.raises(ValueError, match="adapter_lora"):
        run_command([name, "--model_name_or_path", str(models / "A"), "--dataset_name", str(models / "data.jsonl"),
              "--use_peft", "true", "--use_cpu", "true", "--report_to", "none", "--output_dir", "unused"])  # fmt: skip


# ------------------------------------------------------------------------------------------ parsing and relaunch
def test_yaml_env_block_and_flags_override_yaml(models, tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_REALIGN_TEST_VAR", raising=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("env:\n  TRL_REALIGN_TEST_VAR: from-yaml\nrealign_lambda: 2.0\nbeta: 0.25\n")
    script_args, training_args, *_ = parse_command_line(
        command_module("trra").make_parser(), "trra", ["--config", str(recipe), *trra_args(models), "--realign_lambda", "5"]
    ).args
    assert (training_args.realign_lambda, training_args.beta) == (5.0, 0.25)
    assert script_args.dataset_name == str(models / "data.jsonl")
    import os

    assert os.environ["TRL_REALIGN_TEST_VAR"] == "from-yaml"


def test_launcher_options_relaunch_the_same_command(models, monkeypatch):
    calls = []
    monkeypatch.setattr(launch.subprocess, "run", lambda command, env: calls.append((command, env)) or subprocess.CompletedProcess(command, 0))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the parent loaded a model"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    args = trra_args(models, "--realign_lambda", "3")
    run_command(["trra", *args[:4], "--num_processes", "8", *args[4:], "--accelerate_config", "zero3", "--main_process_port=29999"])
    ((command, env),) = calls
    packaged = launch.accelerate_config_path("zero3")
    assert Path(packaged).is_file() and Path(packaged).parent.name == "accelerate_configs"
    assert command == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "8",
                       "--config_file", packaged, "--main_process_port=29999",
                       "-m", "trl_realign.cli.main", "trra", *args]  # fmt: skip
    assert "ACCELERATE_USE_DEEPSPEED" not in env


def test_relaunch_failure_exits_with_its_status(models, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", lambda command, env: subprocess.CompletedProcess(command, 3))
    with pytest.raises(SystemExit) as exit_info:
        run_command(["trra", *trra_args(models), "--num_processes", "2"])
    assert exit_info.value.code == 3


@pytest.mark.parametrize("name", launch.ACCELERATE_CONFIGS)
def test_packaged_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(launch.accelerate_config_path(name))
    assert config.distributed_type == "DEEPSPEED" and config.num_processes == 8 and config.mixed_precision == "bf16"
    assert config.deepspeed_config["zero_stage"] == (2 if name == "zero2" else 3)
    offload = "cpu" if name == "zero3_offload" else "none"
    assert config.deepspeed_config["offload_optimizer_device"] == config.deepspeed_config["offload_param_device"] == offload


# ------------------------------------------------------------------------------------------------------- recipes
def recipe_files():
    return sorted(p for p in RECIPES.glob("*/*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses_with_its_command(path, no_model_loading):
    name = RECIPE_COMMANDS[path.parent.name]
    module = command_module(name)
    extra = [] if name in ("sweep", "eval") else ["--use_cpu", "true"]  # the recipes are for GPUs (bf16)
    parsed = parse_command_line(module.make_parser(), name, ["--config", str(path), *extra])
    module.check(*parsed.args)  # required options set, local files exist, sweep keys are options


def load_recipe(relative):
    name = RECIPE_COMMANDS[Path(relative).parent.name]
    return parse_command_line(command_module(name).make_parser(), name, ["--config", str(RECIPES / relative), "--use_cpu", "true"]).args


def test_trra_recipes_have_the_paper_settings():
    script, args, model, trra, prep = load_recipe("trra/r1_distill_qwen_1.5b_lambda2.yaml")
    assert model.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert args.aligned_model_name_or_path == "agentica-org/DeepScaleR-1.5B-Preview"
    assert (args.max_steps, args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (200, 2e-5, "cosine", 0.1)
    assert 8 * args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert (prep.dataset_preparation, prep.min_completion_tokens, prep.max_completion_tokens) == ("openr1_math", 4096, 8192)
    assert args.max_length >= 8192
    *_, trra_iter, _ = load_recipe("trra/r1_distill_qwen_1.5b_iter2_lambda2.yaml")
    assert trra_iter.trra_iterations == 2
    sweep = yaml.safe_load((RECIPES / "sweeps" / "trra_lambda.yaml").read_text())
    assert sweep["parameters"]["realign_lambda"]["values"] == [0.5, 1.5, 2.0, 5.0, 10.0]
    assert (RECIPES / sweep["recipe"].removeprefix("recipes/")).is_file()


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_inra_recipes_have_the_paper_settings(size):
    script, args, model, prep = load_recipe(f"inra/r1_distill_qwen_{size}_short_cot.yaml")
    assert model.model_name_or_path == f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{size.upper()}"
    assert (args.num_train_epochs, args.learning_rate, args.num_adapters) == (3, 2e-5, 1)
    assert 8 * args.per_device_train_batch_size * args.gradient_accumulation_steps == 128
    assert prep.dataset_preparation == "openr1_short_cot"


@pytest.mark.parametrize(
    "recipe,lr,beta",
    [("qwen2.5_7b", 5e-7, 0.005), ("llama3.1_8b", 5e-6, 0.01), ("qwen2.5_1.5b", 5e-7, 0.005), ("llama3.2_3b", 5e-6, 0.01)],
)
def test_dpo_recipes(recipe, lr, beta):
    script, args, model, prep = load_recipe(f"dpo/{recipe}_ultrafeedback.yaml")
    assert (args.learning_rate, args.beta) == (lr, beta)
    assert 8 * args.per_device_train_batch_size * args.gradient_accumulation_steps == 128
    assert (script.dataset_name, prep.dataset_preparation) == ("HuggingFaceH4/ultrafeedback_binarized", "ultrafeedback")
    text = (RECIPES / "dpo" / f"{recipe}_ultrafeedback.yaml").read_text()
    assert "Memory per GPU" in text
    # only these two models have DPO values in the paper; the others say they are our choice
    stated_by_paper = "[paper]" in text.split("# DPO:")[1].splitlines()[0]
    assert stated_by_paper == (recipe in ("qwen2.5_7b", "llama3.1_8b"))


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_recipe_accelerate_configs_point_at_their_deepspeed_json(stage):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate" / f"{stage}.yaml"))
    ds = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == (2 if stage == "zero2" else 3)
    assert ("offload_param" in zero) == ("offload" in stage)
    # "auto" lets the recipe's batch size, precision and clipping fill the DeepSpeed config
    assert all(ds[key] == "auto" for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"))


# ------------------------------------------------------------------------------------ expand, prepare, generate
def test_expand_command(models, tmp_path):
    run_command(["expand", "--model_name_or_path", str(models / "A"), "--output_dir", str(tmp_path / "x"), "--num_adapters", "2"])
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert expanded.config.num_hidden_layers == 4 and expanded.config.layer_adapter["num_adapters"] == 2
    assert AutoTokenizer.from_pretrained(tmp_path / "x").get_vocab() == AutoTokenizer.from_pretrained(models / "A").get_vocab()


def test_prepare_command_writes_what_the_library_returns(models, tmp_path):
    from trl_realign.data.loading import load_dataset_source
    from trl_realign.data.prepare import prepare_openr1_short_cot

    out = tmp_path / "short.jsonl"
    run_command(["prepare", "--dataset_name", str(DATA / "openr1_math.jsonl"), "--dataset_preparation", "openr1_short_cot",
          "--tokenizer_name_or_path", str(models / "A"), "--output_path", str(out), "--keep_generations", "all"])  # fmt: skip
    written = load_dataset_source(str(out))["train"].to_list()
    expected = prepare_openr1_short_cot(
        load_dataset_source(str(DATA / "openr1_math.jsonl"))["train"], AutoTokenizer.from_pretrained(models / "A"), keep="all"
    ).to_list()
    assert written == expected and len(written) == 2


def test_prepare_command_needs_a_tokenizer_for_openr1(no_model_loading, tmp_path):
    with pytest.raises(ValueError, match=r"needs the model's tokenizer \(`--tokenizer_name_or_path`\)"):
        run_command(["prepare", "--dataset_name", str(DATA / "openr1_math.jsonl"), "--dataset_preparation", "openr1_math",
              "--output_path", str(tmp_path / "x.jsonl")])  # fmt: skip


def test_generate_matches_inra_row_by_row(tmp_path, tokenizer):
    from trl_realign.modeling.adapter import add_layer_adapter
    from trl_realign.modeling.inra import InRaForCausalLM

    model = add_layer_adapter(tiny_causal_lm("llama", seed=3, vocab_size=len(tokenizer)))
    with torch.no_grad():  # a non-identity adapter, so that λ changes the output
        for param in model.model.layers[0].parameters():
            param.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "inra")
    tokenizer.save_pretrained(tmp_path / "inra")
    out = tmp_path / "gen.jsonl"
    run_command(["generate", "--model_name_or_path", str(tmp_path / "inra"), "--prompt", "12+3=", "7*7=", "--realign_lambda",
          "0", "1.5", "--max_new_tokens", "6", "--batch_size", "3", "--dtype", "float32", "--output_file", str(out)])  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["realign_lambda"]) for r in records] == [("12+3=", 0.0), ("12+3=", 1.5), ("7*7=", 0.0), ("7*7=", 1.5)]

    inra = InRaForCausalLM.from_pretrained(tmp_path / "inra", dtype=torch.float32).eval()
    for record in records:  # naive reference: each row alone, no padding
        text = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        new = inra.generate(ids, realign_lambda=record["realign_lambda"], max_new_tokens=6, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()  # fmt: skip
        if tokenizer.eos_token_id in new:  # the package's one rule: up to and including the first EOS
            new = new[: new.index(tokenizer.eos_token_id) + 1]
        assert record["completion"] == tokenizer.decode(new, skip_special_tokens=True)
        assert record["num_tokens"] == len(new)
        assert record["finished"] == (tokenizer.eos_token_id in new)
    assert records[0]["completion"] != records[1]["completion"] or records[2]["completion"] != records[3]["completion"]


def test_generate_and_evaluate_count_tokens_alike_when_pad_is_eos(tmp_path, tokenizer):
    """A Qwen-style tokenizer (pad == EOS): both count a completion's tokens up to and including its first EOS."""
    import copy

    from datasets import Dataset

    from trl_realign.evaluation import EvalConfig, evaluate
    from trl_realign.modeling.adapter import add_layer_adapter

    model = add_layer_adapter(tiny_causal_lm("qwen2", seed=3, vocab_size=len(tokenizer)))
    with torch.no_grad():  # a non-identity adapter, so that λ changes the output
        for param in model.model.layers[0].parameters():
            param.normal_(0, 0.3)
    prompts, max_new_tokens = ["12+3=", "7*7=", "40-2="], 6
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts]  # fmt: skip

    def alone(text):  # each prompt alone, no padding, the expanded model (λ=1)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]

    # EOS (and pad) := a token the model emits on the first prompt but not on another, so rows stop at different steps
    completions = [alone(text).tolist() for text in chat]
    stop_id = next(t for t in completions[0] if any(t not in other for other in completions[1:]))
    qwen_like = copy.deepcopy(tokenizer)
    qwen_like.eos_token = qwen_like.pad_token = qwen_like.convert_ids_to_tokens(stop_id)
    assert qwen_like.pad_token_id == qwen_like.eos_token_id == stop_id
    model.config.eos_token_id = model.config.pad_token_id = stop_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = stop_id
    model.save_pretrained(tmp_path / "inra")
    qwen_like.save_pretrained(tmp_path / "inra")

    out = tmp_path / "gen.jsonl"
    run_command(["generate", "--model_name_or_path", str(tmp_path / "inra"), "--prompt", *prompts, "--realign_lambda", "0",
          "1", "--max_new_tokens", str(max_new_tokens), "--dtype", "float32", "--output_file", str(out)])  # fmt: skip
    generated = {(r["prompt"], r["realign_lambda"]): r for r in map(json.loads, out.read_text().splitlines())}
    args = EvalConfig(
        output_dir=str(tmp_path / "eval"), model_name_or_path=str(tmp_path / "inra"), realign_lambdas=[0.0, 1.0],
        prompt_column="prompt", prompt_template="{prompt}", num_samples=1, temperature=0.0,
        max_new_tokens=max_new_tokens, scorer="exact_match", dtype="float32", device="cpu", disable_tqdm=True,
    )  # fmt: skip
    dataset = Dataset.from_list([{"prompt": p, "answer": "0"} for p in prompts])
    evaluate(args, dataset=dataset)
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(evaluated) == len(generated) == 6
    from_cli = [generated[(record["prompt"], record["realign_lambda"])] for record in evaluated]
    assert [r["num_tokens"] for r in from_cli] == [r["num_tokens"] for r in evaluated]
    assert [r["completion"] for r in from_cli] == [r["completion"] for r in evaluated]
    assert [r["finished"] for r in from_cli] == [r["finished"] for r in evaluated]
    for prompt, text, ids in zip(prompts, chat, completions):
        expected = ids[: ids.index(stop_id) + 1] if stop_id in ids else ids
        assert generated[(prompt, 1.0)]["num_tokens"] == len(expected)
    assert any(r["finished"] for r in evaluated) and not all(r["finished"] for r in evaluated)


def test_generate_needs_prompts(tmp_path, no_model_loading):
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="exactly one of `--prompt"):
        run_command(["generate", "--model_name_or_path", str(tmp_path / "m")])


def test_generate_refuses_sampling_at_temperature_zero(tmp_path, no_model_loading):
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="--temperature. > 0"):
        run_command(["generate", "--model_name_or_path", str(tmp_path / "m"), "--prompt", "1+1=", "--do_sample", "true",
              "--temperature", "0"])  # fmt: skip


def test_eval_command_refuses_a_missing_dataset(tmp_path, no_model_loading):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_command(["eval", "--model_name_or_path", str(tmp_path / "m"), "--dataset_name", str(tmp_path / "math.jsonl")])
    (tmp_path / "math.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    with pytest.raises(ValueError, match="needs a model"):
        run_command(["eval", "--dataset_name", str(tmp_path / "math.jsonl")])


def test_eval_command_writes_a_summary_per_lambda(tmp_path, tokenizer):
    from trl_realign.modeling.adapter import expand_model

    expand_model(tiny_causal_lm("qwen2", seed=4, vocab_size=len(tokenizer)), str(tmp_path / "inra"), tokenizer=tokenizer)
    (tmp_path / "math.jsonl").write_text("".join(json.dumps({"problem": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(3)))
    run_command(["eval", "--model_name_or_path", str(tmp_path / "inra"), "--dataset_name", str(tmp_path / "math.jsonl"),
          "--dataset_split", "train", "--realign_lambdas", "0", "1", "--num_samples", "1", "--temperature", "0",
          "--max_new_tokens", "3", "--scorer", "exact_match", "--dtype", "float32", "--output_dir", str(tmp_path / "eval"),
          "--disable_tqdm", "true", "--device", "cpu"])  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    rows = summary if isinstance(summary, list) else summary["summary"]
    assert sorted(row["realign_lambda"] for row in rows) == [0.0, 1.0]
    assert all(row["num_prompts"] == 3 for row in rows)


def test_adapter_training_under_zero3_needs_an_expanded_checkpoint(models, monkeypatch, no_model_loading):
    import transformers.integrations.deepspeed as hf_deepspeed

    monkeypatch.setattr(hf_deepspeed, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ValueError, match="needs an expanded checkpoint.*trl-realign expand"):
        run_command(["sft", "--model_name_or_path", str(models / "A"), "--dataset_name", str(models / "data.jsonl"),
              "--use_cpu", "true", "--report_to", "none", "--output_dir", "unused"])  # fmt: skip


# ------------------------------------------------------------------------------------------------- one-line errors
FIXTURE_DATA = str(DATA / "openr1_math.jsonl")
MISSING = "./no/such/model"
# name -> (argv, exit status, a piece of the fix); per command a bad or missing option and a missing model folder
ERROR_CASES = {
    "trra-nothing": (["trra"], 2, "in a YAML recipe: `--config FILE`"),
    "trra-unknown-option": (["trra", "--realign_lamda", "2"], 2, "`trl-realign trra --help` lists the options"),
    "trra-bad-value": (["trra", "--realign_lambda", "two"], 2, "see `trl-realign trra --help`"),
    "trra-missing-model": (["trra", "--model_name_or_path", MISSING, "--aligned_model_name_or_path", MISSING,
                            "--dataset_name", FIXTURE_DATA], 1, "pass an existing folder or a hub id"),
    "trra-missing-cache": (["trra", "--model_name_or_path", "org/a", "--aligned_model_name_or_path", "org/b",
                           "--dataset_name", FIXTURE_DATA, "--teacher_cache", "./no/such/cache"], 1,
                           "capture one first with `trl-realign cache-teachers"),
    "cache-teachers-nothing": (["cache-teachers", "--dataset_name", FIXTURE_DATA], 2, "pass them as flags"),
    "cache-teachers-missing-model": (["cache-teachers", "--model_name_or_path", MISSING, "--aligned_model_name_or_path",
                                      MISSING, "--dataset_name", FIXTURE_DATA, "--teacher_cache", "c"], 1,
                                     "pass an existing folder or a hub id"),
    "onpolicy-nothing": (["onpolicy", "--dataset_name", FIXTURE_DATA], 2, "pass them as flags"),
    "onpolicy-missing-model": (["onpolicy", "--model_name_or_path", MISSING, "--aligned_model_name_or_path", "org/b",
                                "--dataset_name", FIXTURE_DATA], 1, "pass an existing folder or a hub id"),
    "sft-bad-value": (["sft", "--num_adapters", "one"], 2, "see `trl-realign sft --help`"),
    "sft-missing-model": (["sft", "--model_name_or_path", MISSING, "--dataset_name", FIXTURE_DATA], 1,
                          "pass an existing folder or a hub id"),
    "dpo-nothing": (["dpo"], 2, "pass them as flags"),
    "dpo-missing-model": (["dpo", "--model_name_or_path", MISSING, "--dataset_name", FIXTURE_DATA], 1,
                          "pass an existing folder or a hub id"),
    "expand-bad-choice": (["expand", "--init", "zeros"], 2, "see `trl-realign expand --help`"),
    "expand-missing-model": (["expand", "--model_name_or_path", MISSING, "--output_dir", "x"], 1,
                             "pass an existing folder or a hub id"),
    "generate-nothing": (["generate"], 2, "pass it as a flag"),
    "generate-missing-model": (["generate", "--model_name_or_path", MISSING, "--prompt", "1+1="], 1,
                               "pass an existing folder or a hub id"),
    "eval-unknown-option": (["eval", "--temprature", "0"], 2, "see `--help`"),
    "eval-missing-model": (["eval", "--model_name_or_path", "/nonexistent", "--dataset_name", FIXTURE_DATA], 1,
                           "pass an existing folder or a hub id"),
    "sweep-bad-choice": (["sweep", "--method", "bayes"], 2, "see `trl-realign sweep --help`"),
    "sweep-missing-recipe": (["sweep", "--recipe", "./no/such/recipe.yaml", "--parameters",
                              '{"realign_lambda": {"values": [1, 2]}}'], 1, "see `trl-realign sweep --help`"),
    "prepare-nothing": (["prepare"], 2, "pass them as flags"),
    "prepare-missing-data": (["prepare", "--dataset_name", "./no/such/data.jsonl", "--output_path", "x.jsonl",
                              "--dataset_preparation", "ultrafeedback"], 1, "see `trl-realign prepare --help`"),
    "quickstart-bad-value": (["quickstart", "--seed", "zero"], 2, "see `trl-realign quickstart --help`"),
    "unknown-command": (["trian"], 2, "the commands are trra, onpolicy"),
}
DEBUG_CASES = {  # the same failures with the traceback asked for, by flag and by environment
    "eval-missing-model --debug": ([*ERROR_CASES["eval-missing-model"][0], "--debug"], {}),
    "trra-bad-value TRL_REALIGN_DEBUG=1": (ERROR_CASES["trra-bad-value"][0], {"TRL_REALIGN_DEBUG": "1"}),
}


@pytest.fixture(scope="module")
def error_reports(tmp_path_factory):
    """Every case through the console entry point, all in one subprocess (imports cost seconds per start)."""
    root = tmp_path_factory.mktemp("cli_errors")
    cases = [{"argv": argv} for argv, _, _ in ERROR_CASES.values()]
    cases += [{"argv": argv, "env": env} for argv, env in DEBUG_CASES.values()]
    (root / "cases.json").write_text(json.dumps(cases))
    env = {key: value for key, value in os.environ.items() if key not in ("WANDB_MODE", "TRL_REALIGN_DEBUG")}
    subprocess.run([sys.executable, str(Path(__file__).parent / "scripts" / "cli_error_cases.py"), "cases.json",
                    "report.json"], cwd=root, env=env, check=True, timeout=600)  # fmt: skip
    reports = json.loads((root / "report.json").read_text())
    return dict(zip([*ERROR_CASES, *DEBUG_CASES], reports))


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_expected_failures_are_one_line_with_the_fix(case, error_reports):
    argv, code, fix = ERROR_CASES[case]
    report = error_reports[case]
    lines = report["stderr"].splitlines()
    assert len(lines) == 1, report["stderr"]
    prefix = "trl-realign: error: " if case == "unknown-command" else f"trl-realign {argv[0]}: error: "
    assert lines[0].startswith(prefix) and lines[0].endswith(")") and fix in lines[0]
    assert report["code"] == code


@pytest.mark.parametrize("case", list(DEBUG_CASES))
def test_debug_shows_the_traceback(case, error_reports):
    report = error_reports[case]
    name = case.split()[0]
    assert "Traceback (most recent call last)" in report["stderr"]
    assert report["stderr"].splitlines()[-1] == error_reports[name]["stderr"].strip()
    assert report["code"] == ERROR_CASES[name][1]


def test_failures_after_the_checks_keep_their_traceback(models, monkeypatch):
    """A ValueError while training is not the user's input being refused: it escapes the console entry point as is."""
    from trl_realign.cli import main as cli_main

    def fail_in_training(*args):
        raise ValueError("deep inside training")

    monkeypatch.setattr(command_module("trra"), "main", fail_in_training)
    with pytest.raises(ValueError, match="deep inside training") as error_info:
        cli_main.main(["trra", *trra_args(models)])
    assert not isinstance(error_info.value, cli_main.UserError)
