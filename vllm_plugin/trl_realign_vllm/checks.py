"""What the plugin refuses at load, with a message, instead of serving it wrongly."""

from __future__ import annotations

import dataclasses
import typing

# Where trl-realign records the adapter (`trl_realign.modeling.adapter.MARKER`); a plain L+n checkpoint gets it at
# launch: --hf-overrides '{"layer_adapter": {"num_adapters": 1}}'
MARKER = "layer_adapter"


def num_adapters_of(hf_config) -> int:
    """The number of adapter layers (decoder layers 0..n-1) that `hf_config`'s marker records."""
    marker = getattr(hf_config, MARKER, None)
    if marker is None:
        raise ValueError(
            f"The checkpoint's config has no `{MARKER}` marker, so which layers are the adapter is unknown. InRa "
            "checkpoints written by trl-realign carry it; for a plain checkpoint whose bottom n layers are the "
            f"adapter, pass --hf-overrides '{{\"{MARKER}\": {{\"num_adapters\": n}}, \"architectures\": [...]}}'."
        )
    num_adapters = marker.get("num_adapters") if isinstance(marker, dict) else None
    if isinstance(num_adapters, bool) or not isinstance(num_adapters, int) or num_adapters < 1:
        raise ValueError(f"Malformed `config.{MARKER}`: {marker!r}; it needs a positive integer `num_adapters`.")
    layers = hf_config.num_hidden_layers
    base_layers = marker.get("base_num_hidden_layers")
    if num_adapters >= layers or (base_layers is not None and base_layers + num_adapters != layers):
        raise ValueError(
            f"The config has {layers} decoder layers, which cannot be {num_adapters} adapter layer(s) on top of "
            f"{'a ' + str(base_layers) + '-layer' if base_layers is not None else 'an'} original model. Check "
            "`num_adapters`."
        )
    return num_adapters


def check_supported(vllm_config, hf_config) -> None:
    """Raise `ValueError` naming the first engine setting that InRa on vLLM does not support."""
    # Imported here so that the frontend, which never builds a model, imports no model-runner code.
    from vllm.platforms import current_platform

    from .runners import uses_model_runner_v2

    parallel = vllm_config.parallel_config
    refused = {
        "pipeline parallel": parallel.pipeline_parallel_size > 1,
        "decode context parallel": getattr(parallel, "decode_context_parallel_size", 1) > 1,
        "prefill context parallel": getattr(parallel, "prefill_context_parallel_size", 1) > 1,
        "LoRA": vllm_config.lora_config is not None,
        # vLLM skips plugin logits processors under speculative decoding, so λ would never reach the model
        "speculative decoding": vllm_config.speculative_config is not None,
        # Untested here: scales of a second KV cache per original layer
        "quantization": vllm_config.quant_config is not None,
        "a quantized KV cache": vllm_config.cache_config.cache_dtype != "auto",
        "multimodal inputs": vllm_config.model_config.is_multimodal_model,
        # Each micro-batch gets its own attention metadata (a list of them), where λ's token rows are not looked for
        "micro-batching (--enable-dbo, ubatch_size > 1)": getattr(parallel, "use_ubatching", False),
    }
    for feature, present in refused.items():
        if present:
            raise ValueError(f"InRa on vLLM does not support {feature}; launch without it.")

    layer_types = getattr(hf_config, "layer_types", None) or []
    if len(set(layer_types)) > 1:
        raise ValueError(
            "InRa on vLLM does not support models with both sliding-window and full-attention layers (vLLM's Qwen2 "
            f"refuses them too); this config has layer_types {sorted(set(layer_types))}."
        )
    if getattr(hf_config, "dual_chunk_attention_config", None):
        raise ValueError(
            "InRa on vLLM does not support Qwen2's dual_chunk_attention_config (path A's attention is built without "
            "it); serve the checkpoint without it."
        )
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and (rope.get("mrope_section") or rope.get("rope_type") == "mrope"):
        raise ValueError("InRa on vLLM does not support multimodal rotary embeddings (mrope).")

    # The dual path runs eagerly, outside vLLM's compiled graph: piecewise CUDA graphs would capture nothing of it.
    # Under full CUDA graphs λ must be a graph input, which only Model Runner V2 provides (see model_state.py).
    if current_platform.is_cuda_alike():
        mode = vllm_config.compilation_config.cudagraph_mode
        if mode is not None and mode.has_piecewise_cudagraphs():
            raise ValueError(
                f"InRa on vLLM does not support piecewise CUDA graphs (cudagraph_mode={mode.name}); launch with "
                "--compilation-config '{\"cudagraph_mode\": \"FULL_DECODE_ONLY\"}' (Model Runner V2) or "
                "--enforce-eager."
            )
        if mode is not None and mode.has_full_cudagraphs() and not uses_model_runner_v2(vllm_config):
            raise ValueError(
                "With the V1 model runner λ reaches the model outside the CUDA graph; launch with --enforce-eager, "
                "or use Model Runner V2 (the default on GPU)."
            )


def _metadata_class(backend):
    # A builder is an `AttentionMetadataBuilder[TheMetadata]`, perhaps a few subclasses down
    for cls in backend.get_builder_cls().__mro__:
        for base in getattr(cls, "__orig_bases__", ()):
            for arg in typing.get_args(base):
                if dataclasses.is_dataclass(arg):
                    return arg
    return None


def check_attention_backend(backend, use_v2_model_runner: bool) -> None:
    """
    Raise `ValueError` unless Model Runner V1 can give each token its request's λ under `backend`: it reads the rows'
    token spans from the attention metadata's `query_start_loc`, which some backends' metadata (FlashInfer's) lacks.
    """
    if use_v2_model_runner:  # V2 takes the spans from its own input batch
        return
    metadata = _metadata_class(backend)
    if metadata is None or "query_start_loc" not in {field.name for field in dataclasses.fields(metadata)}:
        raise ValueError(
            f"InRa on vLLM's V1 model runner needs the attention metadata's query_start_loc, which the "
            f"{backend.get_name()} attention backend's metadata does not have; launch with another one (e.g. "
            "--attention-backend FLASH_ATTN) or on Model Runner V2."
        )
