"""
The KV cache of InRa decoding: one cache per path, stored so that both paths run as one batched forward.

Path A ("reference") runs the original layers only; path B ("aligned") runs the adapter layer(s), then the same
original layers. Both paths see the same tokens, so in the original layers their keys and values are stacked along the
batch dimension (rows `0..B-1` are path A, rows `B..2B-1` path B) and every original layer runs once on `2B` rows. The
adapter layers only ever hold path B's `B` rows. With λ = 0 or λ = 1 only the path that λ selects is cached.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import Cache

from .._compat import check_cache_layer_api
from .adapter import num_layer_adapters


PATHS = ("reference", "aligned", "both")


class InRaCache(Cache):
    """
    KV cache of an [`InRaForCausalLM`], holding path A (`"reference"`), path B (`"aligned"`) or both.

    Args:
        config (`PretrainedConfig`):
            Config of the expanded model (with the `layer_adapter` marker). Each layer gets the cache layer that
            transformers gives it (`DynamicLayer`, or `DynamicSlidingWindowLayer` for sliding-window layers).
        paths (`str`, *optional*, defaults to `"both"`):
            `"reference"` (λ = 0: original layers only), `"aligned"` (λ = 1: adapter then original layers) or
            `"both"` (any λ). A `"both"` cache serves every λ, so it can be reused across dialogue turns whose λ
            differ; a single-path cache only serves its own λ.
    """

    def __init__(self, config: PretrainedConfig, paths: str = "both"):
        if paths not in PATHS:
            raise ValueError(f"Unknown InRa cache `paths={paths!r}`; choose one of {list(PATHS)}.")
        num_adapters = num_layer_adapters(config)
        if num_adapters == 0:
            raise ValueError(
                "InRaCache needs the config of an expanded model (with the `layer_adapter` marker); see "
                "`trl_realign.add_layer_adapter`."
            )
        check_cache_layer_api()
        # Reuse transformers' per-layer dispatch (full vs sliding-window layers) for the layer objects
        super().__init__(layers=DynamicCache(config=config).layers)
        self.num_adapters = num_adapters
        self.paths = paths

    @property
    def is_dual(self) -> bool:
        """Whether the original layers hold both paths (stacked along the batch dimension)."""
        return self.paths == "both"

    def _size_layer(self, layer_idx: int) -> int:
        # Adapter layers have the type of the bottom original layer (they are copies of it) and see the same tokens,
        # but stay empty in a "reference" cache: answer length and mask-size queries from the bottom original layer.
        return max(layer_idx, self.num_adapters)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(self._size_layer(layer_idx))

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return super().get_mask_sizes(query_length, self._size_layer(layer_idx))

    def path_key_values(self, layer_idx: int, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """
        Keys and values that `path` (`"reference"` or `"aligned"`) cached at decoder layer `layer_idx` (an index of the
        expanded model), or `None` if that path has no entry there (not cached, or an adapter layer on path A).
        """
        if path not in ("reference", "aligned"):
            raise ValueError(f"`path` must be 'reference' or 'aligned', got {path!r}.")
        layer = self.layers[layer_idx]
        if self.paths not in (path, "both") or (path == "reference" and layer_idx < self.num_adapters):
            return None
        if not layer.is_initialized or layer.keys.numel() == 0:
            return None
        if not self.is_dual or layer_idx < self.num_adapters:
            return layer.keys, layer.values
        half = layer.keys.shape[0] // 2
        rows = slice(0, half) if path == "reference" else slice(half, None)
        return layer.keys[rows], layer.values[rows]

    def _select_rows(self, indices: torch.Tensor) -> None:
        # `indices` select rows of one path's batch; the stacked layers apply them to both halves
        for layer_idx, layer in enumerate(self.layers):
            if not layer.is_initialized or layer.keys.numel() == 0:
                continue
            rows = indices.to(layer.keys.device)
            if self.is_dual and layer_idx >= self.num_adapters:
                rows = torch.cat([rows, rows + layer.keys.shape[0] // 2])
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)

    def _path_batch_size(self) -> int:
        layer = self.layers[self.num_adapters]
        if not layer.is_initialized or layer.keys.numel() == 0:
            return 0
        return layer.keys.shape[0] // 2 if self.is_dual else layer.keys.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows for beam search; `beam_idx` indexes the rows of the generated batch."""
        self._select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_rows(torch.arange(self._path_batch_size()).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if indices.dtype == torch.bool:
            indices = indices.nonzero().squeeze(-1)
        self._select_rows(indices)
