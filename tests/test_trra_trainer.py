import copy
import math

import pytest
import torch
from datasets import Dataset
from trl.experimental.gkd import GKDTrainer

from trl_realign import TrRaConfig, TrRaTrainer, train_trra_iterations
from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm

from tiny_training import training_kwargs


PROMPTS = ["12+7=", "3+45=", "60+1=", "9+9=", "14+22=", "5+0=", "31+8=", "2+76="]


def pc_dataset(n=8):
    rows = [{"prompt": p, "completion": str(eval(p[:-1]))} for p in (PROMPTS * 4)[:n]]
    return Dataset.from_list(rows)


def make_args(tmp_path, **kwargs):
    return TrRaConfig(**training_kwargs(tmp_path, **kwargs))


def models(family="llama", tie=False, vocab=None, tokenizer=None, extra_rows=0):
    vocab = (len(tokenizer) if tokenizer is not None else 103) + extra_rows
    a = tiny_causal_lm(family, seed=0, vocab_size=vocab, tie_word_embeddings=tie)
    b = tiny_causal_lm(family, seed=1, vocab_size=vocab, tie_word_embeddings=tie)
    return a, b


def fresh(model):
    """A trainable copy: passing a model as a teacher freezes it in place, as TRL does."""
    return copy.deepcopy(model).requires_grad_(True)


def first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def reference_loss(student, ref, aligned, batch, lam, divergence="reverse_kl", beta=0.5, temperature=1.0, vocab=None):
    """Full-logit loss through TRL's GKD `generalized_jsd_loss` on the fused teacher logits."""
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        z_a = ref(**kwargs).logits[:, :-1, :vocab]
        z_b = aligned(**kwargs).logits[:, :-1, :vocab]
    z_s = student(**kwargs).logits[:, :-1, :vocab]
    teacher = lam * z_b + (1 - lam) * z_a
    trl_beta = {"reverse_kl": 1.0, "forward_kl": 0.0, "jsd": beta}[divergence]
    labels = batch["labels"][:, 1:]
    return GKDTrainer.generalized_jsd_loss(z_s, teacher, labels=labels, beta=trl_beta, temperature=temperature)


@pytest.mark.parametrize(
    "family,tie,lam,divergence,temperature",
    [
        ("llama", False, 2.0, "reverse_kl", 1.0),
        ("qwen2", True, -0.5, "forward_kl", 0.7),
        ("qwen2", False, 0.5, "jsd", 1.0),
        ("llama", True, 1.0, "reverse_kl", 1.0),
    ],
)
def test_trainer_loss_and_grads_match_full_logit_reference(tmp_path, tokenizer, family, tie, lam, divergence, temperature):
    a, b = models(family, tie, tokenizer=tokenizer)
    args = make_args(tmp_path, realign_lambda=lam, divergence=divergence, temperature=temperature,
                     loss_token_chunk_size=5, loss_vocab_chunk_size=17)
    trainer = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args,
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    batch = first_batch(trainer)
    student = trainer.model
    student.train()
    loss = trainer.compute_loss(student, batch)
    grads = torch.autograd.grad(loss, [p for p in student.parameters()], allow_unused=True)

    reference_student = fresh(a).train()
    expected = reference_loss(reference_student, a, b, batch, lam, divergence, temperature=temperature,
                              vocab=len(tokenizer))
    expected_grads = torch.autograd.grad(expected, list(reference_student.parameters()), allow_unused=True)
    assert loss.item() > 0
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        if e is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_lambda_zero_student_equals_reference_gives_exact_zero(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0),
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert loss.item() == 0.0


def test_lambda_one_is_plain_distillation_toward_aligned(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=1.0),
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = GKDTrainer.generalized_jsd_loss(
            trainer.model(**kwargs).logits[:, :-1], b(**kwargs).logits[:, :-1], labels=batch["labels"][:, 1:], beta=1.0
        )
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)


def test_loss_covers_completion_tokens_only(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path), train_dataset=pc_dataset(),
                          processing_class=tokenizer)
    batch = first_batch(trainer)
    mask = batch["labels"][:, 1:] != -100
    # Each completion is its digits plus EOS; nothing of the prompt or the padding is scored
    completion_lengths = sorted(len(str(eval(p[:-1]))) + 1 for p in PROMPTS[:4])
    assert sorted(mask.sum(1).tolist()) == completion_lengths


def test_messages_dataset_trains_on_assistant_tokens_only(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": str(eval(p[:-1]))}]}
            for p in PROMPTS]
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, assistant_only_loss=True),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = first_batch(trainer)
    mask = batch["labels"][:, 1:] != -100
    assert sorted(mask.sum(1).tolist()) == sorted(len(str(eval(p[:-1]))) + 1 for p in PROMPTS[:4])
    loss = trainer.compute_loss(trainer.model, batch)
    expected = reference_loss(fresh(a), trainer.ref_model, b, batch, 1.5, vocab=len(tokenizer))
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-5, rtol=1e-5)


def test_training_lowers_divergence_and_leaves_teachers_bitwise_unchanged(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    ref = copy.deepcopy(a)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in (("a", ref), ("b", b))}
    trainer = TrRaTrainer(model=a, ref_model=ref, aligned_model=b,
                          args=make_args(tmp_path, realign_lambda=2.0, max_steps=25, learning_rate=5e-3),
                          train_dataset=pc_dataset(32), processing_class=tokenizer)
    batch = first_batch(trainer)
    with torch.no_grad():
        start = trainer.compute_loss(trainer.model, batch).item()
    trainer.train()
    with torch.no_grad():
        end = trainer.compute_loss(trainer.model, batch).item()
    assert end < 0.5 * start
    for name, m in (("a", ref), ("b", b)):
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[name][k]), f"teacher {name} changed at {k}"
    logged = [entry for entry in trainer.state.log_history if "divergence" in entry]
    assert logged and all(
        {"divergence", "student_entropy", "teacher_entropy", "completion_length"} <= entry.keys() for entry in logged
    )
    assert all(math.isfinite(entry["divergence"]) for entry in logged)
    assert logged[-1]["divergence"] < logged[0]["divergence"]
    config = trainer.args.to_dict()
    assert config["realign_lambda"] == 2.0 and config["divergence"] == "reverse_kl"


def test_resume_from_checkpoint_reproduces_uninterrupted_run(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)

    def run(out, max_steps, resume=None):
        args = make_args(tmp_path, output_dir=str(out), max_steps=max_steps, save_strategy="steps", save_steps=3,
                         per_device_train_batch_size=2, learning_rate=1e-2)
        # The schedule must be that of the full run in both cases
        args.max_steps = 6
        trainer = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args,
                              train_dataset=pc_dataset(16), processing_class=tokenizer)
        if resume is None and max_steps < 6:
            trainer.args.max_steps = 6
            trainer.add_callback(_StopAt(max_steps))
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    full = run(tmp_path / "full", 6)
    run(tmp_path / "part", 3)
    resumed = run(tmp_path / "part", 6, resume=str(tmp_path / "part" / "checkpoint-3"))
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert not torch.equal(full.model.embed_tokens.weight, a.model.embed_tokens.weight)


class _StopAt:
    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda args, state, control, **kw: self._check(state, control)
        raise AttributeError(name)

    def _check(self, state, control):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_gradient_accumulation_matches_one_large_batch(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)

    def one_step(batch_size, accumulation):
        args = make_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                         max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant")
        trainer = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=args,
                              train_dataset=pc_dataset(8), processing_class=tokenizer)
        trainer.train()
        return trainer.model

    big, accumulated = one_step(4, 1), one_step(2, 2)
    moved = False
    for p, q, p0 in zip(big.parameters(), accumulated.parameters(), a.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
        moved |= not torch.equal(p, p0)
    assert moved


def test_peft_student_uses_disabled_adapter_as_reference(tmp_path, tokenizer):
    from peft import LoraConfig

    a, b = models(tokenizer=tokenizer)
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0, max_steps=3),
                          train_dataset=pc_dataset(), processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    assert trainer.ref_model is None  # no second copy of the model
    # LoRA starts as the identity, so at λ=0 the student equals its own reference
    assert trainer.compute_loss(trainer.model, first_batch(trainer)).item() == 0.0
    trainer.args.realign_lambda = trainer.realign_lambda = 2.0
    trainer.train()
    base = trainer.model.get_base_model()
    for k, v in a_before.items():
        key = k.replace(".weight", ".base_layer.weight") if any(m in k for m in ("q_proj", "v_proj")) else k
        assert torch.equal(base.state_dict()[key], v), k
    with trainer.model.disable_adapter():
        batch = first_batch(trainer)
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        torch.testing.assert_close(trainer.model(**kwargs).logits, a_ref_logits(a_before, kwargs))


def a_ref_logits(state_dict, kwargs):
    fresh = tiny_causal_lm("llama", seed=0, vocab_size=state_dict["lm_head.weight"].shape[0])
    fresh.load_state_dict(state_dict)
    with torch.no_grad():
        return fresh(**kwargs).logits


def test_differently_padded_embeddings_use_tokenizer_rows(tmp_path, tokenizer):
    a, _ = models(tokenizer=tokenizer)
    _, b_padded = models(tokenizer=tokenizer, extra_rows=24)  # e.g. Qwen's 151,936 vs 152,064 rows
    trainer = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b_padded,
                          args=make_args(tmp_path, realign_lambda=2.0), train_dataset=pc_dataset(),
                          processing_class=tokenizer)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    expected = reference_loss(fresh(a), a, b_padded, batch, 2.0, vocab=len(tokenizer))
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    trainer.train()


def test_batch_without_completion_tokens_gives_zero_loss(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path), train_dataset=pc_dataset(),
                          processing_class=tokenizer)
    batch = first_batch(trainer)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_lambda_is_rejected(tmp_path, value):
    with pytest.raises(ValueError, match="realign_lambda.*finite"):
        make_args(tmp_path, realign_lambda=value)


def test_unknown_divergence_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="divergence"):
        make_args(tmp_path, divergence="kl")


def test_frozen_student_is_rejected(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no trainable parameters"):
        TrRaTrainer(model=a.requires_grad_(False), aligned_model=b, args=make_args(tmp_path),
                    train_dataset=pc_dataset(), processing_class=tokenizer)


def test_missing_aligned_model_is_rejected(tmp_path, tokenizer):
    a, _ = models(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="aligned model"):
        TrRaTrainer(model=a, args=make_args(tmp_path), train_dataset=pc_dataset(), processing_class=tokenizer)


def test_teacher_with_different_tokenizer_is_rejected(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    other = build_char_tokenizer(alphabet="".join(reversed(tokenizer.convert_ids_to_tokens(range(7, len(tokenizer))))))
    path = tmp_path / "teacher"
    b.save_pretrained(path)
    other.save_pretrained(path)
    with pytest.raises(ValueError, match="tokenizer differs.*different ids"):
        TrRaTrainer(model=a, aligned_model=str(path), args=make_args(tmp_path), train_dataset=pc_dataset(),
                    processing_class=tokenizer)


def test_teacher_loaded_by_path_with_same_tokenizer_is_accepted(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    path = tmp_path / "teacher"
    b.save_pretrained(path)
    tokenizer.save_pretrained(path)
    trainer = TrRaTrainer(model=a, args=make_args(tmp_path, aligned_model_name_or_path=str(path)),
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    for (k, v), w in zip(trainer.aligned_model.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_soft_capped_teacher_is_rejected(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, Gemma2Config

    a, _ = models(tokenizer=tokenizer)
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=30.0))
    with pytest.raises(ValueError, match="soft-capping|post-processes"):
        TrRaTrainer(model=a, aligned_model=gemma, args=make_args(tmp_path), train_dataset=pc_dataset(),
                    processing_class=tokenizer)


def test_falcon_h1_lm_head_multiplier_is_refused_without_the_probe():
    from transformers import AutoModelForCausalLM, FalconH1Config

    from trl_realign.modeling.checks import check_linear_output_head

    # Falcon-H1's logits are `lm_head(h) · lm_head_multiplier`; under ZeRO-3 only the config can tell (no probe)
    falcon = AutoModelForCausalLM.from_config(FalconH1Config(
        vocab_size=103, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1,
        mamba_d_state=8, mamba_chunk_size=16, lm_head_multiplier=0.5))  # fmt: skip
    with pytest.raises(ValueError, match="post-processes its logits.*lm_head_multiplier=0.5"):
        check_linear_output_head(falcon, "aligned model", probe=False)


@pytest.mark.parametrize("attribute,value", [("logits_soft_cap", 30.0), ("logits_mup_width_multiplier", 24.0)])
def test_other_logit_post_processing_configs_are_refused_without_the_probe(attribute, value):
    from trl_realign.modeling.checks import check_linear_output_head

    model = tiny_causal_lm("llama", vocab_size=103)
    setattr(model.config, attribute, value)  # RecurrentGemma's soft cap, Inkling's division of h before the head
    with pytest.raises(ValueError, match=f"post-processes its logits.*{attribute}"):
        check_linear_output_head(model, "reference model", probe=False)
    setattr(model.config, attribute, None if attribute == "logits_soft_cap" else 1.0)
    check_linear_output_head(model, "reference model", probe=False)  # no cap, or a multiplier of 1


def tiny_llava(tokenizer):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    from trl_realign.testing import tiny_config

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14)  # fmt: skip
    config = LlavaConfig(text_config=tiny_config("llama", vocab_size=len(tokenizer)), vision_config=vision,
                         image_token_index=len(tokenizer) - 1)  # fmt: skip
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


@pytest.mark.parametrize("role", ["model", "aligned_model", "ref_model"])
def test_vision_language_models_are_refused(tmp_path, tokenizer, role):
    # The loss forwards only text: a VLM's images would never reach it
    a, b = models(tokenizer=tokenizer)
    kwargs = {"model": fresh(a), "aligned_model": b, "ref_model": a, role: tiny_llava(tokenizer)}
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration.*pixel_values.*text-only"):
        TrRaTrainer(args=make_args(tmp_path), train_dataset=pc_dataset(), processing_class=tokenizer, **kwargs)


def test_multimodal_processor_is_refused(tmp_path, tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    processor = LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=copy.deepcopy(tokenizer),
                               chat_template=tokenizer.chat_template)  # fmt: skip
    a, b = models(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="LlavaProcessor.*tokenizer"):
        TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path), train_dataset=pc_dataset(),
                    processing_class=processor)  # fmt: skip


def test_batch_with_image_inputs_is_refused(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path), train_dataset=pc_dataset(),
                          processing_class=tokenizer)  # fmt: skip
    batch = first_batch(trainer)
    batch["pixel_values"] = torch.zeros(len(batch["input_ids"]), 3, 28, 28)
    with pytest.raises(ValueError, match="pixel_values"):
        trainer.compute_loss(trainer.model, batch)


def test_trra_iter_uses_previous_result_as_aligned_model(tmp_path, tokenizer, monkeypatch):
    import trl_realign.trainers.trra_iter as trra_iter

    a, b = models(tokenizer=tokenizer)
    seen = []
    original = trra_iter.TrRaTrainer

    class Spy(original):
        def __init__(self, *args, aligned_model=None, **kwargs):
            seen.append(aligned_model)
            super().__init__(*args, aligned_model=aligned_model, **kwargs)

    monkeypatch.setattr(trra_iter, "TrRaTrainer", Spy)
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    outputs = train_trra_iterations(a, b, make_args(tmp_path, realign_lambda=2.0, max_steps=3), 2, pc_dataset(),
                                    processing_class=tokenizer)
    assert outputs == [str(tmp_path / "out" / "iter1"), str(tmp_path / "out" / "iter2")]
    assert seen[0] is b and seen[1] == outputs[0]
    for k, v in a.state_dict().items():
        assert torch.equal(v, a_before[k]), "TrRa-iter must not train model A in place"


@pytest.mark.parametrize(
    "kwargs,divergence,beta",
    [
        ({}, "reverse_kl", 1.0),  # the paper's Eq. 6
        ({"beta": 0.0}, "forward_kl", 0.0),  # beta alone selects the divergence, as in TRL's DistillationConfig
        ({"beta": 1.0}, "reverse_kl", 1.0),
        ({"beta": 0.3}, "jsd", 0.3),
        ({"divergence": "forward_kl"}, "forward_kl", 0.0),
        ({"divergence": "jsd"}, "jsd", 0.5),
        ({"divergence": "jsd", "beta": 0.2}, "jsd", 0.2),
        ({"divergence": "reverse_kl", "beta": 1.0}, "reverse_kl", 1.0),
    ],
)
def test_beta_and_divergence_resolve_like_trl(tmp_path, kwargs, divergence, beta):
    args = make_args(tmp_path, **kwargs)
    assert (args.divergence, args.beta) == (divergence, beta)


@pytest.mark.parametrize("kwargs", [{"divergence": "reverse_kl", "beta": 0.5}, {"divergence": "forward_kl", "beta": 1.0}])
def test_conflicting_beta_and_divergence_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError, match="beta.*divergence|divergence.*beta"):
        make_args(tmp_path, **kwargs)


def test_beta_zero_alone_trains_forward_kl(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b, args=make_args(tmp_path, beta=0.0),
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    expected = reference_loss(fresh(a), a, b, batch, 1.5, "forward_kl", vocab=len(tokenizer))
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-5, rtol=1e-5)


def naive_kl_to_reference(trainer, reference, batch):
    """KL(student ‖ reference) per scored token, from full logits (λ = 0: the teacher is the reference)."""
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        z_s = trainer.model(**kwargs).logits[:, :-1]
        z_a = reference(**kwargs).logits[:, :-1]
    return GKDTrainer.generalized_jsd_loss(z_s, z_a, labels=batch["labels"][:, 1:], beta=1.0)


def test_peft_reference_head_is_the_untrained_head_with_lm_head_in_modules_to_save(tmp_path, tokenizer):
    from peft import LoraConfig

    a, b = models(tokenizer=tokenizer)
    reference = copy.deepcopy(a)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0),
                          train_dataset=pc_dataset(), processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with torch.no_grad():  # the trained copy of the head moves away from A's
        trained_head = trainer.model.base_model.model.lm_head.modules_to_save["default"].weight
        trained_head.add_(torch.randn_like(trained_head))
    batch = first_batch(trainer)
    expected = naive_kl_to_reference(trainer, reference, batch)
    assert expected.item() > 0.1
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch).detach(), expected, atol=1e-5, rtol=1e-5)


def test_peft_student_with_a_trained_adapter_is_realigned_from_its_starting_policy(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    a, b = models(tokenizer=tokenizer)
    student = get_peft_model(a, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # e.g. after SFT-LoRA: the adapter is no longer the identity
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    starting_policy = copy.deepcopy(student).merge_and_unload()
    trainer = TrRaTrainer(model=student, aligned_model=b,
                          args=make_args(tmp_path, realign_lambda=0.0, max_steps=3, learning_rate=5e-2),
                          train_dataset=pc_dataset(), processing_class=tokenizer)
    batch = first_batch(trainer)
    # A is the starting policy (DPOTrainer's rule), so at λ=0 the student starts on its own reference
    assert trainer.compute_loss(trainer.model, batch).item() == 0.0
    trainer.args.realign_lambda = trainer.realign_lambda = 2.0
    trainer.train()
    trainer.realign_lambda = 0.0
    # After training, the loss at λ=0 is the KL to the (unchanged) starting policy, not to the adapter-free base
    expected = naive_kl_to_reference(trainer, starting_policy, batch)
    assert expected.item() > 0
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_init_that_rewrites_the_base_weights_keeps_the_given_model_as_reference(tmp_path, tokenizer, init):
    from peft import LoraConfig

    a, b = models(tokenizer=tokenizer)
    original = copy.deepcopy(a)
    # PiSSA and OLoRA move the base weights' principal part into the adapter: with adapters off, a residual model
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0),
                          train_dataset=pc_dataset(), processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init))
    batch = first_batch(trainer)
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = original(**kwargs).logits
        torch.testing.assert_close(trainer.model(**kwargs).logits, expected, atol=1e-5, rtol=1e-5)  # the student
        if trainer.ref_model is None:
            with trainer.model.disable_adapter():
                reference = trainer.model(**kwargs).logits
        else:
            reference = trainer.ref_model(**kwargs).logits
        torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
        assert trainer.compute_loss(trainer.model, batch).item() < 1e-6  # λ = 0: the student starts on A


def test_dropout_is_disabled_in_student_and_teachers_by_default(tmp_path, tokenizer):
    from peft import LoraConfig

    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path),
                          train_dataset=pc_dataset(), processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.5))
    assert trainer.args.disable_dropout is True
    dropouts = [m for model in (trainer.model, trainer.aligned_model) for m in model.modules()
                if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)


def test_peft_reference_forward_runs_without_dropout(tmp_path, tokenizer):
    from peft import LoraConfig

    # Attention dropout is not an nn.Dropout that disable_dropout could zero: only eval mode turns it off
    a = tiny_causal_lm("llama", seed=0, vocab_size=len(tokenizer), attention_dropout=0.5)
    _, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path, realign_lambda=0.0, disable_dropout=False),
                          train_dataset=pc_dataset(), processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
    modes = []
    attention = trainer.model.base_model.model.model.layers[0].self_attn
    attention.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer.model.train()
    trainer.compute_loss(trainer.model, first_batch(trainer))
    assert modes == [True, False]  # the student's forward with dropout, the reference's without
    assert trainer.model.training and attention.training


def test_model_card_names_trra_and_the_paper(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(model=a, aligned_model=b, args=make_args(tmp_path), train_dataset=pc_dataset(),
                          processing_class=tokenizer)
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "TrRa" in card and "2506.12704" in card and "Flexible Realignment" in card
    assert {"trl-realign", "trra"} <= set(trainer.model.model_tags)


def test_gkd_style_positional_call_works(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    trainer = TrRaTrainer(a, b, make_args(tmp_path, realign_lambda=0.0), pc_dataset(), processing_class=tokenizer)
    assert trainer.accelerator.unwrap_model(trainer.aligned_model) is b
    assert trainer.compute_loss(trainer.model, first_batch(trainer)).item() == 0.0  # A: a copy of the student


def test_positional_config_in_the_wrong_place_fails_at_once_naming_args(tmp_path, tokenizer):
    a, b = models(tokenizer=tokenizer)
    with pytest.raises(TypeError, match=r"`args`.*TrRaConfig.*ref_model="):
        # The order before: (model, ref_model, aligned_model, args, train_dataset, ...)
        TrRaTrainer(a, copy.deepcopy(a), b, make_args(tmp_path), pc_dataset(), processing_class=tokenizer)


def test_tokenizer_loaded_two_ways_is_accepted(tmp_path, tokenizer):
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from trl_realign.modeling.checks import check_tokenizer_of

    # The teacher's folder says Qwen2Tokenizer with no unk token: AutoTokenizer adds Qwen2's default unk
    # ('<|endoftext|>') as one more token, which the student's tokenizer, loaded from the file alone, lacks
    folder = tmp_path / "teacher"
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("unk_token", None)
    config["tokenizer_class"] = "Qwen2Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    student = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="<eos>")
    assert set(AutoTokenizer.from_pretrained(folder).get_vocab()) - set(student.get_vocab())
    teacher = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer))
    teacher.name_or_path = str(folder)
    check_tokenizer_of(teacher, student, "aligned model")


def test_teacher_tokenizer_missing_a_student_token_is_rejected(tmp_path, tokenizer):
    from trl_realign.modeling.checks import check_same_tokenizer

    smaller = build_char_tokenizer(alphabet="0123456789")
    with pytest.raises(ValueError, match="tokenizer differs"):
        check_same_tokenizer(tokenizer, smaller, "aligned model")
    check_same_tokenizer(smaller, smaller, "aligned model")


def test_trra_iter_frees_each_iteration_before_building_the_next(tmp_path, tokenizer, monkeypatch):
    import gc
    import weakref

    import trl_realign.trainers.trra_iter as trra_iter

    a, b = models(tokenizer=tokenizer)
    previous, alive_at_init = [], []
    original = trra_iter.TrRaTrainer

    class Spy(original):
        def __init__(self, *args, **kwargs):
            gc.collect()
            alive_at_init.append([ref() is not None for ref in previous])
            super().__init__(*args, **kwargs)
            # The student, its optimizer's owner (the trainer) and the teacher that iteration k loaded itself
            previous[:] = [weakref.ref(self), weakref.ref(self.model), weakref.ref(self.ref_model)]

    monkeypatch.setattr(trra_iter, "TrRaTrainer", Spy)
    train_trra_iterations(a, b, make_args(tmp_path, max_steps=1), 3, pc_dataset(), processing_class=tokenizer)
    assert alive_at_init == [[], [False, False, False], [False, False, False]]


def test_packed_padding_free_batches_keep_document_boundaries_and_per_document_length(tmp_path, tokenizer):
    from trl_realign.modeling.model_parts import decoder_of

    a, b = models(tokenizer=tokenizer)
    packed = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b,
                         args=make_args(tmp_path, packing=True, max_length=20, per_device_train_batch_size=2),
                         train_dataset=pc_dataset(8), processing_class=tokenizer)
    batch = first_batch(packed)
    assert {"cu_seq_lens_q", "max_length_q", "seq_idx"} <= batch.keys() and "attention_mask" not in batch
    seen = []
    for model in (packed.model, b):
        decoder_of(model).register_forward_pre_hook(lambda m, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    loss = packed.compute_loss(packed.model, batch)
    padding_free_keys = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx", "position_ids"}
    assert len(seen) == 2 and all(padding_free_keys <= keys for keys in seen)

    # The same documents, padded one per row: the same tokens scored, the same loss
    documents = int(batch["cu_seq_lens_q"].numel() - 1)
    assert documents > batch["input_ids"].shape[0]
    padded = TrRaTrainer(model=fresh(a), ref_model=a, aligned_model=b,
                         args=make_args(tmp_path, per_device_train_batch_size=documents),
                         train_dataset=pc_dataset(8), processing_class=tokenizer)
    rows = [padded.train_dataset[i] for i in range(len(padded.train_dataset))]
    starts = batch["cu_seq_lens_q"].tolist()
    packed_docs = [batch["input_ids"][0, s:e].tolist() for s, e in zip(starts, starts[1:])]
    padded_batch = padded._prepare_inputs(padded.data_collator([r for r in rows if r["input_ids"] in packed_docs]))
    assert padded_batch["input_ids"].shape[0] == documents
    torch.testing.assert_close(loss.detach(), padded.compute_loss(padded.model, padded_batch).detach(),
                               atol=1e-5, rtol=1e-5)
    scored = (batch["labels"][:, 1:] != -100).sum().item()
    mode = "train" if packed.model.training else "eval"
    assert packed._metrics[mode]["completion_length"] == [scored / documents]
