"""Tiny models built from configs, for tests, benchmarks and the offline quickstart (no Hub access)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedModel, Qwen2Config, Qwen3Config


_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}


def tiny_config(
    family: str = "llama",
    vocab_size: int = 128,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    tie_word_embeddings: bool = False,
    **overrides,
):
    """Config of a tiny decoder of `family` ("llama", "qwen2", "qwen3" or "mistral")."""
    if family not in _CONFIGS:
        raise ValueError(f"Unknown tiny model family {family!r}; choose one of {sorted(_CONFIGS)}.")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    if family == "qwen3":
        kwargs["head_dim"] = hidden_size // 4
    kwargs.update(overrides)
    return _CONFIGS[family](**kwargs)


def tiny_causal_lm(family: str = "llama", seed: int = 0, **config_kwargs) -> PreTrainedModel:
    """A randomly initialised tiny causal LM in fp32; the same `seed` and arguments give the same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **config_kwargs), dtype=torch.float32)
    # Biases start at zero in HF inits; randomise them so tests exercise the bias paths (Qwen2's q/k/v biases)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.02)
    return model.eval()


def spread_weights(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """
    Redraw `model`'s matrices with unit-variance activations (in place; returns it). HF's init (std 0.02) gives
    near-uniform logits, whose greedy argmax can flip on float rounding between two engines (vLLM and transformers);
    these weights give clear winners.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                std = 1.0 if "embed_tokens" in name else param.shape[1] ** -0.5
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return model
