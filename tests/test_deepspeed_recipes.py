"""
DeepSpeed ZeRO-2/3 with 2 CPU processes (gloo), run through the `trl-realign` CLI in subprocesses: TrRa with both
teachers sharded must match a single-process run, and adapter SFT must change only the adapter and save a complete
checkpoint. The slowest tests of the suite: kept to three launches.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_realign.testing import tiny_causal_lm

from launching import accelerate_zero3_config, free_port, run


SCRIPTS = Path(__file__).parent / "scripts"
COMMON = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--dtype", "float32",
          "--max_steps", "1", "--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant",
          "--seed", "0", "--disable_tqdm", "true"]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ds_assets")
    for name, family, seed in (("A", "qwen2", 0), ("B", "qwen2", 1), ("base", "llama", 2)):
        tiny_causal_lm(family, seed=seed, vocab_size=len(tokenizer)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # Completions of different lengths, so a wrong per-process normalisation would show
    rows = [{"prompt": f"{i}+{i * 7}=", "completion": str(i + i * 7) * (1 + i % 3)} for i in range(1, 9)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_trra_zero3_teachers_sharded_matches_single_process(assets, tmp_path):
    from trl_realign.cli.main import main

    trra = ["--model_name_or_path", str(assets / "A"), "--aligned_model_name_or_path", str(assets / "B"),
            "--dataset_name", str(assets / "data.jsonl"), "--realign_lambda", "2.0", *COMMON]  # fmt: skip
    report = tmp_path / "sharding.json"
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_zero3_config(tmp_path),
         "--num_processes", "2", "--main_process_port", str(free_port()), str(SCRIPTS / "cli_trra_sharding.py"),
         str(report), *trra, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "zero3")], tmp_path)  # fmt: skip
    sharding = json.loads(report.read_text())
    assert sharding["aligned_model"] == {"num_params": 27, "all_partitioned": True}
    assert sharding["ref_model"] == {"num_params": 27, "all_partitioned": True}

    main(["trra", *trra, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "single")])
    single, zero3 = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "zero3" / "model.safetensors")
    initial = load_file(assets / "A" / "model.safetensors")
    assert zero3.keys() == single.keys() == initial.keys()
    assert sum(not torch.equal(single[k], initial[k]) for k in single) > len(single) // 2  # a real update
    for k in single:
        torch.testing.assert_close(zero3[k], single[k], atol=1e-6, rtol=1e-5, msg=k)


def check_adapter_checkpoint(base_dir: Path, trained_dir: Path) -> None:
    """Every tensor present with full shape; original layers bitwise equal to the base; the adapter layer trained."""
    base, trained = load_file(base_dir / "model.safetensors"), load_file(trained_dir / "model.safetensors")
    config = json.loads((trained_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["layer_adapter"]["num_adapters"] == 1

    def original_name(name):  # layer i of the expanded model is layer i-1 of the base
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(int(parts[2]) - 1)
        return ".".join(parts)

    adapter = {k for k in trained if k.startswith("model.layers.0.")}
    assert {original_name(k) for k in trained.keys() - adapter} == base.keys()
    for k in trained.keys() - adapter:
        assert torch.equal(trained[k], base[original_name(k)]), k
    for k in adapter:
        assert trained[k].shape == base[k].shape, k
    # The identity init zeroes the residual writers; one SGD step must have moved them
    assert trained["model.layers.0.self_attn.o_proj.weight"].abs().sum() > 0
    assert trained["model.layers.0.mlp.down_proj.weight"].abs().sum() > 0


def test_adapter_sft_zero3_from_expanded_checkpoint(assets, tmp_path):
    from trl_realign.cli.main import main

    main(["expand", "--model_name_or_path", str(assets / "base"), "--output_dir", str(tmp_path / "expanded")])
    run([sys.executable, "-m", "trl_realign.cli.main", "sft", "--model_name_or_path", str(tmp_path / "expanded"),
         "--dataset_name", str(assets / "data.jsonl"), *COMMON, "--per_device_train_batch_size", "2",
         "--output_dir", str(tmp_path / "sft"), "--config_file", accelerate_zero3_config(tmp_path),
         "--num_processes", "2", "--main_process_port", str(free_port())], tmp_path)  # fmt: skip
    check_adapter_checkpoint(assets / "base", tmp_path / "sft")


def test_adapter_sft_zero2_packaged_config(assets, tmp_path):
    # The packaged config is for 8 GPUs in bf16: the launcher options override both for 2 CPU processes
    run([sys.executable, "-m", "trl_realign.cli.main", "sft", "--model_name_or_path", str(assets / "base"),
         "--dataset_name", str(assets / "data.jsonl"), *COMMON, "--per_device_train_batch_size", "2",
         "--output_dir", str(tmp_path / "sft"), "--accelerate_config", "zero2", "--num_processes", "2",
         "--mixed_precision", "no", "--main_process_port", str(free_port())], tmp_path)  # fmt: skip
    check_adapter_checkpoint(assets / "base", tmp_path / "sft")


def test_adapter_dpo_zero2_reference_is_the_bypassed_model(assets, tmp_path):
    # The reference is the trained model with its adapter skipped: it must not become a DeepSpeed engine of its own
    pairs = [{"prompt": f"{i}+{i * 7}=", "chosen": str(i + i * 7), "rejected": str(i + i * 7 + 1) * 2} for i in range(1, 9)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    run([sys.executable, "-m", "trl_realign.cli.main", "dpo", "--model_name_or_path", str(assets / "base"),
         "--dataset_name", str(tmp_path / "pairs.jsonl"), *COMMON, "--per_device_train_batch_size", "2",
         "--output_dir", str(tmp_path / "dpo"), "--accelerate_config", "zero2", "--num_processes", "2",
         "--mixed_precision", "no", "--main_process_port", str(free_port())], tmp_path)  # fmt: skip
    check_adapter_checkpoint(assets / "base", tmp_path / "dpo")
