"""λ-sweep evaluation: sampling, answer checking, token counts, truncation, summary files, plot and wandb table."""

from .data import build_prompts, load_eval_dataset
from .completions import Completion, CompletionBackend, SamplingSettings, count_generated_tokens
from .generation import TransformersBackend, generate_completions, resolve_eos_token_ids
from .plots import lambda_sweep_figure, plot_lambda_sweep
from .scoring import SCORERS, exact_match_scorer, extract_boxed, get_scorer, math_verify_scorer
from .lambda_sweep import EvalConfig, evaluate, summarize


__all__ = [
    "Completion",
    "CompletionBackend",
    "EvalConfig",
    "SCORERS",
    "SamplingSettings",
    "TransformersBackend",
    "build_prompts",
    "count_generated_tokens",
    "evaluate",
    "exact_match_scorer",
    "extract_boxed",
    "generate_completions",
    "get_scorer",
    "lambda_sweep_figure",
    "load_eval_dataset",
    "math_verify_scorer",
    "plot_lambda_sweep",
    "resolve_eos_token_ids",
    "summarize",
]
