import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from trl.experimental.gkd import GKDTrainer

from trl_realign.modeling import bypass_layer_adapter, expand_model, num_layer_adapters
from trl_realign.testing import tiny_causal_lm
from trl_realign.trainers import (
    LayerAdapterDPOConfig,
    LayerAdapterDPOTrainer,
    LayerAdapterSFTConfig,
    LayerAdapterSFTTrainer,
    LayerAdapterTrRaConfig,
    LayerAdapterTrRaTrainer,
)

from tiny_training import training_kwargs


PROMPTS = ["12+7=", "3+45=", "60+1=", "9+9=", "14+22=", "5+0=", "31+8=", "2+76="]


def sft_dataset():
    return Dataset.from_list([{"prompt": p, "completion": str(eval(p[:-1]))} for p in PROMPTS])


def dpo_dataset():
    return Dataset.from_list(
        [{"prompt": p, "chosen": str(eval(p[:-1])), "rejected": str(eval(p[:-1]) + 3)} for p in PROMPTS]
    )


def common(tmp_path, **kwargs):
    return training_kwargs(tmp_path, **{"learning_rate": 5e-2, **kwargs})


def base_model(tokenizer, family="qwen2", **kwargs):
    return tiny_causal_lm(family, vocab_size=len(tokenizer), **kwargs)


def assert_base_unchanged(trained, base, num_adapters):
    """Every original tensor bitwise equal (shifted by the adapter layers); returns the adapter's changed tensors."""
    with torch.no_grad():
        trained_state = trained.state_dict()
    base_state = base.state_dict()
    for name, value in base_state.items():
        new_name = name
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            new_name = name.replace(f"model.layers.{index}.", f"model.layers.{index + num_adapters}.", 1)
        assert torch.equal(trained_state[new_name], value), f"{new_name} changed"


def adapter_changed(trained, expanded_before, num_adapters):
    prefixes = tuple(f"model.layers.{i}." for i in range(num_adapters))
    before = {k: v for k, v in expanded_before.state_dict().items() if k.startswith(prefixes)}
    after = trained.state_dict()
    return [k for k, v in before.items() if not torch.equal(after[k], v)]


def expanded_copy(base, num_adapters=1):
    from trl_realign.modeling import add_layer_adapter

    return add_layer_adapter(copy.deepcopy(base), num_adapters=num_adapters)


@pytest.mark.parametrize("source,num_adapters,tie", [("model", 1, True), ("checkpoint", 2, False)])
def test_sft_trains_only_the_adapter_and_round_trips(tmp_path, tokenizer, caplog, source, num_adapters, tie):
    base = base_model(tokenizer, tie_word_embeddings=tie)
    if source == "checkpoint":
        model = expand_model(base, str(tmp_path / "expanded"), num_adapters=num_adapters, tokenizer=tokenizer)
    else:
        model = copy.deepcopy(base)
    args = LayerAdapterSFTConfig(**common(tmp_path, num_adapters=num_adapters))
    with caplog.at_level(logging.INFO, logger="trl_realign"):
        trainer = LayerAdapterSFTTrainer(model, args=args, train_dataset=sft_dataset(), processing_class=tokenizer)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    assert trainable == num_adapters * per_layer
    assert f"training {num_adapters} adapter layer(s)" in caplog.text and f"{trainable} trainable" in caplog.text
    # The adapter options are config fields, so they reach every logger (wandb, ...) with the rest of the config
    logged = trainer.args.to_dict()
    assert logged["num_adapters"] == num_adapters and logged["adapter_init"] == "identity"
    assert logged["adapter_lora"] is False and "o_proj" in logged["adapter_lora_target_modules"]

    trainer.train()

    model = trainer.model
    assert_base_unchanged(model, base, num_adapters)
    assert adapter_changed(model, expanded_copy(base, num_adapters), num_adapters)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    assert num_layer_adapters(loaded.config) == num_adapters
    saved_state, state = loaded.state_dict(), model.state_dict()
    assert saved_state.keys() == state.keys()
    assert all(torch.equal(saved_state[k], state[k]) for k in state)


def test_lora_on_adapter_keeps_every_base_weight(tmp_path, tokenizer):
    base = base_model(tokenizer)
    args = LayerAdapterSFTConfig(**common(tmp_path, adapter_lora=True, adapter_lora_r=4))
    trainer = LayerAdapterSFTTrainer(
        copy.deepcopy(base), args=args, train_dataset=sft_dataset(), processing_class=tokenizer
    )
    lora_names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n and ".layers.0." in n for n in lora_names)
    assert any(".o_proj.lora_B" in n for n in lora_names) and any(".down_proj.lora_B" in n for n in lora_names)
    trainer.train()

    merged = trainer.model.merge_and_unload()
    # The adapter layer's own weights are frozen too: only the LoRA update moved it
    expanded = expanded_copy(base)
    assert_base_unchanged(merged, base, 1)
    changed = adapter_changed(merged, expanded, 1)
    assert "model.layers.0.self_attn.o_proj.weight" in changed and "model.layers.0.mlp.down_proj.weight" in changed


def test_lora_without_residual_writers_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"lacks \['down_proj'\]"):
        LayerAdapterSFTConfig(**common(tmp_path, adapter_lora=True, adapter_lora_target_modules=["q_proj", "o_proj"]))
    args = LayerAdapterSFTConfig(**common(tmp_path))
    model = base_model(tokenizer)
    with pytest.raises(ValueError, match=r"lacks \['o_proj', 'down_proj'\]"):
        LayerAdapterSFTTrainer(model, args=args, train_dataset=sft_dataset(), processing_class=tokenizer,
                               peft_config=LoraConfig(target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match="only touch the adapter layers"):
        LayerAdapterSFTTrainer(base_model(tokenizer), args=args, train_dataset=sft_dataset(), processing_class=tokenizer,
                               peft_config=LoraConfig(target_modules=["o_proj", "down_proj"], layers_to_transform=[1],
                                                      layers_pattern="layers"))


def test_bad_setups_are_refused_before_training(tmp_path, tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tokenizer)))
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3"):
        LayerAdapterSFTTrainer(gpt2, args=LayerAdapterSFTConfig(**common(tmp_path)), train_dataset=sft_dataset())
    expanded = expanded_copy(base_model(tokenizer), num_adapters=2)
    with pytest.raises(ValueError, match="already expanded with 2"):
        LayerAdapterSFTTrainer(expanded, args=LayerAdapterSFTConfig(**common(tmp_path)), train_dataset=sft_dataset())
    with pytest.raises(ValueError, match="sync_ref_model"):
        LayerAdapterDPOConfig(**common(tmp_path, sync_ref_model=True))
    with pytest.raises(ValueError, match="takes no `ref_model`"):
        LayerAdapterDPOTrainer(base_model(tokenizer), ref_model=base_model(tokenizer), train_dataset=dpo_dataset())
    with pytest.raises(ValueError, match="ref_model_name_or_path"):
        LayerAdapterTrRaConfig(**common(tmp_path, ref_model_name_or_path="some/model"))
    with pytest.raises(ValueError, match="adapter_init"):
        LayerAdapterSFTConfig(**common(tmp_path, adapter_init="zeros"))


def naive_sequence_logps(model, batch):
    """Sum of the completion tokens' log-probs from full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(1)


@pytest.mark.parametrize("source,precompute", [("model", False), ("checkpoint", True)])
def test_dpo_reference_is_the_base_model(tmp_path, tokenizer, source, precompute):
    base = base_model(tokenizer, family="llama")
    model = copy.deepcopy(base) if source == "model" else expand_model(base, str(tmp_path / "exp"), tokenizer=tokenizer)
    args = LayerAdapterDPOConfig(**common(tmp_path, beta=0.5, precompute_ref_log_probs=precompute))
    trainer = LayerAdapterDPOTrainer(model, args=args, train_dataset=dpo_dataset(), processing_class=tokenizer)
    # No second model: the reference owns no parameters and shares the policy's weights
    assert not list(trainer.ref_model.parameters())
    trainer.train()
    assert_base_unchanged(trainer.model, base, 1)
    assert adapter_changed(trainer.model, expanded_copy(base), 1)

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    base_logps = naive_sequence_logps(base, batch)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), base_logps, rtol=1e-5, atol=1e-5)
    # The trained policy differs from the reference, and the loss TRL computes uses the base model as reference
    policy_logps = naive_sequence_logps(trainer.model, batch)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)
    chosen, rejected = (policy_logps - base_logps).chunk(2)
    expected = -F.logsigmoid(0.5 * (chosen - rejected)).mean()
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_dpo_with_lora_on_adapter(tmp_path, tokenizer):
    base = base_model(tokenizer)
    args = LayerAdapterDPOConfig(**common(tmp_path, adapter_lora=True, adapter_lora_r=4))
    trainer = LayerAdapterDPOTrainer(copy.deepcopy(base), args=args, train_dataset=dpo_dataset(), processing_class=tokenizer)
    trainer.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), naive_sequence_logps(base, batch), rtol=1e-5, atol=1e-5)
    merged = trainer.model.merge_and_unload()
    assert_base_unchanged(merged, base, 1)
    assert adapter_changed(merged, expanded_copy(base), 1)


def test_trra_reference_is_the_base_model(tmp_path, tokenizer):
    base = base_model(tokenizer)
    aligned = base_model(tokenizer, seed=1)
    lam = 0.5
    args = LayerAdapterTrRaConfig(**common(tmp_path, realign_lambda=lam))
    trainer = LayerAdapterTrRaTrainer(
        copy.deepcopy(base), aligned_model=aligned, args=args, train_dataset=sft_dataset(), processing_class=tokenizer
    )
    assert not list(trainer.ref_model.parameters())
    trainer.train()
    assert_base_unchanged(trainer.model, base, 1)
    assert adapter_changed(trainer.model, expanded_copy(base), 1)

    # The trainer's loss equals the full-logit TrRa loss whose reference A is the original (un-expanded) model
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        z_a = base(**kwargs).logits[:, :-1]
        z_b = aligned(**kwargs).logits[:, :-1]
        z_s = trainer.model(**kwargs).logits[:, :-1]
        with bypass_layer_adapter(trainer.model):
            torch.testing.assert_close(trainer.model(**kwargs).logits[:, :-1], z_a, rtol=0, atol=1e-6)
        expected = GKDTrainer.generalized_jsd_loss(z_s, lam * z_b + (1 - lam) * z_a, labels=batch["labels"][:, 1:], beta=1.0)
        loss = trainer.compute_loss(trainer.model, batch)
    assert not torch.allclose(z_s, z_a, atol=1e-4)  # the adapter moved the student away from A
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_completion_length_is_logged(tmp_path, tokenizer, kind):
    # Completions are the sum's digits plus EOS; all 8 prompts form one batch, so the logged mean is exact
    lengths = [len(str(eval(p[:-1]))) + 1 for p in PROMPTS]
    if kind == "sft":
        args = LayerAdapterSFTConfig(**common(tmp_path, per_device_train_batch_size=8, max_steps=1))
        trainer = LayerAdapterSFTTrainer(base_model(tokenizer), args=args, train_dataset=sft_dataset(),
                                         processing_class=tokenizer)
        expected = sum(lengths) / len(lengths)
    else:
        args = LayerAdapterDPOConfig(**common(tmp_path, per_device_train_batch_size=8, max_steps=1))
        trainer = LayerAdapterDPOTrainer(base_model(tokenizer), args=args, train_dataset=dpo_dataset(),
                                         processing_class=tokenizer)
        rejected = [len(str(eval(p[:-1]) + 3)) + 1 for p in PROMPTS]
        expected = (sum(lengths) + sum(rejected)) / (2 * len(lengths))
    trainer.train()
    logged = [entry["completion_length"] for entry in trainer.state.log_history if "completion_length" in entry]
    assert logged == [pytest.approx(expected)]


def test_inra_after_adapter_training_keeps_both_endpoints(tmp_path, tokenizer):
    from trl_realign import InRaForCausalLM

    base = base_model(tokenizer)
    trainer = LayerAdapterSFTTrainer(copy.deepcopy(base), args=LayerAdapterSFTConfig(**common(tmp_path, max_steps=3)),
                                     train_dataset=sft_dataset(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(tmp_path / "trained")
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "trained").eval()
    inra = InRaForCausalLM.from_pretrained(tmp_path / "trained").eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = base.eval()(**batch).logits
        trained_logits = expanded(**batch).logits
        at = {lam: inra(**batch, realign_lambda=lam).logits for lam in (0.0, 1.0, 0.5)}
    mask = batch["attention_mask"].bool()
    assert (trained_logits - base_logits)[mask].abs().max() > 1e-3  # the adapter learned something
    torch.testing.assert_close(at[0.0][mask], base_logits[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(at[1.0][mask], trained_logits[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(at[0.5][mask], (0.5 * trained_logits + 0.5 * base_logits)[mask], atol=1e-5, rtol=0)


def adapter_trainer(kind, model, tmp_path, tokenizer, **overrides):
    """A LayerAdapter{SFT,DPO,TrRa}Trainer on `model` with the tiny-training arguments and `overrides`."""
    if kind == "sft":
        args = LayerAdapterSFTConfig(**common(tmp_path, **overrides))
        return LayerAdapterSFTTrainer(model, args=args, train_dataset=sft_dataset(), processing_class=tokenizer)
    if kind == "dpo":
        args = LayerAdapterDPOConfig(**common(tmp_path, **overrides))
        return LayerAdapterDPOTrainer(model, args=args, train_dataset=dpo_dataset(), processing_class=tokenizer)
    args = LayerAdapterTrRaConfig(**common(tmp_path, realign_lambda=0.5, **overrides))
    return LayerAdapterTrRaTrainer(model, aligned_model=base_model(tokenizer, seed=1), args=args,
                                   train_dataset=sft_dataset(), processing_class=tokenizer)


def batch_logits(model, tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits[batch["attention_mask"].bool()]


@pytest.mark.parametrize("kind,lora", [("sft", True), ("dpo", True), ("trra", False)])
def test_saved_model_and_adapter_reload_as_the_trained_model(tmp_path, tokenizer, kind, lora):
    from trl_realign import InRaForCausalLM

    base = base_model(tokenizer)
    trainer = adapter_trainer(kind, copy.deepcopy(base), tmp_path, tokenizer, adapter_lora=lora, adapter_lora_r=4)
    trainer.train()
    trained = batch_logits(trainer.model, tokenizer)
    assert (trained - batch_logits(base, tokenizer)).abs().max() > 1e-3  # the adapter learned something

    trainer.save_model(str(tmp_path / "saved"))
    # A plain L+1 checkpoint (LoRA merged into the adapter layer), not PEFT's files naming the unexpanded base
    assert not (tmp_path / "saved" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    assert num_layer_adapters(loaded.config) == 1
    assert loaded.config.num_hidden_layers == base.config.num_hidden_layers + 1
    assert not [name for name in loaded.state_dict() if "lora" in name or "base_layer" in name]
    assert_base_unchanged(loaded, base, 1)
    torch.testing.assert_close(batch_logits(loaded, tokenizer), trained, rtol=0, atol=1e-5)
    inra = InRaForCausalLM.from_pretrained(str(tmp_path / "saved"))
    torch.testing.assert_close(batch_logits(inra, tokenizer), trained, rtol=0, atol=1e-5)
    if lora:  # saving merged a copy: the trainer's model still trains LoRA on an unmerged adapter
        assert [name for name, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in name]
        torch.testing.assert_close(batch_logits(trainer.model, tokenizer), trained, rtol=0, atol=0)

    trainer.save_adapter(str(tmp_path / "adapter"))
    rebuilt = InRaForCausalLM.from_base_and_adapter(copy.deepcopy(base), str(tmp_path / "adapter"))
    torch.testing.assert_close(batch_logits(rebuilt, tokenizer), trained, rtol=0, atol=1e-5)


def adapter_init(trainer):
    """Every tensor of the adapter layer (its own weights and any LoRA matrices on it), cloned."""
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if ".layers.0." in name}


@pytest.mark.parametrize("lora", [False, True])
def test_kaiming_adapter_and_lora_init_follow_the_seed(tmp_path, tokenizer, lora):
    base = base_model(tokenizer)
    inits = []
    for rng_state, seed in ((1, 0), (2, 0), (3, 1)):
        torch.manual_seed(rng_state)  # whatever ran before must not decide the init: only `seed` does
        trainer = adapter_trainer("sft", copy.deepcopy(base), tmp_path, tokenizer, seed=seed, adapter_init="kaiming",
                                  adapter_lora=lora, adapter_lora_r=4)
        inits.append(adapter_init(trainer))
    same, other = inits[0], inits[2]
    assert inits[1].keys() == same.keys() and all(torch.equal(inits[1][k], v) for k, v in same.items())
    assert all(not torch.equal(other[k], v) for k, v in same.items() if "lora_B" not in k and "norm" not in k)
    if lora:
        assert any("lora_A" in k for k in same)


def test_resumed_kaiming_lora_run_ends_as_the_uninterrupted_run(tmp_path, tokenizer):
    # PEFT checkpoints hold only the LoRA matrices: the frozen kaiming weights under them must be re-created exactly
    base = base_model(tokenizer)
    options = dict(adapter_init="kaiming", adapter_lora=True, adapter_lora_r=4, max_steps=4)
    full = adapter_trainer("sft", copy.deepcopy(base), tmp_path / "full", tokenizer, save_strategy="steps",
                           save_steps=2, **options)
    full.train()
    torch.manual_seed(7)
    resumed = adapter_trainer("sft", copy.deepcopy(base), tmp_path / "resumed", tokenizer, **options)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-2"))
    expected, state = full.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == state.keys()
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6, msg=name)


def test_all_linear_lora_targets_and_the_users_config_is_left_alone(tmp_path, tokenizer):
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    def lora_targets(trainer):
        names = [n for n, p in trainer.model.named_parameters() if "lora_A" in n]
        assert names and all(".layers.0." in n for n in names)
        return {n.split(".lora_A")[0].split(".")[-1] for n in names}

    # As the CLI passes it (`--adapter_lora_target_modules all-linear`), and as PEFT spells it
    for targets in (["all-linear"], "all-linear"):
        trainer = adapter_trainer("sft", base_model(tokenizer), tmp_path, tokenizer, adapter_lora=True,
                                  adapter_lora_target_modules=targets)
        assert lora_targets(trainer) == linear
    for targets in ("all-linear", ["o_proj", "down_proj"]):
        user_config = LoraConfig(r=4, target_modules=targets)
        before = copy.deepcopy(user_config.to_dict())
        trainer = LayerAdapterSFTTrainer(base_model(tokenizer), args=LayerAdapterSFTConfig(**common(tmp_path)),
                                         train_dataset=sft_dataset(), processing_class=tokenizer,
                                         peft_config=user_config)
        assert lora_targets(trainer) == (linear if targets == "all-linear" else set(targets))
        assert user_config.to_dict() == before
    with pytest.raises(ValueError, match="pattern"):
        LayerAdapterSFTConfig(**common(tmp_path, adapter_lora=True, adapter_lora_target_modules=".*proj"))


@pytest.mark.parametrize("kind,name", [("sft", "Layer-adapter SFT"), ("dpo", "Layer-adapter DPO"),
                                       ("trra", "Layer-adapter TrRa")])
def test_model_card_names_the_trainer_and_cites_the_paper(tmp_path, tokenizer, kind, name):
    from trl_realign.trainers.paper import REALIGN_PAPER

    trainer = adapter_trainer(kind, base_model(tokenizer), tmp_path, tokenizer)
    assert trainer._paper is REALIGN_PAPER and trainer._name == name
    assert {"trl", "trl-realign", "layer-adapter"} <= set(trainer._tag_names)
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert name in card and "2506.12704" in card and "Flexible Realignment of Language Models" in card
    assert "layer-adapter" in card and "trl-realign" in card


def test_cli_with_lora_saves_and_reports_the_plain_model_and_the_adapter(tmp_path, tokenizer, capsys):
    from trl_realign import InRaForCausalLM
    from trl_realign.cli.main import main

    base = base_model(tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    sft_dataset().to_json(tmp_path / "data.jsonl")
    out = tmp_path / "trained"
    main(["sft", "--model_name_or_path", str(tmp_path / "base"), "--dataset_name", str(tmp_path / "data.jsonl"),
          "--adapter_lora", "true", "--adapter_lora_r", "4", "--adapter_lora_target_modules", "all-linear",
          "--max_steps", "2", "--learning_rate", "0.05", "--per_device_train_batch_size", "4", "--use_cpu", "true",
          "--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--output_dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    layers = base.config.num_hidden_layers
    assert f"1 adapter layer(s) + {layers} original layers (LoRA merged into the adapter layers), to {out};" in printed
    assert f"adapter-only artifact to {out / 'layer_adapter'}" in printed
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.num_hidden_layers == layers + 1 and not (out / "adapter_config.json").exists()
    assert_base_unchanged(loaded, base, 1)
    rebuilt = InRaForCausalLM.from_base_and_adapter(copy.deepcopy(base), out / "layer_adapter")
    torch.testing.assert_close(batch_logits(rebuilt, tokenizer), batch_logits(loaded, tokenizer), rtol=0, atol=0)
    assert (batch_logits(loaded, tokenizer) - batch_logits(base, tokenizer)).abs().max() > 1e-3


def test_lora_on_the_adapter_is_refused_where_it_cannot_be_merged(tmp_path, tokenizer, monkeypatch):
    from trl_realign.trainers.layer_adapter import lora as layer_adapter_lora

    monkeypatch.setattr(layer_adapter_lora, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ValueError, match="not supported under DeepSpeed ZeRO-3 or FSDP.*adapter_lora=False"):
        adapter_trainer("sft", base_model(tokenizer), tmp_path, tokenizer, adapter_lora=True)


def test_the_layer_adapter_modules_moved_into_a_subpackage_and_their_old_paths_still_import():
    import importlib

    import trl_realign

    for old, new in (("layer_adapter_sft_trainer", "sft_trainer"), ("layer_adapter_reference", "reference"),
                     ("layer_adapter_lora", "lora")):  # fmt: skip
        assert importlib.import_module(f"trl_realign.trainers.{old}") is importlib.import_module(
            f"trl_realign.trainers.layer_adapter.{new}"
        )
    from trl_realign.trainers.layer_adapter_trra_config import LayerAdapterTrRaConfig as Old

    assert Old is trl_realign.LayerAdapterTrRaConfig is trl_realign.trainers.LayerAdapterTrRaConfig
