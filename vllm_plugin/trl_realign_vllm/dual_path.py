"""
InRa's two paths through one vLLM decoder: path A = the original layers, path B = the adapter layer(s) then the same
original layers. The original layers run once on 2T rows (A's rows first), and each of them keeps one paged KV cache
per path: the stock `Attention` serves path B, a second `Attention` (`...self_attn.attn_ref`) serves path A.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.attention import Attention


REFERENCE_SUFFIX = "_ref"


class DualPathAttention(nn.Module):
    """Stands in for an original layer's `self_attn.attn`: rows [0, T) attend with path A's cache, [T, 2T) with B's."""

    def __init__(self, aligned: Attention, reference: Attention):
        super().__init__()
        self.aligned = aligned
        self.reference = reference

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
        tokens = query.shape[0] // 2
        return torch.cat(
            [
                self.reference(query[:tokens], key[:tokens], value[:tokens], **kwargs),
                self.aligned(query[tokens:], key[tokens:], value[tokens:], **kwargs),
            ]
        )


def add_reference_attention(original_layers, cache_config) -> None:
    """Give each original layer a second `Attention` (own KV cache, same shape and window) for path A."""
    for layer in original_layers:
        stock = layer.self_attn.attn
        if type(stock) is not Attention:
            raise ValueError(
                f"{stock.layer_name} is a {type(stock).__name__}; InRa on vLLM supports plain decoder attention only."
            )
        # Name it like a sibling of the stock one: vLLM reads the layer index from the name (exactly one integer)
        reference = Attention(
            stock.num_heads,
            stock.head_size,
            layer.self_attn.scaling,
            num_kv_heads=stock.num_kv_heads,
            cache_config=cache_config,
            per_layer_sliding_window=stock.sliding_window,
            prefix=stock.layer_name + REFERENCE_SUFFIX,
            attn_type=stock.attn_type,
        )
        layer.self_attn.attn = DualPathAttention(stock, reference)


def run_both_paths(decoder, num_adapters: int, input_ids, positions, inputs_embeds) -> torch.Tensor:
    """
    The final-norm outputs of both paths, `[2T, H]`: rows [0, T) path A, [T, 2T) path B.

    Drives the stock decoder's own embedding, layers and norm (their weights, sharding and kernels), but not its
    forward, which runs one path.
    """
    embeds = inputs_embeds if inputs_embeds is not None else decoder.embed_input_ids(input_ids)
    hidden, residual = embeds, None
    for layer in decoder.layers[:num_adapters]:
        hidden, residual = layer(positions, hidden, residual)
    # Path A enters the first original layer as the original model would: the embeddings as its residual stream
    # (a zero residual makes the fused add+norm compute exactly norm(embeddings)).
    hidden = torch.cat([embeds, hidden])
    residual = torch.cat([torch.zeros_like(embeds), residual])
    positions = torch.cat([positions, positions], dim=-1)
    for layer in decoder.layers[num_adapters:]:
        hidden, residual = layer(positions, hidden, residual)
    normed, _ = decoder.norm(hidden, residual)
    return normed


def mix_paths(normed: torch.Tensor, token_lambdas: torch.Tensor) -> torch.Tensor:
    """
    λ·n_B + (1−λ)·n_A per token, in fp32, cast back to the model's dtype.

    Mixing the final-norm outputs before the shared linear head equals mixing the logits, λ·z_B + (1−λ)·z_A, up to
    float rounding (exactly at λ = 0 and 1), and runs the head once; `trl_realign.InRaForCausalLM` mixes the same way.
    """
    tokens = normed.shape[0] // 2
    weight = token_lambdas[:tokens].to(device=normed.device, dtype=torch.float32).unsqueeze(-1)
    reference, aligned = normed[:tokens].float(), normed[tokens:].float()
    return (weight * aligned + (1 - weight) * reference).to(normed.dtype)
