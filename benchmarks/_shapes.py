"""Model dimensions the recipes name, written out so that benchmarks build them from configs with random weights (no Hub)."""

from __future__ import annotations

# Qwen/Qwen2.5-0.5B's config.json (the values that set compute and memory)
QWEN2_5_0_5B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B's config.json (a Qwen2 with an untied head)
R1_DISTILL_QWEN_1_5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=131072,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

# A stand-in with the same layout at a size that runs in seconds on CPU (for --small and the tests)
SMALL_QWEN2 = dict(
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)

SHAPES = {"qwen2.5-0.5b": QWEN2_5_0_5B, "r1-distill-qwen-1.5b": R1_DISTILL_QWEN_1_5B, "small": SMALL_QWEN2}


def qwen2_model(shape: dict, seed: int, dtype=None):
    """A Qwen2 causal LM of `shape` with random weights (fp32 unless `dtype`), in eval mode."""
    from trl_realign.testing import tiny_causal_lm

    model = tiny_causal_lm("qwen2", seed=seed, **shape)
    return model if dtype is None else model.to(dtype)
