"""
Decoding-time realignment (DeRa, Liu et al. 2024, arXiv 2402.02992): the baseline that InRa makes cheap.

Two separate models, an aligned one and its reference, run side by side and every next token is drawn from
`softmax(λ·z_aligned + (1−λ)·z_ref)`. [`DeRaForCausalLM`] wraps the pair as one causal LM whose forward returns the
mixed logits, so `generate()` drives it with all of its features: greedy, sampling (temperature, top-p, ...), beam
search, `num_return_sequences`, stopping criteria and left-padded batches. Each model keeps its own KV cache; both live
in one [`DeRaCache`], which `generate()` carries from step to step like any other cache.

Unlike the public DeRa demo (a logits processor that runs the reference model unbatched, without padding) and
transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor`, a left-padded batch gives the same tokens as each row
generated alone, and λ may differ per row.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .._compat import cache_kwarg, merge_cache_arguments
from ..losses import realign_logits
from .realign_lambda import check_realign_lambda


logger = logging.getLogger(__name__)


class DeRaCache(Cache):
    """
    The KV caches of the two models of a [`DeRaForCausalLM`], advanced together.

    It implements the parts of the `Cache` interface that `generate()` uses (sequence length, beam reordering,
    cropping, batch selection) by applying them to both caches, like transformers' `EncoderDecoderCache`.
    """

    def __init__(self, aligned_cache: Cache, ref_cache: Cache):
        # The generic `Cache` views that `generate()` reads (`is_sliding`, `is_linear`, ...) describe the aligned
        # model's layers, like `get_seq_length`: the list is shared (caches only ever append to it), not copied
        super().__init__(layers=aligned_cache.layers)
        self.aligned_cache = aligned_cache
        self.ref_cache = ref_cache

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(aligned_cache={self.aligned_cache}, ref_cache={self.ref_cache})"

    def __len__(self) -> int:
        return len(self.aligned_cache)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.aligned_cache.get_seq_length(layer_idx)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.aligned_cache.get_max_length(layer_idx)

    def reset(self) -> None:
        self.aligned_cache.reset()
        self.ref_cache.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.aligned_cache.reorder_cache(beam_idx)
        self.ref_cache.reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        self.aligned_cache.crop(tokens_to_remove)
        self.ref_cache.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.aligned_cache.batch_repeat_interleave(repeats)
        self.ref_cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.aligned_cache.batch_select_indices(indices)
        self.ref_cache.batch_select_indices(indices)

    def activate_past_recording(self) -> None:
        self.aligned_cache.activate_past_recording()
        self.ref_cache.activate_past_recording()

    @property
    def is_compileable(self) -> bool:
        # Two dynamic caches: `generate()` must not try to compile a static-shape forward around them
        return False

    @property
    def is_croppable(self) -> bool:
        return self.aligned_cache.is_croppable and self.ref_cache.is_croppable


def _load(model: PreTrainedModel | str, role: str, model_init_kwargs: dict) -> PreTrainedModel:
    if isinstance(model, str):
        return AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"The {role} model must be a `PreTrainedModel` causal LM or a hub id / local path, got "
            f"{type(model).__name__}."
        )
    if model.get_output_embeddings() is None:
        raise ValueError(
            f"The {role} model ({type(model).__name__}) has no language-modeling head, so it returns no logits to "
            "mix; pass the causal LM (e.g. `AutoModelForCausalLM.from_pretrained(...)`), not its backbone."
        )
    return model


class DeRaForCausalLM(PreTrainedModel, GenerationMixin):
    """
    Decoding-time realignment of an aligned model towards (λ < 1) or beyond (λ > 1) its reference model.

    The forward runs both models on the same inputs and returns `λ·z_aligned + (1−λ)·z_ref` (in float32), so λ=1 is the
    aligned model, λ=0 the reference model, and the next-token distribution of `generate()` is
    `softmax(λ·z_aligned + (1−λ)·z_ref)` after its logits processors (temperature, top-p, ...).

    Args:
        aligned_model (`PreTrainedModel` or `str`):
            The aligned model (e.g. the DPO or RL model), or its hub id / local path.
        ref_model (`PreTrainedModel` or `str`):
            The reference model it was aligned from (e.g. the SFT model), or its hub id / local path. It must share the
            aligned model's tokenizer; extra vocabulary rows of either head (embedding padding) are ignored.
        realign_lambda (`float`, *optional*, defaults to `1.0`):
            The λ used when `forward`/`generate` get none.
        **model_init_kwargs:
            Passed to `AutoModelForCausalLM.from_pretrained` for the models given as paths (e.g. `dtype`).

    Example:

    ```python
    >>> dera = DeRaForCausalLM("my-org/dpo-model", "my-org/sft-model", dtype="bfloat16")
    >>> inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    >>> out = dera.generate(**inputs, realign_lambda=torch.tensor([0.5, 1.5]), do_sample=True, max_new_tokens=256)
    ```
    """

    config_class = PretrainedConfig
    base_model_prefix = "aligned_model"
    # The wrapper runs no attention itself; each wrapped model uses the implementation it was loaded with
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        aligned_model: PreTrainedModel | str,
        ref_model: PreTrainedModel | str,
        realign_lambda: float = 1.0,
        **model_init_kwargs,
    ):
        aligned_model = _load(aligned_model, "aligned", model_init_kwargs)
        ref_model = _load(ref_model, "reference", model_init_kwargs)
        if aligned_model is ref_model:
            logger.info("DeRa got the same model as aligned and reference model: every λ gives that model's logits.")
        aligned_device = next(aligned_model.parameters()).device
        ref_device = next(ref_model.parameters()).device
        if aligned_device != ref_device:
            raise ValueError(
                f"The aligned model is on {aligned_device} but the reference model is on {ref_device}; their logits "
                "are mixed at every step, so move both to the same device (e.g. `model.to('cuda')`)."
            )
        super().__init__(copy.deepcopy(aligned_model.config))
        self.aligned_model = aligned_model
        self.ref_model = ref_model
        self.realign_lambda = check_realign_lambda(realign_lambda)
        self.generation_config = copy.deepcopy(aligned_model.generation_config)
        aligned_vocab = aligned_model.get_output_embeddings().weight.shape[0]
        ref_vocab = ref_model.get_output_embeddings().weight.shape[0]
        # Checkpoints of one family often pad the head to different sizes (Qwen2.5: 151,936 vs 152,064 rows); the
        # tokenizer never produces the extra rows, so the shared ones are the whole vocabulary
        self.vocab_size = min(aligned_vocab, ref_vocab)
        if aligned_vocab != ref_vocab:
            logger.warning(
                "The aligned head has %d rows and the reference head %d: mixing the first %d (the tokenizer must not "
                "produce ids beyond them).",
                aligned_vocab,
                ref_vocab,
                self.vocab_size,
            )
        self.post_init()

    def init_weights(self):
        # `post_init` would run each wrapped model's own init on every module not flagged `_is_hf_initialized` and
        # re-tie weights: both models come trained, so neither may happen to them here
        pass

    def _pair_cache(self, past_key_values: Cache | None) -> DeRaCache:
        if isinstance(past_key_values, DeRaCache):
            return past_key_values
        # `generate()` creates an empty `DynamicCache` for the wrapper before the first forward; it keeps whatever
        # cache the forward returns (`_update_model_kwargs_for_generation`), so the pair cache replaces it here
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            raise ValueError(
                f"DeRa got a non-empty {type(past_key_values).__name__}, which cannot hold the states of two models; "
                "continue a generation with the `DeRaCache` returned by the previous call "
                "(`generate(..., return_dict_in_generate=True).past_key_values`)."
            )
        return DeRaCache(DynamicCache(config=self.aligned_model.config), DynamicCache(config=self.ref_model.config))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        realign_lambda: float | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        realign_lambda (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
            λ of `λ·z_aligned + (1−λ)·z_ref`, one value for the batch or one per row. Defaults to the λ given at
            construction.
        cache (`DeRaCache`, *optional*):
            The KV cache under the name transformers 5.24 gives it; `past_key_values` (the older name) is the same.

        Returns `CausalLMOutputWithPast` whose `logits` are the mixed float32 logits and whose `past_key_values` is the
        [`DeRaCache`] of both models (when `use_cache`).
        """
        if kwargs.get("labels") is not None:
            raise ValueError("DeRa mixes logits for decoding and computes no loss; drop `labels`.")
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "DeRa needs `input_ids`: its two models have their own embedding tables, so one `inputs_embeds` "
                "cannot feed both."
            )
        past_key_values = merge_cache_arguments(cache, past_key_values)
        realign_lambda = check_realign_lambda(
            self.realign_lambda if realign_lambda is None else realign_lambda, batch_size=input_ids.shape[0]
        )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = self._pair_cache(past_key_values) if use_cache else None
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        name = cache_kwarg()
        aligned_logits = self.aligned_model(**inputs, **{name: cache.aligned_cache if use_cache else None}).logits
        ref_logits = self.ref_model(**inputs, **{name: cache.ref_cache if use_cache else None}).logits
        aligned_logits, ref_logits = aligned_logits[..., : self.vocab_size], ref_logits[..., : self.vocab_size]
        # λ always becomes a float32 tensor, so that a float λ and a per-row λ take the same arithmetic
        lam = torch.as_tensor(realign_lambda, dtype=torch.float32, device=aligned_logits.device)
        if lam.ndim == 1:
            lam = lam.view(-1, 1, 1)
        logits = realign_logits(ref_logits.float(), aligned_logits.float(), lam)
        return CausalLMOutputWithPast(logits=logits, **{cache_kwarg(): cache})

    def generate(self, *args, realign_lambda: float | Sequence[float] | torch.Tensor | None = None, **kwargs):
        """
        `GenerationMixin.generate` with `realign_lambda` (a float or one value per input row).

        A per-row λ follows its row through `num_return_sequences` and beam search. Continue a conversation by passing
        the returned `past_key_values` (a [`DeRaCache`]) back in; λ may change between turns.
        """
        if realign_lambda is not None:
            inputs = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
            batch_size = inputs.shape[0] if isinstance(inputs, torch.Tensor) else None
            kwargs["realign_lambda"] = check_realign_lambda(realign_lambda, batch_size=batch_size)
        return super().generate(*args, **kwargs)
