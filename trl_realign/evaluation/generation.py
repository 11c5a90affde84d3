"""The `transformers` backend: batched `generate()` of n completions per prompt, with per-row λ (InRa, DeRa)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .completions import Completion, SamplingSettings, check_lambdas_per_prompt, count_generated_tokens


def accepts_realign_lambda(model) -> bool:
    """Whether `model.forward` takes `realign_lambda`, i.e. one batch can hold several λ (InRa, DeRa)."""
    return "realign_lambda" in inspect.signature(model.forward).parameters


def resolve_eos_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: the model's generation config's EOS ids, and the tokenizer's EOS."""
    return eos_token_ids_of(model.generation_config, tokenizer)


def eos_token_ids_of(generation_config, tokenizer) -> list[int]:
    """[`resolve_eos_token_ids`] from a `GenerationConfig`, for a checkpoint whose model is not loaded here (vLLM)."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("Neither the model's generation config nor the tokenizer defines an EOS token.")
    return ids


def generate_kwargs(sampling: SamplingSettings) -> dict:
    """`SamplingSettings` as `generate()` arguments."""
    kwargs = {"max_new_tokens": sampling.max_new_tokens, "num_beams": sampling.num_beams}
    if sampling.greedy:  # the model's own sampling defaults must not leak in
        return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {**kwargs, "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k}  # fmt: skip


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    realign_lambdas: Sequence[float] | None = None,
    *,
    sampling: SamplingSettings,
    num_samples: int = 1,
    batch_size: int = 8,
    eos_token_ids: Sequence[int] | None = None,
    add_special_tokens: bool = False,
    progress=None,
) -> list[list[Completion]]:
    """
    Sample `num_samples` completions for every prompt, `batch_size` prompts per `generate()` call.

    Args:
        model: a causal LM. With `realign_lambdas`, its `generate()` must take `realign_lambda` (one value per row).
        tokenizer: pads on the left; it must have a pad token.
        prompts: the prompt texts, templates already applied.
        realign_lambdas: one λ per prompt (prompts may repeat with different λ), or `None` for a plain model.
        sampling: max new tokens, temperature (0: greedy), top-p, top-k, beams.
        eos_token_ids: the ids that end a completion (default: [`resolve_eos_token_ids`]).
        add_special_tokens: whether tokenizing adds BOS etc. (`False` for chat-templated prompts, which have them).
        progress: a tqdm bar advanced by one per prompt.

    Returns one list of `num_samples` [`Completion`]s per prompt, in the order of `prompts`, counted with
    [`count_generated_tokens`].
    """
    check_lambdas_per_prompt(prompts, realign_lambdas)
    if realign_lambdas is not None and not accepts_realign_lambda(model):
        raise ValueError(
            f"{type(model).__name__} does not take `realign_lambda`; per-prompt λ needs an `InRaForCausalLM` or a "
            "`DeRaForCausalLM`."
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set one (e.g. `tokenizer.pad_token = tokenizer.eos_token`).")
    eos_ids = list(eos_token_ids) if eos_token_ids is not None else resolve_eos_token_ids(model, tokenizer)
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    # Longest first, so that a batch holds prompts of similar length (little padding) and memory peaks early
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    device = next(model.parameters()).device
    results: list[list[Completion] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = tokenizer(
            [prompts[i] for i in rows],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=add_special_tokens,
        ).to(device)
        extra = {}
        if realign_lambdas is not None:
            extra["realign_lambda"] = torch.tensor([float(realign_lambdas[i]) for i in rows], device=device)
        sequences = model.generate(
            **inputs,
            **generate_kwargs(sampling),
            **extra,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids,
        )
        completion_ids = sequences[:, inputs["input_ids"].shape[1] :].cpu()
        counts, finished = count_generated_tokens(completion_ids, eos_ids)
        token_ids = [ids[:n].tolist() for ids, n in zip(completion_ids, counts.tolist())]
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        for k, i in enumerate(rows):  # generate() puts the samples of a prompt next to each other
            span = range(k * num_samples, (k + 1) * num_samples)
            results[i] = [Completion(texts[j], token_ids[j], bool(finished[j])) for j in span]
        if progress is not None:
            progress.update(len(rows))
    return results


@dataclass
class TransformersBackend:
    """A [`CompletionBackend`] over an in-process model: [`generate_completions`] with its batching options bound."""

    model: object
    tokenizer: object
    batch_size: int = 8
    add_special_tokens: bool = False
    progress: object = None

    def __call__(self, prompts, realign_lambdas, sampling: SamplingSettings, num_samples: int):
        return generate_completions(
            self.model, self.tokenizer, prompts, realign_lambdas, sampling=sampling, num_samples=num_samples,
            batch_size=self.batch_size, add_special_tokens=self.add_special_tokens, progress=self.progress,
        )  # fmt: skip
