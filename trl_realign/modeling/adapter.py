"""
The layer adapter (arXiv 2506.12704, §3.2): copies of the bottom decoder layer inserted before the original layers.

With `init="identity"` each copy has its attention output projection and MLP down projection zeroed, so both residual
branches add exactly zero and the expanded model computes the same logits as the original. Only the copies are trained;
the original layers stay frozen, so "the expanded model with its adapter layers skipped" is exactly the original model.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .model_parts import SUPPORTED_MODEL_TYPES, decoder_layers_of, decoder_of


logger = logging.getLogger(__name__)

ADAPTER_INITS = ("identity", "kaiming")
# Config attribute holding the marker; a plain dict so that it serialises in config.json
MARKER = "layer_adapter"
# The residual writers of a decoder layer: zeroed for the identity init, and LoRA on the adapter must include them
RESIDUAL_WRITERS = ("o_proj", "down_proj")


def check_supported(config: PretrainedConfig) -> None:
    """Raise a `ValueError` naming the supported families unless `config` is one of them."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"The layer adapter does not support model_type {model_type!r}. Supported families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (their decoder layers are pre-norm with `self_attn.o_proj` and "
            "`mlp.down_proj` as the only residual writers, which the identity init relies on)."
        )


def get_layer_adapter_config(config: PretrainedConfig | dict) -> dict[str, Any] | None:
    """The adapter marker recorded by [`add_layer_adapter`] or [`mark_layer_adapter`] (a copy), or `None`."""
    marker = config.get(MARKER) if isinstance(config, dict) else getattr(config, MARKER, None)
    if marker is None:
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("num_adapters"), int) or marker["num_adapters"] < 1:
        raise ValueError(
            f"Malformed `config.{MARKER}`: {marker!r}. It must be a dict with a positive integer `num_adapters`; "
            "write it with `mark_layer_adapter(config, num_adapters)`."
        )
    return dict(marker)


def num_layer_adapters(config: PretrainedConfig | dict) -> int:
    """How many adapter layers (indices `0..n-1` of the decoder) the config marks; 0 for a plain model."""
    marker = get_layer_adapter_config(config)
    return 0 if marker is None else marker["num_adapters"]


def mark_layer_adapter(
    config: PretrainedConfig,
    num_adapters: int = 1,
    init: str = "identity",
    base_model_name_or_path: str = "",
    base_num_hidden_layers: int | None = None,
) -> PretrainedConfig:
    """
    Record in `config` that its bottom `num_adapters` decoder layers are adapter layers, without changing any weight.

    For a plain L+n checkpoint whose first n layers were trained as an adapter elsewhere (e.g. the paper's released
    models). `base_num_hidden_layers` defaults to `config.num_hidden_layers - num_adapters`.
    """
    check_supported(config)
    if not isinstance(num_adapters, int) or num_adapters < 1:
        raise ValueError(f"`num_adapters` must be a positive integer, got {num_adapters!r}.")
    if base_num_hidden_layers is None:
        base_num_hidden_layers = config.num_hidden_layers - num_adapters
    if base_num_hidden_layers < 1 or base_num_hidden_layers + num_adapters != config.num_hidden_layers:
        raise ValueError(
            f"The config has {config.num_hidden_layers} layers, which cannot be {num_adapters} adapter layer(s) on top "
            f"of a {base_num_hidden_layers}-layer base model. Check `num_adapters`."
        )
    setattr(
        config,
        MARKER,
        {
            "num_adapters": num_adapters,
            "init": init,
            "base_model_name_or_path": base_model_name_or_path or "",
            "base_num_hidden_layers": base_num_hidden_layers,
        },
    )
    return config


def _shift_layer_counts(config: PretrainedConfig, layers: int, layer_type: str | None) -> None:
    # Everything the decoder loop, the masks and the KV cache count layers by. A negative `layers` removes the bottom
    # |layers| entries again (see `bypass_layer_adapter`).
    config.num_hidden_layers += layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [layer_type] * layers + list(config.layer_types) if layers > 0 else list(
            config.layer_types
        )[-layers:]
    if isinstance(getattr(config, "max_window_layers", None), int):
        # Qwen2/Qwen3: layers below `max_window_layers` use full attention; the original layers keep their type
        config.max_window_layers += layers


def _renumber(layers) -> None:
    # `layer_idx` indexes the KV cache: two layers sharing an index would silently share a cache slot
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def _init_adapter_layer(layer: nn.Module, init: str) -> None:
    with torch.no_grad():
        if init == "identity":
            for writer in (layer.self_attn.o_proj, layer.mlp.down_proj):
                writer.weight.zero_()
                if writer.bias is not None:
                    writer.bias.zero_()
        else:
            # The paper's ablation (Table 4): Kaiming for 2-D tensors (as `nn.Linear` does), standard normal for 1-D
            for param in layer.parameters():
                if param.dim() >= 2:
                    nn.init.kaiming_uniform_(param, a=math.sqrt(5))
                else:
                    nn.init.normal_(param)


def freeze_all_but_adapter(model: nn.Module) -> None:
    """Freeze every parameter except those of the adapter layers (which are made trainable)."""
    n = num_layer_adapters(decoder_of(model).config)
    if n == 0:
        raise ValueError("The model has no layer adapter; call `add_layer_adapter(model)` first.")
    model.requires_grad_(False)
    for layer in decoder_layers_of(model)[:n]:
        layer.requires_grad_(True)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in `model.named_parameters()`) of the parameters that belong to the adapter layers."""
    decoder_layers_of(model)  # a clear error for architectures without `model.model.layers`
    decoder = decoder_of(model)
    n = num_layer_adapters(decoder.config)
    adapter_ids = {id(p) for layer in decoder.layers[:n] for p in layer.parameters()}
    return [name for name, param in model.named_parameters() if id(param) in adapter_ids]


def add_layer_adapter(model: PreTrainedModel, num_adapters: int = 1, init: str = "identity") -> PreTrainedModel:
    """
    Insert `num_adapters` copies of the bottom decoder layer before the original layers (in place; returns `model`).

    Args:
        model (`PreTrainedModel`):
            A Llama, Mistral, Qwen2 or Qwen3 causal LM. Not already expanded, and not sharded (under DeepSpeed ZeRO-3,
            expand on CPU with [`expand_model`] and train from the written checkpoint).
        num_adapters (`int`, *optional*, defaults to `1`):
            Number of adapter layers; they become indices `0..num_adapters-1` of `model.model.layers`.
        init (`str`, *optional*, defaults to `"identity"`):
            `"identity"` zeroes each copy's `self_attn.o_proj` and `mlp.down_proj` (weights and biases), so the expanded
            model's logits equal the original's. `"kaiming"` re-initialises the copy (the paper's Table 4 ablation).

    Every original parameter is frozen and the adapter layers are trainable. The config gets `num_hidden_layers`,
    `layer_types` and `max_window_layers` updated and the marker `config.layer_adapter`.
    """
    check_supported(model.config)
    if init not in ADAPTER_INITS:
        raise ValueError(f"Unknown adapter `init={init!r}`; choose one of {list(ADAPTER_INITS)}.")
    if not isinstance(num_adapters, int) or num_adapters < 1:
        raise ValueError(f"`num_adapters` must be a positive integer, got {num_adapters!r}.")
    existing = num_layer_adapters(model.config)
    if existing:
        raise ValueError(
            f"The model already has {existing} adapter layer(s) (`config.{MARKER}`); train it as it is, or expand "
            "the base model with the number of adapter layers you want."
        )
    decoder_layers_of(model)  # a clear error for architectures without `model.model.layers`
    decoder = decoder_of(model)
    source = decoder.layers[0]
    if any(hasattr(p, "ds_id") for p in source.parameters()):
        raise ValueError(
            "The model's weights are sharded by DeepSpeed ZeRO-3, so its bottom layer cannot be copied. Expand it on "
            "CPU first with `trl_realign.expand_model(model_name_or_path, output_dir)` and train from `output_dir`."
        )
    config = model.config
    base_layers = len(decoder.layers)
    if config.num_hidden_layers != base_layers:
        raise ValueError(
            f"`config.num_hidden_layers` ({config.num_hidden_layers}) differs from the {base_layers} decoder layers "
            "of the model; the layer adapter needs a model whose config counts its layers."
        )
    layer_types = getattr(config, "layer_types", None)

    copies = []
    for _ in range(num_adapters):
        layer = copy.deepcopy(source)
        _init_adapter_layer(layer, init)
        copies.append(layer)
    decoder.layers = nn.ModuleList(copies + list(decoder.layers))
    _renumber(decoder.layers)
    _shift_layer_counts(config, num_adapters, layer_types[0] if layer_types else None)
    mark_layer_adapter(
        config,
        num_adapters,
        init=init,
        base_model_name_or_path=getattr(config, "_name_or_path", "") or "",
        base_num_hidden_layers=base_layers,
    )
    freeze_all_but_adapter(model)
    logger.info(
        "Added %d %s-initialised adapter layer(s) before the %d original layers of %s.",
        num_adapters,
        init,
        base_layers,
        config.model_type,
    )
    return model


@contextmanager
def bypass_layer_adapter(model: nn.Module):
    """
    Run the model without its adapter layers inside the block: exactly the original model, no copy.

    The adapter layers are taken out of the decoder and the config's layer counts and the remaining layers' `layer_idx`
    are shifted back, so that masks and KV caches built inside the block see an L-layer model; all of it is restored on
    exit. Works through a PEFT wrapper (LoRA on the adapter layers is skipped with them).
    """
    decoder_layers_of(model)  # a clear error for architectures without `model.model.layers`
    decoder = decoder_of(model)
    config = decoder.config
    n = num_layer_adapters(config)
    if n == 0:
        raise ValueError("The model has no layer adapter to bypass (no `config.layer_adapter` marker).")
    if getattr(decoder, "_layer_adapter_bypassed", False):
        raise RuntimeError("`bypass_layer_adapter` is already active on this model; it cannot be nested.")
    all_layers = decoder.layers
    saved = {key: getattr(config, key, None) for key in ("num_hidden_layers", "layer_types", "max_window_layers")}
    decoder.layers = nn.ModuleList(list(all_layers)[n:])
    decoder._layer_adapter_bypassed = True
    try:
        _renumber(decoder.layers)
        _shift_layer_counts(config, -n, None)
        yield model
    finally:
        decoder.layers = all_layers
        decoder._layer_adapter_bypassed = False
        _renumber(all_layers)
        for key, value in saved.items():
            if value is not None:
                setattr(config, key, value)


def expand_model(
    model_or_path: str | PreTrainedModel,
    output_dir: str,
    num_adapters: int = 1,
    init: str = "identity",
    tokenizer=None,
    **model_init_kwargs,
) -> str:
    """
    Write an expanded model (L + `num_adapters` layers, with the marker) as a plain checkpoint in `output_dir`.

    `AutoModelForCausalLM.from_pretrained(output_dir)` loads it without this package. This is the way to train under
    DeepSpeed ZeRO-3, which shards weights at load time. An in-memory model is copied, not modified. The tokenizer
    (given, or loaded from `model_or_path`) is saved beside the weights. Returns `output_dir`.
    """
    if isinstance(model_or_path, str):
        model_init_kwargs.setdefault("dtype", "auto")
        model = AutoModelForCausalLM.from_pretrained(model_or_path, **model_init_kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_or_path)
            except (OSError, ValueError) as error:
                logger.warning(
                    "No tokenizer could be loaded from %r (%s); the expanded checkpoint is written without one. "
                    "Pass `tokenizer=` to include it.",
                    model_or_path,
                    error.__class__.__name__,
                )
    else:
        if model_init_kwargs:
            raise ValueError(f"`{', '.join(model_init_kwargs)}` only apply when `model_or_path` is a path or hub id.")
        check_supported(model_or_path.config)
        model = copy.deepcopy(model_or_path)
    add_layer_adapter(model, num_adapters=num_adapters, init=init)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    logger.info("Wrote the expanded model (%d layers) to %s", model.config.num_hidden_layers, output_dir)
    return output_dir
