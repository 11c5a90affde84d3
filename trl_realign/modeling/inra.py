"""
Inference-time realignment (InRa, arXiv 2506.12704 §3.2): one expanded model, two paths, logits mixed by λ.

Path A runs the original layers only (exactly the original model); path B runs the adapter layer(s) and then the same
original layers (exactly the expanded model). Both share the embeddings, the final norm and the head, and the output
is λ·z_B + (1-λ)·z_A. Because the head is linear and shared, the paths are mixed after the final norm and the head runs
once: λ·W·n_B + (1-λ)·W·n_A = W·(λ·n_B + (1-λ)·n_A), equal up to float rounding (exact when λ is 0 or 1). The two paths
run as one forward of 2B rows through the original layers (see `InRaCache`), which is what makes InRa cheaper than
decoding with two separate models.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING
from transformers.utils import can_return_tuple

from .adapter import add_layer_adapter, check_supported, get_layer_adapter_config, mark_layer_adapter
from .adapter_artifact import ADAPTER_CONFIG_NAME, ADAPTER_SUBFOLDER, ADAPTER_WEIGHTS_NAME, LayerAdapterArtifact
from .inra_cache import InRaCache
from .model_parts import decoder_layers_of, decoder_of, is_peft_model
from .realign_lambda import check_realign_lambda


__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_SUBFOLDER", "ADAPTER_WEIGHTS_NAME", "InRaForCausalLM"]
_MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def _layer_kinds(config: PretrainedConfig) -> list[str]:
    # The attention pattern of each decoder layer, as the family's own decoder loop decides it: Qwen2/Qwen3 read
    # `layer_types`, Mistral applies `sliding_window` to every layer, Llama is causal everywhere.
    if getattr(config, "layer_types", None) is not None:
        kinds = list(config.layer_types)
    elif getattr(config, "sliding_window", None) is not None:
        kinds = ["sliding_attention"] * config.num_hidden_layers
    else:
        kinds = ["full_attention"] * config.num_hidden_layers
    unknown = sorted(set(kinds) - set(_MASK_FUNCTIONS))
    if unknown:
        raise ValueError(f"InRa supports full and sliding-window attention layers, not {unknown}.")
    return kinds


def _paths_for(realign_lambda: float | torch.Tensor) -> str:
    values = realign_lambda.tolist() if isinstance(realign_lambda, torch.Tensor) else [realign_lambda]
    if all(v == 0 for v in values):
        return "reference"
    if all(v == 1 for v in values):
        return "aligned"
    return "both"


def _stack_paths(x, batch_size: int):
    """Repeat a per-row input (mask, position ids, rotary cos/sin) for the 2B rows of the two stacked paths."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_stack_paths(t, batch_size) for t in x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"InRa cannot stack an attention input of type {type(x).__name__} for its two paths.")
    if x.shape[0] == 1 and batch_size > 1:  # broadcast over the batch already
        return x
    return torch.cat([x, x])


class InRaForCausalLM(PreTrainedModel, GenerationMixin):
    """
    An expanded causal LM (adapter layers + original layers) that decodes with its logits mixed between the original
    model (λ = 0) and the adapter-aligned model (λ = 1); λ outside [0, 1] extrapolates.

    Build it with [`~InRaForCausalLM.from_pretrained`] (an expanded checkpoint, or a plain L+n checkpoint with
    `num_adapters=n`), [`~InRaForCausalLM.from_model`] (an expanded model in memory, weights shared) or
    [`~InRaForCausalLM.from_base_and_adapter`] (a base model plus an adapter-only artifact). `forward` and `generate`
    take `realign_lambda`: a number, or a tensor with one value per batch row. When it is omitted,
    `model.realign_lambda` (default 1.0, the aligned model) is used.
    """

    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Tested with eager and SDPA attention. Flex attention's BlockMask cannot be stacked for the two paths; flash
    # attention would take the stacked 2-D mask but is untested (CPU-only project machines), so it is refused.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        check_supported(config)
        marker = get_layer_adapter_config(config)
        if marker is None:
            raise ValueError(
                "InRaForCausalLM needs an expanded model: the config has no `layer_adapter` marker. Expand the base "
                "model with `trl_realign.add_layer_adapter`, or pass `num_adapters=n` for a plain checkpoint whose "
                "bottom n layers are the adapter."
            )
        self.num_adapters = marker["num_adapters"]
        self._kinds = _layer_kinds(config)
        self.model = MODEL_MAPPING[type(config)](config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.realign_lambda = 1.0
        self.post_init()

    # ----------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, num_adapters: int | None = None, realign_lambda=1.0, **kwargs
    ) -> "InRaForCausalLM":
        """
        Load an expanded checkpoint (with the `layer_adapter` marker, e.g. written by `expand_model` or
        `save_pretrained`), or a plain checkpoint with L+n layers whose bottom `num_adapters` layers are the adapter
        (like the paper's released models). Other keyword arguments go to `PreTrainedModel.from_pretrained`.
        """
        realign_lambda = check_realign_lambda(realign_lambda)
        config = kwargs.pop("config", None)
        if not isinstance(config, PretrainedConfig):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, **hub_kwargs)
        else:
            config = copy.deepcopy(config)
        cls._mark(config, num_adapters, source=str(pretrained_model_name_or_path))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, output_loading_info=True, **kwargs
        )
        if info["missing_keys"]:
            raise ValueError(
                f"{pretrained_model_name_or_path} lacks weights for {sorted(info['missing_keys'])[:5]} (and "
                f"{max(len(info['missing_keys']) - 5, 0)} more); it is not a checkpoint of this expanded model."
            )
        model.realign_lambda = realign_lambda
        return (model, info) if want_info else model

    @staticmethod
    def _mark(config: PretrainedConfig, num_adapters: int | None, source: str) -> None:
        check_supported(config)
        marker = get_layer_adapter_config(config)
        if marker is None:
            if num_adapters is None:
                raise ValueError(
                    f"{source} has no `layer_adapter` marker in its config, so which layers are the adapter is "
                    "unknown. Pass `num_adapters=n` if its bottom n layers are an adapter (the paper's released "
                    "models have n=1), or expand a base model with `trl_realign.expand_model`."
                )
            mark_layer_adapter(config, num_adapters)
        elif num_adapters is not None and num_adapters != marker["num_adapters"]:
            raise ValueError(
                f"{source} is marked with {marker['num_adapters']} adapter layer(s) but `num_adapters={num_adapters}` "
                "was passed; drop `num_adapters` to use the marker."
            )

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, num_adapters: int | None = None, realign_lambda=1.0
    ) -> "InRaForCausalLM":
        """
        Wrap an expanded causal LM in memory. The weights are shared, not copied. For a model without the marker,
        `num_adapters` marks its config (in place) the way `mark_layer_adapter` does.
        """
        if is_peft_model(model):
            raise ValueError(
                "InRaForCausalLM wraps plain models; merge the LoRA weights into the adapter layers first "
                "(`model = model.merge_and_unload()`)."
            )
        realign_lambda = check_realign_lambda(realign_lambda)
        cls._mark(model.config, num_adapters, source=type(model).__name__)
        with torch.device("meta"):  # the submodules are replaced by the model's own below
            inra = cls(model.config)
        inra.model = decoder_of(model)
        inra.lm_head = model.get_output_embeddings()
        inra.generation_config = copy.deepcopy(model.generation_config)
        inra.realign_lambda = realign_lambda
        return inra.train(model.training)

    @classmethod
    def from_base_and_adapter(
        cls, base: PreTrainedModel | str | None, adapter_path: str, realign_lambda=1.0, **model_init_kwargs
    ) -> "InRaForCausalLM":
        """
        Put an adapter-only artifact (from [`~InRaForCausalLM.save_adapter`] or a trainer's `save_adapter`; a folder
        or a hub id, see [`LayerAdapterArtifact.load`]) on top of its base model.

        `base` is a model (expanded in place) or a path/hub id (loaded with `AutoModelForCausalLM.from_pretrained` and
        `model_init_kwargs`); `None` loads the base named in the artifact.
        """
        artifact = LayerAdapterArtifact.load(adapter_path)
        if base is None:
            base = artifact.base_model_name_or_path or None
            if base is None:
                raise ValueError(f"The adapter in {adapter_path} does not name its base model; pass `base`.")
        if isinstance(base, str):
            base = AutoModelForCausalLM.from_pretrained(base, **model_init_kwargs)
        elif model_init_kwargs:
            raise ValueError(f"`{', '.join(model_init_kwargs)}` only apply when `base` is a path or hub id.")
        # Checked before `base` is touched, so a bad artifact leaves the caller's model as it was
        artifact.check_fits(base, source=str(adapter_path))
        n = artifact.num_adapters
        add_layer_adapter(base, num_adapters=n)
        nn.ModuleList(decoder_layers_of(base)[:n]).load_state_dict(artifact.adapter_layers_state(), strict=True)
        marker = get_layer_adapter_config(base.config)
        marker["init"] = artifact.init
        if artifact.base_model_name_or_path:
            marker["base_model_name_or_path"] = artifact.base_model_name_or_path
        base.config.layer_adapter = marker
        return cls.from_model(base, realign_lambda=realign_lambda)

    # ------------------------------------------------------------------------------------------------------ saving
    def to_causal_lm(self) -> PreTrainedModel:
        """The expanded model as the family's own `*ForCausalLM` (weights shared): what `save_pretrained` writes."""
        with torch.device("meta"):
            causal_lm = MODEL_FOR_CAUSAL_LM_MAPPING[type(self.config)](self.config)
        causal_lm.model = self.model
        causal_lm.lm_head = self.lm_head
        causal_lm.generation_config = self.generation_config
        return causal_lm.train(self.training)

    def save_pretrained(self, save_directory: str, save_adapter: bool = True, **kwargs) -> None:
        """
        Write the full expanded model as a plain checkpoint (loadable by `AutoModelForCausalLM` without this package)
        and, when `save_adapter`, the adapter-only artifact in its `layer_adapter/` subfolder.
        """
        self.to_causal_lm().save_pretrained(save_directory, **kwargs)
        if save_adapter and kwargs.get("is_main_process", True):
            self.save_adapter(os.path.join(save_directory, ADAPTER_SUBFOLDER))

    def save_adapter(self, save_directory: str) -> None:
        """Write only the adapter layers' weights and a small config naming the base model and `num_adapters`."""
        LayerAdapterArtifact.from_model(self).save(save_directory)

    # ----------------------------------------------------------------------------------------------------- forward
    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _masks(self, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        if isinstance(attention_mask, dict):
            raise ValueError("InRaForCausalLM builds its own masks: pass a 2-D `attention_mask`, not a dict of masks.")
        masks = {}
        for index in range(self.num_adapters, len(self._kinds)):
            kind = self._kinds[index]
            if kind not in masks:
                # Sized against the first original layer of this kind, which every cache (any paths) fills
                masks[kind] = _MASK_FUNCTIONS[kind](
                    config=self.config,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    past_key_values=cache,
                    position_ids=position_ids,
                    layer_idx=index,
                )
        return masks

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: InRaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        realign_lambda: float | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        realign_lambda (`float` or `torch.Tensor`, *optional*):
            Mixing weight: logits are λ·z_B + (1-λ)·z_A (path B: adapter then original layers; path A: original
            layers). A number, or a 1-D tensor with one value per batch row. Defaults to `self.realign_lambda`.
        """
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError("InRaForCausalLM does not return attentions or hidden states (it has two paths).")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        realign_lambda = check_realign_lambda(
            self.realign_lambda if realign_lambda is None else realign_lambda, batch_size
        )
        paths = _paths_for(realign_lambda)
        use_cache = use_cache if use_cache is not None else self.config.use_cache

        if past_key_values is not None:
            if not isinstance(past_key_values, InRaCache):
                raise TypeError(
                    "InRaForCausalLM needs an `InRaCache` (one cache per path), got "
                    f"{type(past_key_values).__name__}. Leave `past_key_values=None` to create one, or pass "
                    "`InRaCache(model.config, paths='both')`."
                )
            if past_key_values.paths == "both":
                paths = "both"  # keeps both paths cached, so later steps and turns may use any λ
            elif past_key_values.paths != paths:
                raise ValueError(
                    f"The cache holds only the {past_key_values.paths!r} path, but this λ needs {paths!r}. Start a "
                    "new cache, or create one with `InRaCache(model.config, paths='both')` to change λ between calls."
                )
        elif use_cache:
            past_key_values = InRaCache(self.config, paths=paths)

        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_seen
        masks = self._masks(inputs_embeds, attention_mask, past_key_values, position_ids)
        rotary = self.model.rotary_emb(inputs_embeds, position_ids)
        layers = self.model.layers[: self.config.num_hidden_layers]
        n = self.num_adapters

        def run(hidden, layer_range, masks, rotary, position_ids):
            for index in layer_range:
                hidden = layers[index](
                    hidden,
                    attention_mask=masks[self._kinds[index]],
                    position_embeddings=rotary,
                    position_ids=position_ids,
                    past_key_values=past_key_values,
                    use_cache=use_cache,
                    **kwargs,
                )
            return hidden

        hidden = inputs_embeds
        if paths != "reference":
            hidden = run(hidden, range(n), masks, rotary, position_ids)
        if paths == "both":
            # Path A rows first, then path B rows: one forward of 2B rows through the shared original layers
            hidden = torch.cat([inputs_embeds, hidden])
            masks = {kind: _stack_paths(mask, batch_size) for kind, mask in masks.items()}
            rotary, position_ids = _stack_paths(rotary, batch_size), _stack_paths(position_ids, batch_size)
        hidden = run(hidden, range(n, len(layers)), masks, rotary, position_ids)
        hidden = self.model.norm(slice_logits_to_keep(hidden, logits_to_keep))
        if paths == "both":
            # Mixed in fp32: a bf16 λ (0.3 -> 0.30078) and bf16 sums would add their own rounding to the mix
            reference, aligned = hidden[:batch_size].float(), hidden[batch_size:].float()
            weight = realign_lambda
            if isinstance(weight, torch.Tensor):
                weight = weight.to(device=hidden.device, dtype=torch.float32).view(-1, 1, 1)
            hidden = (weight * aligned + (1 - weight) * reference).to(hidden.dtype)
        logits = self.lm_head(hidden)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)

    # -------------------------------------------------------------------------------------------------- generation
    def generate(self, *args, realign_lambda=None, **kwargs):
        """
        `GenerationMixin.generate` with `realign_lambda` (a number, or one value per input row; generate repeats the
        values for `num_beams` / `num_return_sequences`). Greedy, sampling and beam search keep one KV cache per path.
        """
        inputs = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        realign_lambda = check_realign_lambda(
            self.realign_lambda if realign_lambda is None else realign_lambda,
            inputs.shape[0] if inputs is not None else None,
        )
        return super().generate(*args, realign_lambda=realign_lambda, **kwargs)

    # Private GenerationMixin hook (transformers 5.23): generate calls it once, before prefill, to create the cache.
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic"):
                raise ValueError(
                    f"InRaForCausalLM decodes with its own dynamic two-path cache; `cache_implementation="
                    f"{generation_config.cache_implementation!r}` is not supported."
                )
            realign_lambda = model_kwargs.get("realign_lambda")
            model_kwargs["past_key_values"] = InRaCache(
                self.config, paths=_paths_for(self.realign_lambda if realign_lambda is None else realign_lambda)
            )
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
