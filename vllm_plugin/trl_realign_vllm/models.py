"""
The InRa architectures: vLLM's stock Llama, Mistral, Qwen2 and Qwen3 classes (weight loading, tensor-parallel
sharding, kernels) with a two-path forward. Checkpoints keep the stock weight names: `model.layers.0..n-1` are the
adapter, `model.layers.n..` the original layers.
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from .checks import check_attention_backend, check_supported, num_adapters_of
from .dual_path import add_reference_attention, mix_paths, run_both_paths
from .lambda_processor import token_lambdas


class InRaMixin:
    """Put before the family's `*ForCausalLM` class; its `__init__` must call `_setup_inra` after the stock one."""

    @staticmethod
    def _check_config(vllm_config) -> int:
        hf_config = vllm_config.model_config.hf_config.get_text_config()
        num_adapters = num_adapters_of(hf_config)
        check_supported(vllm_config, hf_config)
        return num_adapters

    def _setup_inra(self, vllm_config, num_adapters: int) -> None:
        self.num_adapters = num_adapters
        add_reference_attention(self.model.layers[num_adapters:], vllm_config.cache_config)
        # Any attention layer's metadata carries the step's query_start_loc (all layers share one KV cache group)
        aligned = self.model.layers[num_adapters].self_attn.attn.aligned
        check_attention_backend(aligned.attn_backend, vllm_config.use_v2_model_runner)
        self._metadata_layer = aligned.layer_name

    @classmethod
    def get_model_state_cls(cls):
        # Model Runner V2's hook (v1/worker/gpu/model_states/__init__.py): imported only where MRV2 runs
        from .model_state import RealignLambdaModelState

        return RealignLambdaModelState

    def _v1_token_lambdas(self, num_tokens: int, device) -> torch.Tensor:
        query_start_loc = None
        if is_forward_context_available():
            metadata = get_forward_context().attn_metadata
            if isinstance(metadata, dict) and self._metadata_layer in metadata:
                query_start_loc = metadata[self._metadata_layer].query_start_loc
        return token_lambdas(query_start_loc, num_tokens, device)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        realign_lambda: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`realign_lambda`: λ per input token (Model Runner V2); on V1 it comes from the λ processor."""
        normed = run_both_paths(self.model, self.num_adapters, input_ids, positions, inputs_embeds)
        if realign_lambda is None:
            realign_lambda = self._v1_token_lambdas(normed.shape[0] // 2, normed.device)
        return mix_paths(normed, realign_lambda)


class InRaLlamaForCausalLM(InRaMixin, LlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        num_adapters = self._check_config(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self._setup_inra(vllm_config, num_adapters)


class InRaMistralForCausalLM(InRaMixin, MistralForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        num_adapters = self._check_config(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self._setup_inra(vllm_config, num_adapters)


class InRaQwen2ForCausalLM(InRaMixin, Qwen2ForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        num_adapters = self._check_config(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._setup_inra(vllm_config, num_adapters)


class InRaQwen3ForCausalLM(InRaMixin, Qwen3ForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        num_adapters = self._check_config(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._setup_inra(vllm_config, num_adapters)
