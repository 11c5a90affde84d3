"""Checks that several causal LMs can be mixed at the logit level: same tokens, linear output heads, enough rows."""

from __future__ import annotations

import inspect
import logging
import os

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from .._compat import full_shape
from .model_parts import decoder_of, unwrap_peft


logger = logging.getLogger(__name__)

# Config attributes with which transformers' causal LMs post-process logits beyond `lm_head(last_hidden_state)`: caps
# (Gemma's, RecurrentGemma's) apply whenever set; the scales (Cohere, Granite and MiniCPM3, Falcon-H1, Muse, Inkling's
# division of the hidden state before the head) unless they are 1
_LOGIT_SOFT_CAPS = ("final_logit_softcapping", "logits_soft_cap")
_LOGIT_SCALES = (
    "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier", "logits_mup_width_multiplier",
)  # fmt: skip
# Words in the names of the inputs through which transformers' models take images, video and audio (`pixel_values`,
# `image_grid_thw`, `input_features`, `mm_token_type_ids`, ...)
_MULTIMODAL_INPUT_WORDS = ("pixel", "image", "video", "audio", "speech", "input_features", "input_values", "mm_token")


def multimodal_inputs(names) -> list[str]:
    """Those of `names` (input names or batch keys) that carry images, video or audio."""
    return [name for name in names if any(word in name for word in _MULTIMODAL_INPUT_WORDS)]


def check_text_only(model: PreTrainedModel, role: str) -> None:
    """Realignment forwards only text to its models: refuse one that takes images, video or audio."""
    model = unwrap_peft(model)
    taken = multimodal_inputs(inspect.signature(model.forward).parameters)
    if taken:
        raise ValueError(
            f"The {role} ({type(model).__name__}) is multimodal: it takes `{taken[0]}`, which realignment never "
            "forwards to its models. Use a text-only causal LM (e.g. the `...ForCausalLM` of its language part)."
        )


def check_text_batch(inputs) -> None:
    """Refuse a batch that carries images, video or audio: the loss would train on the text around them alone."""
    carried = multimodal_inputs(inputs)
    if carried:
        raise ValueError(
            f"The batch carries {', '.join(f'`{key}`' for key in carried)}, which realignment never forwards to its "
            "models (it trains on text only): use text-only data, a tokenizer and text-only models."
        )


def check_text_processing_class(processing_class) -> None:
    """A processor (as a vision-language model's) prepares inputs realignment never forwards: refuse it."""
    if isinstance(processing_class, ProcessorMixin):
        raise ValueError(
            f"The processing class is a multimodal processor ({type(processing_class).__name__}), whose images or "
            "audio realignment never forwards to its models: pass its tokenizer (`processor.tokenizer`) and text data."
        )


def check_same_tokenizer(
    tokenizer: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, role: str
) -> None:
    """
    Raise unless every token `tokenizer` (the student's) can produce has the same id in `other`: the rows the loss
    mixes must mean the same tokens. Tokens only `other` has are extra rows nobody scores (transformers adds, e.g., a
    class's default unk token to a tokenizer loaded through `AutoTokenizer`), so they are allowed.
    """
    vocab, other_vocab = tokenizer.get_vocab(), other.get_vocab()
    differing = [t for t in vocab if other_vocab.get(t) != vocab[t]]
    if differing:
        examples = ", ".join(f"{t!r}: {vocab.get(t)} vs {other_vocab.get(t)}" for t in differing[:5])
        raise ValueError(
            f"The {role}'s tokenizer differs from the student's: {len(differing)} tokens have different ids "
            f"(e.g. {examples}). Logits can only be mixed between models that share a tokenizer; use an {role} "
            "trained with the same tokenizer as the student."
        )


def check_tokenizer_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, role: str) -> None:
    """Compare `tokenizer` with the tokenizer saved beside `model`, when the model was loaded from a folder or hub id."""
    name = getattr(model, "name_or_path", "") or ""
    if not name:
        logger.warning(
            "The %s was passed as an in-memory model with no `name_or_path`, so its tokenizer cannot be compared with "
            "the student's; make sure both were trained with the same tokenizer.",
            role,
        )
        return
    try:
        other = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        if os.path.isdir(name) or not os.path.exists(name):
            logger.warning(
                "No tokenizer could be loaded from %r to compare with the student's (%s); make sure the %s was "
                "trained with the same tokenizer.",
                name,
                error.__class__.__name__,
                role,
            )
            return
        raise
    check_same_tokenizer(tokenizer, other, role)


def check_vocab_rows(model: PreTrainedModel, vocab_size: int, role: str) -> None:
    """The output head must have a row for every token the tokenizer can produce (extra padding rows are fine)."""
    # Under ZeRO-3 the weight is a 0-sized shard: read the full shape DeepSpeed records instead
    rows = full_shape(model.get_output_embeddings().weight)[0]
    if rows < vocab_size:
        raise ValueError(
            f"The {role}'s output head has {rows} rows but the tokenizer has {vocab_size} tokens. Use a {role} "
            "trained with this tokenizer, or resize its embeddings with `model.resize_token_embeddings(len(tokenizer))`."
        )


def check_linear_output_head(model: PreTrainedModel, role: str, probe: bool = True) -> None:
    """
    Raise unless the model's logits are exactly `lm_head(last_hidden_state)`.

    The streamed loss fuses heads linearly, which is wrong for models that post-process their logits (Gemma-2's
    soft-capping, Cohere's logit scale, ...). The config catches the known cases; the probe compares a real forward with
    the head applied to the backbone's output and catches the rest (skipped where weights are sharded, e.g. ZeRO-3).
    """
    config = model.config.get_text_config()
    for attribute in (*_LOGIT_SOFT_CAPS, *_LOGIT_SCALES):
        value = getattr(config, attribute, None)
        if value is not None and not (attribute in _LOGIT_SCALES and value == 1.0):
            raise ValueError(
                f"The {role} ({config.model_type}) post-processes its logits (`{attribute}={value}`), so they are not "
                "linear in its last hidden state and the fused teacher head would be wrong. Use a model family without "
                "logit soft-capping or scaling (e.g. Llama, Qwen2, Qwen3, Mistral)."
            )
    if not probe:
        return
    head = model.get_output_embeddings()
    device = head.weight.device
    input_ids = torch.arange(8, device=device).unsqueeze(0) % head.weight.shape[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits.float()
        hidden = decoder_of(model)(input_ids=input_ids, use_cache=False).last_hidden_state
        linear = F.linear(hidden, head.weight, head.bias).float()
    model.train(was_training)
    if not torch.allclose(logits, linear, rtol=1e-2, atol=1e-2 * linear.abs().max().item() + 1e-6):
        raise ValueError(
            f"The {role}'s logits are not `lm_head(last_hidden_state)` (largest difference "
            f"{(logits - linear).abs().max().item():.3g}): it post-processes its logits, so the fused teacher head "
            "would be wrong. Use a model whose logits are a linear function of its last hidden state."
        )
