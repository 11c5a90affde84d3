import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn
from trl import DistillationConfig, DistillationTrainer

from trl_realign import OnPolicyTrRaConfig, OnPolicyTrRaTrainer, naive_realign_divergence, realign_logits
from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm

from launching import free_port, run
from tiny_training import training_kwargs


PROMPTS = ["12+7=", "3+45=", "60+1=", "9+9=", "14+22=", "5+0=", "31+8=", "2+76="]
SCRIPT = Path(__file__).parent / "scripts" / "onpolicy_trra_one_step.py"


def prompt_dataset(n=8, completions=False):
    rows = [{"prompt": p} for p in (PROMPTS * 4)[:n]]
    if completions:
        for row in rows:
            row["completion"] = str(eval(row["prompt"][:-1]))
    return Dataset.from_list(rows)


def on_policy_kwargs(tmp_path, **overrides):
    kwargs = training_kwargs(tmp_path, max_completion_length=12, gradient_checkpointing=False)
    kwargs.update(overrides)
    return kwargs


def make_args(tmp_path, **overrides):
    return OnPolicyTrRaConfig(**on_policy_kwargs(tmp_path, **overrides))


def models(tokenizer, family="llama", extra_rows=(0, 0)):
    a = tiny_causal_lm(family, seed=0, vocab_size=len(tokenizer) + extra_rows[0])
    b = tiny_causal_lm(family, seed=1, vocab_size=len(tokenizer) + extra_rows[1])
    return a, b


def fresh(model):
    """A trainable copy: passing a model as a teacher freezes it in place, as TRL does."""
    return copy.deepcopy(model).requires_grad_(True)


def generation_batch(trainer, n=None):
    """One sampled generation batch, exactly as the training loop prepares it."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    return trainer._prepare_inputs(batch)


def eos_biased(model, eos_token_id: int, bias: float) -> nn.Module:
    """`model` with an output-head bias that makes EOS `exp(bias)` times likelier: a model that stops early."""
    model = copy.deepcopy(model)
    weight = model.lm_head.weight
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[eos_token_id] = bias
    model.lm_head = head
    return model


def naive_loss(student, ref, aligned, inputs, lam, beta, temperature, vocab):
    """Full-logit divergence toward the fused teacher on the sampled completion tokens, summed / completion tokens."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    prompt_length = inputs["prompt_ids"].shape[1]
    positions = slice(prompt_length - 1, input_ids.shape[1] - 1)  # position t predicts token t+1

    mask = inputs["completion_mask"].bool()  # 0 after each completion's first EOS

    def logits(model):  # [scored tokens, vocab]
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, positions, :vocab][mask]

    with torch.no_grad():
        teacher = realign_logits(logits(ref), logits(aligned), lam)
    divergence = {1.0: "reverse_kl", 0.0: "forward_kl"}.get(beta, "jsd")
    per_token = naive_realign_divergence(logits(student), teacher, divergence=divergence, beta=beta,
                                         temperature=temperature)  # fmt: skip
    return per_token.sum() / mask.sum()


@pytest.mark.parametrize(
    "family,lam,beta,temperature,extra_rows",
    [
        ("llama", 2.0, 1.0, 1.0, (0, 0)),
        ("qwen2", -0.5, 0.0, 0.7, (5, 13)),  # heads padded to different sizes, as R1-Distill-Qwen and DeepScaleR
        ("qwen2", 0.5, 0.5, 1.0, (0, 0)),
    ],
)
def test_loss_and_grads_match_naive_full_logit_reference(tmp_path, tokenizer, family, lam, beta, temperature, extra_rows):
    a, b = models(tokenizer, family, extra_rows)
    # EOS made likelier while sampling, so that some completions stop early and are padded after their EOS
    eos = tokenizer.eos_token_id
    args = make_args(tmp_path, realign_lambda=lam, beta=beta, temperature=temperature, loss_token_chunk_size=5,
                     loss_vocab_chunk_size=17, generation_kwargs={"sequence_bias": {(eos,): 3.0}})  # fmt: skip
    trainer = OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args,
                                  train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    inputs = generation_batch(trainer)
    mask = inputs["completion_mask"]
    lengths = mask.sum(1)
    assert (lengths < mask.shape[1]).any() and (lengths == mask.shape[1]).any()  # padded rows and full rows
    for row, length in zip(inputs["completion_ids"], lengths, strict=True):
        if length < mask.shape[1]:
            assert row[length - 1] == eos  # the padding follows the first EOS, which is scored

    student = trainer.model
    loss = trainer.compute_loss(student, inputs)
    grads = torch.autograd.grad(loss, list(student.parameters()))

    reference_student = fresh(a).train()
    expected = naive_loss(reference_student, a, b, inputs, lam, beta, temperature, vocab=len(tokenizer))
    expected_grads = torch.autograd.grad(expected, list(reference_student.parameters()))
    assert loss.item() > 1e-4
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for name_param, g, e in zip(student.named_parameters(), grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4, msg=name_param[0])


def test_lambda_zero_with_student_as_reference_gives_exactly_zero_loss(tmp_path, tokenizer):
    a, b = models(tokenizer)
    trainer = OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0, max_steps=1),
                                  train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == 0.0 and first["divergence"] == 0.0
    assert first["completions/mean_length"] > 0


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_lambda_one_equals_trl_distillation_with_aligned_teacher(tmp_path, tokenizer, beta):
    a, b = models(tokenizer)
    # SGD: Adam would amplify rounding-level differences of near-zero gradients into visible weight differences
    common = on_policy_kwargs(tmp_path, max_steps=3, beta=beta, optim="sgd", learning_rate=0.5)
    ours = OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b,
                               args=OnPolicyTrRaConfig(**common, realign_lambda=1.0),
                               train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    ours.train()
    trl = DistillationTrainer(model=fresh(a), teacher_model=copy.deepcopy(b), args=DistillationConfig(**common),
                              train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    trl.train()
    ours_logs, trl_logs = ours.state.log_history[:-1], trl.state.log_history[:-1]
    assert len(ours_logs) == len(trl_logs) == 3
    for mine, theirs in zip(ours_logs, trl_logs, strict=True):
        # The same completions: same lengths, token counts and student entropy
        for key in ("completions/mean_length", "completions/max_length", "num_tokens"):
            assert mine[key] == theirs[key], key
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert mine["entropy"] == pytest.approx(theirs["entropy"], abs=1e-5)
    for (name, p), q in zip(ours.model.named_parameters(), trl.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=name)


def test_training_leaves_teachers_bitwise_unchanged(tmp_path, tokenizer):
    a, b = models(tokenizer)
    before = {role: copy.deepcopy(m.state_dict()) for role, m in (("A", a), ("B", b))}
    student = fresh(a)
    trainer = OnPolicyTrRaTrainer(model=student, ref_model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=2.0),
                                  train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    for role, model in (("A", a), ("B", b)):
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[role][k]), (role, k)
    assert any(not torch.equal(p, before["A"][k]) for k, p in student.state_dict().items())


def test_resume_from_checkpoint_reproduces_uninterrupted_run(tmp_path, tokenizer):
    a, b = models(tokenizer)
    # lmbda=0.5: the per-step choice between sampling and the dataset must also resume identically
    def train(output, resume=None, max_steps=4):
        args = make_args(tmp_path, output_dir=str(tmp_path / output), realign_lambda=2.0, max_steps=max_steps,
                         save_strategy="steps", save_steps=2, lmbda=0.5)  # fmt: skip
        trainer = OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args,
                                      train_dataset=prompt_dataset(16, completions=True), processing_class=tokenizer)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = train("full")
    resumed = train("resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert {h["on_policy"] for h in full.state.log_history[:-1]} == {0.0, 1.0}
    # The resumed run's history starts with the checkpoint's two steps
    assert [h["loss"] for h in resumed.state.log_history[:-1]] == [h["loss"] for h in full.state.log_history[:-1]]
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def run_one_step(output: Path, per_device_batch: int, nproc: int, deepspeed: str | None = None):
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                      f"--master_port={free_port()}"]  # fmt: skip
    command = [sys.executable, *launcher, str(SCRIPT), str(output), str(per_device_batch), *([deepspeed] if deepspeed else [])]
    run(command, output.parent)  # a hang (a deadlocked collective) fails after its timeout
    return torch.load(output), json.loads(Path(f"{output}.json").read_text())


def test_two_process_zero3_matches_one_process(tmp_path):
    single, single_log = run_one_step(tmp_path / "single.pt", 4, nproc=1)
    zero3, zero3_log = run_one_step(tmp_path / "zero3.pt", 2, nproc=2,
                                    deepspeed=str(Path(__file__).parent / "scripts" / "ds_zero3.json"))  # fmt: skip
    initial = tiny_causal_lm("qwen2", seed=0, vocab_size=len(build_char_tokenizer())).state_dict()
    assert sum(not torch.equal(single[k], initial[k]) for k in single) > len(single) // 2  # a real update
    assert zero3_log["num_tokens"] == single_log["num_tokens"]
    assert zero3_log["loss"] == pytest.approx(single_log["loss"], rel=1e-5)
    for k in single:
        torch.testing.assert_close(zero3[k], single[k], atol=1e-6, rtol=1e-5, msg=k)


def test_short_run_lowers_divergence_and_shortens_completions_toward_aligned_length(tmp_path, tokenizer):
    # A never stops within the budget; B is A with EOS e^4 times likelier, so it stops after ~3 tokens
    a = tiny_causal_lm("llama", seed=0, vocab_size=len(tokenizer))
    b = eos_biased(a, tokenizer.eos_token_id, 4.0)
    args = make_args(tmp_path, realign_lambda=1.0, per_device_train_batch_size=8, max_steps=16, learning_rate=3e-2,
                     lr_scheduler_type="constant", max_completion_length=24)  # fmt: skip
    trainer = OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=args, train_dataset=prompt_dataset(16),
                                  processing_class=tokenizer)  # fmt: skip
    trainer.train()
    logs = trainer.state.log_history[:-1]
    length = [h["completions/mean_length"] for h in logs]
    divergence = [h["divergence"] for h in logs]

    torch.manual_seed(0)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "left"
    prompts = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    sampled = b.generate(**prompts, do_sample=True, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, num_return_sequences=8)  # fmt: skip
    completions = sampled[:, prompts["input_ids"].shape[1] :]
    is_eos = completions == tokenizer.eos_token_id
    b_length = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completions.shape[1]).float().mean().item()

    start, end = sum(length[:2]) / 2, sum(length[-4:]) / 4
    assert start > 3 * b_length
    assert abs(end - b_length) < 0.25 * abs(start - b_length)
    assert sum(divergence[-4:]) / 4 < 0.25 * sum(divergence[:2]) / 2


def test_peft_student_uses_its_disabled_adapter_as_reference(tmp_path, tokenizer):
    from peft import LoraConfig

    a, b = models(tokenizer)
    peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    trainer = OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0, max_steps=1),
                                  train_dataset=prompt_dataset(), processing_class=tokenizer, peft_config=peft_config)  # fmt: skip
    assert trainer.ref_model is None
    trainer.train()  # LoRA starts as the identity: the student is its own reference at λ=0
    assert trainer.state.log_history[0]["loss"] == 0.0

    inputs = generation_batch(trainer)
    lora = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.5)
    assert trainer.compute_loss(trainer.model, inputs).item() > 1e-3  # the reference stays the base model


def test_lmbda_zero_trains_on_dataset_completions(tmp_path, tokenizer):
    a, b = models(tokenizer)
    dataset = prompt_dataset(completions=True)
    trainer = OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path, lmbda=0.0, shuffle_dataset=False),
                                  train_dataset=dataset, processing_class=tokenizer)  # fmt: skip
    inputs = generation_batch(trainer)
    rows = {tokenizer.decode(p[m.bool()]): c[k.bool()].tolist() for p, m, c, k in
            zip(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"], strict=True)}  # fmt: skip
    assert len(rows) == 4
    expected = {row["prompt"]: tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for row in dataset}  # fmt: skip
    for prompt, ids in rows.items():
        assert ids == expected[prompt]


def test_dataset_completion_stops_at_the_first_eos_when_the_template_writes_past_it(tmp_path, tokenizer):
    from trl_realign.data.tokenizer import CHAT_TEMPLATE

    # As ChatML's `<|im_end|>\n`: text after the end-of-turn token, which a sample never trains (it stops at its EOS)
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE.replace("+ eos_token }}", "+ eos_token + '\\n' }}")
    answers = {p: str(eval(p[:-1])) for p in PROMPTS}
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": answer}]}
            for p, answer in answers.items()]  # fmt: skip
    a, b = models(tokenizer)
    trainer = OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path, lmbda=0.0),
                                  train_dataset=Dataset.from_list(rows), processing_class=chat_tokenizer)  # fmt: skip
    inputs = generation_batch(trainer)
    eos = tokenizer.eos_token_id
    expected = {tuple(tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]) for answer in answers.values()}
    completions = zip(inputs["completion_ids"], inputs["completion_mask"], strict=True)
    scored = [tuple(ids[mask.bool()].tolist()) for ids, mask in completions]
    assert set(scored) <= expected, [tokenizer.convert_ids_to_tokens(ids) for ids in scored]


def test_lmbda_below_one_needs_a_completion_column(tmp_path, tokenizer):
    a, b = models(tokenizer)
    with pytest.raises(ValueError, match="completion"):
        OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path, lmbda=0.5),
                            train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_lambda_is_rejected(tmp_path, value):
    with pytest.raises(ValueError, match="finite"):
        make_args(tmp_path, realign_lambda=value)


@pytest.mark.parametrize("field,value,match", [("lmbda", 1.5, "lmbda"), ("beta", 2.0, "beta"),
                                               ("teacher_model_name_or_path", "x", "aligned_model_name_or_path")])  # fmt: skip
def test_invalid_options_are_rejected(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **{field: value})


def test_missing_aligned_model_is_rejected(tmp_path, tokenizer):
    a, _ = models(tokenizer)
    with pytest.raises(ValueError, match="aligned model B"):
        OnPolicyTrRaTrainer(model=fresh(a), args=make_args(tmp_path), train_dataset=prompt_dataset(),
                            processing_class=tokenizer)  # fmt: skip


def test_vllm_server_mode_without_cuda_is_refused_before_waiting_for_a_server(tmp_path, tokenizer):
    a, b = models(tokenizer)
    args = make_args(tmp_path, use_vllm=True, vllm_mode="server", vllm_server_timeout=1)
    with pytest.raises(ValueError, match="NCCL.*CUDA.*colocate"):
        OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args, train_dataset=prompt_dataset(),
                            processing_class=tokenizer)  # fmt: skip


def test_vllm_sleep_mode_without_cuda_is_refused_with_the_option_to_change(tmp_path, tokenizer):
    a, b = models(tokenizer)
    args = make_args(tmp_path, use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=True)
    with pytest.raises(ValueError, match="vllm_enable_sleep_mode"):
        OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args, train_dataset=prompt_dataset(),
                            processing_class=tokenizer)  # fmt: skip


def test_teacher_with_different_tokenizer_is_rejected(tmp_path, tokenizer):
    a, b = models(tokenizer)
    b.save_pretrained(tmp_path / "B")
    build_char_tokenizer("0123456789+=abcdefghijklmnopqrstuvwxyz").save_pretrained(tmp_path / "B")
    with pytest.raises(ValueError, match="tokenizer differs"):
        OnPolicyTrRaTrainer(model=fresh(a), aligned_model=str(tmp_path / "B"), args=make_args(tmp_path),
                            train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip


def test_teachers_loaded_by_path(tmp_path, tokenizer):
    a, b = models(tokenizer)
    for name, model in (("A", a), ("B", b)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    args = make_args(tmp_path, aligned_model_name_or_path=str(tmp_path / "B"), realign_lambda=2.0)
    trainer = OnPolicyTrRaTrainer(model=str(tmp_path / "A"), args=args, train_dataset=prompt_dataset(),
                                  processing_class=tokenizer)  # fmt: skip
    assert not any(p.requires_grad for m in (trainer.ref_model, trainer.aligned_model) for p in m.parameters())
    torch.testing.assert_close(trainer.ref_model.state_dict(), a.state_dict(), atol=0, rtol=0)


def test_multimodal_processor_is_refused(tmp_path, tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    # Sampling would hand the student the processor's images, which the loss never forwards
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=copy.deepcopy(tokenizer),
                               chat_template=tokenizer.chat_template)  # fmt: skip
    a, b = models(tokenizer)
    with pytest.raises(ValueError, match="multimodal processor \\(LlavaProcessor\\).*tokenizer"):
        OnPolicyTrRaTrainer(model=fresh(a), aligned_model=b, args=make_args(tmp_path), train_dataset=prompt_dataset(),
                            processing_class=processor)  # fmt: skip


def test_soft_capped_teacher_is_rejected(tmp_path, tokenizer):
    a, b = models(tokenizer)
    b.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="post-processes its logits"):
        OnPolicyTrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=make_args(tmp_path),
                            train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------- CLI
RECIPE = Path(__file__).parent.parent / "recipes" / "onpolicy" / "r1_distill_qwen_1.5b_lambda2.yaml"


def test_recipe_has_the_paper_settings_and_names_the_generation():
    from trl_realign.cli.onpolicy_trra import make_parser
    from trl_realign.cli.parsing import parse_command_line

    script, args, model, prep = parse_command_line(make_parser(), "onpolicy", ["--config", str(RECIPE), "--use_cpu", "true"]).args
    assert model.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert args.aligned_model_name_or_path == "agentica-org/DeepScaleR-1.5B-Preview"
    assert (args.realign_lambda, args.beta, args.lmbda) == (2.0, 1.0, 1.0)
    assert (args.max_steps, args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (200, 2e-5, "cosine", 0.1)
    assert 8 * args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert (args.max_completion_length, args.temperature, args.top_p, args.top_k) == (8192, 1.0, 1.0, 0)
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert prep.dataset_preparation == "openr1_math"


def test_onpolicy_command_trains_and_saves(tmp_path, tokenizer):
    from safetensors.torch import load_file

    from trl_realign.cli.main import main

    a, b = models(tokenizer)
    for name, model in (("A", a), ("B", b)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    main(["onpolicy", "--model_name_or_path", str(tmp_path / "A"), "--aligned_model_name_or_path", str(tmp_path / "B"),
          "--dataset_name", str(tmp_path / "data.jsonl"), "--realign_lambda", "2", "--max_completion_length", "8",
          "--max_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "0.01", "--use_cpu", "true",
          "--bf16", "false", "--dtype", "float32", "--report_to", "none", "--save_strategy", "no",
          "--output_dir", str(tmp_path / "out")])  # fmt: skip
    trained, initial = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "A" / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_onpolicy_command_needs_the_aligned_model(tmp_path):
    from trl_realign.cli.main import run_command

    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ValueError, match="aligned_model_name_or_path"):
        run_command(["onpolicy", "--model_name_or_path", "org/model", "--dataset_name", str(tmp_path / "data.jsonl"),
              "--use_cpu", "true", "--output_dir", str(tmp_path / "out")])  # fmt: skip


# ------------------------------------------------------------------------------------------------ layer adapter (InRa)
def test_layer_adapter_variant_trains_only_the_adapter_toward_the_bypassed_reference(tmp_path, tokenizer):
    from trl_realign import LayerAdapterOnPolicyTrRaConfig, LayerAdapterOnPolicyTrRaTrainer
    from trl_realign.modeling import bypass_layer_adapter

    base, b = models(tokenizer, family="qwen2")
    base_state = copy.deepcopy(base.state_dict())
    # λ=0: the identity adapter makes the student exactly A, so the first step's loss is exactly 0
    args = LayerAdapterOnPolicyTrRaConfig(**on_policy_kwargs(tmp_path, realign_lambda=0.0, max_steps=1))
    trainer = LayerAdapterOnPolicyTrRaTrainer(copy.deepcopy(base), aligned_model=b, args=args,
                                              train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    assert not list(trainer.ref_model.parameters())  # A shares the student's weights
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == 0.0

    args = LayerAdapterOnPolicyTrRaConfig(**on_policy_kwargs(tmp_path, realign_lambda=2.0, learning_rate=5e-2))
    trainer = LayerAdapterOnPolicyTrRaTrainer(copy.deepcopy(base), aligned_model=b, args=args,
                                              train_dataset=prompt_dataset(), processing_class=tokenizer)  # fmt: skip
    initial = copy.deepcopy(trainer.model.state_dict())
    trainer.train()
    trained = trainer.model.state_dict()
    for name, value in base_state.items():  # every original layer bitwise unchanged (shifted by the adapter layer)
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            name = name.replace(f"model.layers.{index}.", f"model.layers.{index + 1}.", 1)
        assert torch.equal(trained[name], value), name
    assert any(not torch.equal(trained[k], v) for k, v in initial.items() if k.startswith("model.layers.0."))

    # The loss is the naive one toward λ·z_B + (1−λ)·z_A with A the original model
    inputs = generation_batch(trainer)
    with bypass_layer_adapter(trainer.model):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        torch.testing.assert_close(trainer.model(input_ids=ids, attention_mask=mask).logits, base(input_ids=ids, attention_mask=mask).logits)
    loss = trainer.compute_loss(trainer.model, inputs)
    expected = naive_loss(trainer.model, base, b, inputs, 2.0, 1.0, 1.0, vocab=len(tokenizer))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_layer_adapter_reference_runs_without_dropout_and_leaves_the_students_modes(tmp_path, tokenizer):
    from trl_realign import LayerAdapterOnPolicyTrRaConfig, LayerAdapterOnPolicyTrRaTrainer
    from trl_realign.trainers.realign_teachers import STAT_NAMES

    # Attention dropout is no nn.Dropout that disable_dropout could zero, and on-policy keeps dropout by default
    base = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer), attention_dropout=0.5)
    _, b = models(tokenizer, family="qwen2")
    args = LayerAdapterOnPolicyTrRaConfig(**on_policy_kwargs(tmp_path, realign_lambda=0.0))
    assert args.disable_dropout is False
    trainer = LayerAdapterOnPolicyTrRaTrainer(base, aligned_model=b, args=args, train_dataset=prompt_dataset(),
                                              processing_class=tokenizer)  # fmt: skip
    inputs = generation_batch(trainer)
    teacher_entropy = []
    for _ in range(3):
        trainer.compute_loss(trainer.model, inputs)
        teacher_entropy.append(trainer._loss_stats[STAT_NAMES.index("teacher_entropy")].item())
    assert teacher_entropy[0] == teacher_entropy[1] == teacher_entropy[2]  # at λ = 0 the teacher is A alone
    assert all(module.training for module in trainer.model.modules())


@pytest.mark.parametrize("config_cls", ["TrRaConfig", "OnPolicyTrRaConfig"])
@pytest.mark.parametrize(
    "kwargs,match",
    [({"temperature": 0.0}, "temperature"), ({"loss_token_chunk_size": 0}, "loss_token_chunk_size"),
     ({"loss_vocab_chunk_size": 0}, "loss_vocab_chunk_size")],
)
def test_both_trra_configs_refuse_bad_streamed_loss_options(tmp_path, config_cls, kwargs, match):
    import trl_realign

    with pytest.raises(ValueError, match=match):
        getattr(trl_realign, config_cls)(output_dir=str(tmp_path), report_to=[], bf16=False, **kwargs)
