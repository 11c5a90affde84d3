"""
The benchmarks' variants compute the same thing, checked at small shapes with the benchmarks' own builders (so the
benchmark and this test cannot drift apart). Speed and memory stay in benchmarks/; nothing here is timed.
"""

import importlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
loss_vs_peers = importlib.import_module("loss_vs_peers")
real_shape_step = importlib.import_module("real_shape_step")
shapes = importlib.import_module("_shapes")
_measure = importlib.import_module("_measure")


def _require_liger():
    # liger-kernel is in the `bench` extra (the main test stage installs it): in CI a missing package is a failure, not a skip
    if os.environ.get("CI"):
        import liger_kernel.chunked_loss  # noqa: F401
    else:
        pytest.importorskip("liger_kernel.chunked_loss")


@pytest.mark.parametrize("setting", sorted(loss_vs_peers.SETTINGS))
@pytest.mark.parametrize("peer", loss_vs_peers.PEERS)
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
def test_peer_loss_and_gradients_match_ours(setting, peer, divergence):
    if peer == "liger":
        _require_liger()
    lam = loss_vs_peers.SETTINGS[setting]
    inputs = loss_vs_peers.make_inputs(tokens=48, hidden=16, vocab=1000, seed=1)
    # chunks smaller than the problem, so that every variant's chunk loop runs more than once
    options = dict(divergence=divergence, liger_chunk_size=16, token_chunk_size=16)
    ours = loss_vs_peers.loss_and_grads(loss_vs_peers.build_loss("ours", inputs, lam, **options), inputs)
    ours = [ours[0], ours[1].clone(), ours[2].clone()]
    theirs = loss_vs_peers.loss_and_grads(loss_vs_peers.build_loss(peer, inputs, lam, **options), inputs)
    assert ours[0] > 0
    assert math.isclose(theirs[0], ours[0], rel_tol=1e-5)
    for mine, other in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-6)
    differences = loss_vs_peers.max_differences(
        dict(zip(("loss", "grad_h", "grad_w"), ours)), dict(zip(("loss", "grad_h", "grad_w"), theirs))
    )
    assert max(differences.values()) <= 1e-4


def test_fused_teacher_head_is_the_two_teachers_mixture():
    inputs = loss_vs_peers.make_inputs(tokens=8, hidden=4, vocab=32, seed=2)
    lam = 2.0
    fused = loss_vs_peers.fused_teacher_hidden(inputs, lam) @ loss_vs_peers.fused_teacher_head(inputs, lam).T
    mixed = lam * inputs["h_b"] @ inputs["w_b"].T + (1 - lam) * inputs["h_a"] @ inputs["w_a"].T
    torch.testing.assert_close(fused, mixed)


@pytest.mark.parametrize("variant", real_shape_step.VARIANTS)
def test_real_shape_step_variants_train(variant, tmp_path):
    shape = dict(shapes.SMALL_QWEN2, vocab_size=256)
    trainer = real_shape_step.build_trainer(variant, shape, str(tmp_path), steps=1, seq_len=32)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    out = trainer.train()
    assert math.isfinite(out.training_loss) and out.training_loss > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_real_shape_step_onpolicy_samples_the_completion_half(tmp_path):
    """On-policy TrRa gets the prompt half of the TrRa rows and samples exactly the completion half, once a step."""
    shape = dict(shapes.SMALL_QWEN2, vocab_size=256)
    trainer = real_shape_step.build_trainer("onpolicy_trra", shape, str(tmp_path), steps=2, seq_len=32)
    prompts, completion_lengths = [], []
    generate = trainer._generate_single_turn

    def recording_generate(prompt_ids, *args, **kwargs):
        completions = generate(prompt_ids, *args, **kwargs)
        prompts.extend(list(p) for p in prompt_ids)
        completion_lengths.extend(len(c) for c in completions)
        return completions

    trainer._generate_single_turn = recording_generate
    generation = _measure.GenerationTimer(trainer)
    trainer.train()
    assert sorted(prompts) == sorted(row[:16] for row in real_shape_step.random_ids(2, 32, 256))
    assert completion_lengths == [16, 16]
    assert len(generation.times) == 2  # one generation per step: the benchmark's share pairs them


def test_teacher_cache_benchmark_variants_run_and_the_cached_step_is_the_live_one(tmp_path):
    # The benchmark's capture and cached variants, in this process at the small shape: the capture is complete and
    # the cached run's first loss is the live TrRa run's on the same rows (the benchmark times what it claims to)
    teacher_cache = importlib.import_module("teacher_cache")
    args = type("Args", (), dict(threads=1, warmup=0, steps=1, seq_len=32, cache_dir=str(tmp_path / "cache")))()
    for variant in ("capture", "cached"):
        args.variant = variant
        figures = teacher_cache.run_variant(args, shapes.SMALL_QWEN2)
    assert figures["step_s"] > 0
    from trl_realign import TrRaTrainer

    vocab = shapes.SMALL_QWEN2["vocab_size"]
    losses = []
    for cache in (str(tmp_path / "cache"), None):
        extra = {"ref_model": shapes.qwen2_model(shapes.SMALL_QWEN2, seed=0),
                 "aligned_model": shapes.qwen2_model(shapes.SMALL_QWEN2, seed=2)} if cache is None else {}  # fmt: skip
        trainer = TrRaTrainer(model=shapes.qwen2_model(shapes.SMALL_QWEN2, seed=0),
                              args=teacher_cache.trra_args(str(tmp_path / "out"), 1, teacher_cache=cache),
                              train_dataset=real_shape_step.token_dataset(1, 32, vocab),
                              processing_class=real_shape_step.id_tokenizer(vocab), **extra)  # fmt: skip
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
