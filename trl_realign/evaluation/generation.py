"""Batched sampling of n completions per prompt, with per-row λ for models that mix two paths (InRa, DeRa)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Completion:
    """One sampled completion: its text (special tokens dropped), its length in tokens, and whether it ended in EOS."""

    text: str
    num_tokens: int
    finished: bool


def accepts_realign_lambda(model) -> bool:
    """Whether `model.forward` takes `realign_lambda`, i.e. one batch can hold several λ (InRa, DeRa)."""
    return "realign_lambda" in inspect.signature(model.forward).parameters


def count_generated_tokens(
    completion_ids: torch.Tensor, eos_token_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Number of tokens each row generated, and whether it stopped at an EOS.

    `completion_ids` is `[rows, steps]`, the part of `generate()`'s output after the prompt. A row counts its tokens up
    to and including its first EOS; what follows is padding (`generate()` fills finished rows until the last one
    stops). A row with no EOS ran to `max_new_tokens` and counts every step. Padding is found by position, not by id,
    so a tokenizer whose pad token is its EOS token (Qwen, Llama 3 recipes) is counted right.
    """
    if not eos_token_ids:
        raise ValueError("Counting generated tokens needs at least one EOS token id.")
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device))
    finished = is_eos.any(dim=-1)
    first_eos = is_eos.int().argmax(dim=-1)
    counts = torch.where(finished, first_eos + 1, torch.full_like(first_eos, completion_ids.shape[-1]))
    return counts, finished


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    realign_lambdas: Sequence[float] | None = None,
    *,
    num_samples: int = 1,
    batch_size: int = 8,
    eos_token_ids: Sequence[int],
    add_special_tokens: bool = False,
    generation_kwargs: dict | None = None,
    progress=None,
) -> list[list[Completion]]:
    """
    Sample `num_samples` completions for every prompt, `batch_size` prompts per `generate()` call.

    Args:
        model: a causal LM. With `realign_lambdas`, its `generate()` must take `realign_lambda` (one value per row).
        tokenizer: pads on the left; it must have a pad token.
        prompts: the prompt texts, templates already applied.
        realign_lambdas: one λ per prompt (prompts may repeat with different λ), or `None` for a plain model.
        eos_token_ids: the ids that end a completion (for token counts; also passed to `generate()`).
        add_special_tokens: whether tokenizing adds BOS etc. (`False` for chat-templated prompts, which have them).
        generation_kwargs: e.g. `do_sample`, `temperature`, `top_p`, `max_new_tokens`.
        progress: a tqdm bar advanced by one per prompt.

    Returns one list of `num_samples` [`Completion`]s per prompt, in the order of `prompts`.
    """
    if realign_lambdas is not None and len(realign_lambdas) != len(prompts):
        raise ValueError(f"Got {len(realign_lambdas)} λ values for {len(prompts)} prompts; pass one per prompt.")
    if realign_lambdas is not None and not accepts_realign_lambda(model):
        raise ValueError(
            f"{type(model).__name__} does not take `realign_lambda`; per-prompt λ needs an `InRaForCausalLM` or a "
            "`DeRaForCausalLM`."
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set one (e.g. `tokenizer.pad_token = tokenizer.eos_token`).")
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
            **(generation_kwargs or {}),
            **extra,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=list(eos_token_ids),
        )
        completion_ids = sequences[:, inputs["input_ids"].shape[1] :].cpu()
        counts, finished = count_generated_tokens(completion_ids, eos_token_ids)
        texts = tokenizer.batch_decode(
            [ids[:n] for ids, n in zip(completion_ids, counts.tolist())], skip_special_tokens=True
        )
        for k, i in enumerate(rows):  # generate() puts the samples of a prompt next to each other
            span = range(k * num_samples, (k + 1) * num_samples)
            results[i] = [Completion(texts[j], int(counts[j]), bool(finished[j])) for j in span]
        if progress is not None:
            progress.update(len(rows))
    return results
