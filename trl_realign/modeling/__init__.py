from .adapter import (
    add_layer_adapter,
    adapter_parameter_names,
    bypass_layer_adapter,
    expand_model,
    freeze_all_but_adapter,
    get_layer_adapter_config,
    mark_layer_adapter,
    num_layer_adapters,
)
from .adapter_artifact import LayerAdapterArtifact, read_adapter_config
from .dera import DeRaCache, DeRaForCausalLM
from .inra import InRaForCausalLM
from .inra_cache import InRaCache


__all__ = [
    "DeRaCache",
    "DeRaForCausalLM",
    "InRaCache",
    "InRaForCausalLM",
    "LayerAdapterArtifact",
    "adapter_parameter_names",
    "add_layer_adapter",
    "bypass_layer_adapter",
    "expand_model",
    "freeze_all_but_adapter",
    "get_layer_adapter_config",
    "mark_layer_adapter",
    "num_layer_adapters",
    "read_adapter_config",
]
