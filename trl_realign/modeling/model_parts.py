"""Where the parts of a causal LM live: through a PEFT wrapper, to the decoder stack and its layers."""

from __future__ import annotations

from torch import nn


SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a PEFT wrapper (duck-typed, so that PEFT stays an optional import)."""
    return hasattr(model, "get_base_model") and hasattr(model, "disable_adapter")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers live inside its modules), or `model` itself."""
    return model.get_base_model() if is_peft_model(model) else model


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM: the module whose forward returns `last_hidden_state` (`model.model`)."""
    model = unwrap_peft(model)
    decoder = getattr(model, "base_model", None)
    if decoder is None or decoder is model:
        raise ValueError(
            f"{type(model).__name__} has no decoder stack under its head (`base_model`): pass a causal LM with an "
            "output head such as `LlamaForCausalLM` or `Qwen2ForCausalLM`."
        )
    return decoder


def decoder_layers_of(model: nn.Module) -> nn.ModuleList:
    """The decoder layers (`model.model.layers`) of a causal LM of the families the layer adapter supports."""
    layers = getattr(decoder_of(model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(unwrap_peft(model)).__name__} has no decoder layers at `model.model.layers`; the layer adapter "
            f"supports causal LMs of the families {', '.join(SUPPORTED_MODEL_TYPES)} (e.g. `LlamaForCausalLM`, "
            "`Qwen2ForCausalLM`)."
        )
    return layers
