"""
What a generation backend hands back, and the package's one rule for counting generated tokens.

A backend is any callable `(prompts, realign_lambdas, sampling, num_samples) -> completions` (see
[`CompletionBackend`]); `evaluate()` and `trl-realign generate` sample through one, so that another backend (e.g. a
vLLM server) can stand in for `transformers.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Completion:
    """
    One sampled completion: its text (special tokens dropped), its token ids up to and including the first EOS (see
    [`count_generated_tokens`]), and whether it ended in EOS (`False`: it ran out of tokens, i.e. was truncated).
    """

    text: str
    token_ids: list[int]
    finished: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn, whatever the backend. `temperature=0` is greedy; `top_k=0` disables top-k."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.top_k < 0:
            raise ValueError("`max_new_tokens` and `num_beams` must be positive and `top_k` >= 0 (0: no top-k).")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 is greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1], got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_lambdas_per_prompt(prompts: Sequence[str], realign_lambdas: Sequence[float] | None) -> None:
    """A backend's first check: `realign_lambdas` is `None` or holds one λ per prompt."""
    if realign_lambdas is not None and len(realign_lambdas) != len(prompts):
        raise ValueError(f"Got {len(realign_lambdas)} λ values for {len(prompts)} prompts; pass one per prompt.")


class CompletionBackend(Protocol):
    def __call__(
        self,
        prompts: Sequence[str],
        realign_lambdas: Sequence[float] | None,
        sampling: SamplingSettings,
        num_samples: int,
    ) -> list[list[Completion]]:
        """
        `num_samples` completions for every prompt, in the order of `prompts`. `realign_lambdas` holds one λ per
        prompt for a model that mixes two paths (InRa, DeRa), or is `None` for a plain model.
        """


def count_generated_tokens(
    completion_ids: torch.Tensor, eos_token_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Number of tokens each row generated, and whether it stopped at an EOS: the package's one token-counting rule.

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
