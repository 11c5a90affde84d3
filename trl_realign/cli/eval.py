"""`trl-realign eval`: λ sweep evaluation (accuracy and generated tokens per λ, summary files and plot)."""

from __future__ import annotations


def make_parser(prog: str | None = "trl-realign eval"):
    from trl import TrlParser

    from ..evaluation import EvalConfig

    return TrlParser((EvalConfig,), prog=prog, description=__doc__)


def check(args) -> None:
    """Input files and model folders must exist before any model loads."""
    from ..data.loading import check_dataset_source
    from .parsing import check_model_arg

    if args.dataset_name is None:
        raise ValueError("`trl-realign eval` needs `--dataset_name` (a hub id, a local folder or a data file).")
    check_dataset_source(args.dataset_name)
    paths = [p for p in (args.model_name_or_path, args.ref_model_name_or_path) if p is not None]
    paths += list(args.checkpoints or [])
    if not paths:
        raise ValueError(
            "`trl-realign eval` needs a model: `--model_name_or_path` (InRa), with `--ref_model_name_or_path` (DeRa), "
            "or `--checkpoints` (plain models, one λ label each)."
        )
    for path in paths:
        check_model_arg(path, "eval")


def run(argv: list[str]) -> None:
    from ..evaluation import evaluate
    from .parsing import parse_command_line

    (args,) = parse_command_line(make_parser(), "eval", argv, allow_launcher=False).args
    check(args)
    for row in evaluate(args):
        print(f"{row['model']:<40} λ={row['realign_lambda']:<6} accuracy={row['accuracy']:.4f} "
              f"truncated={row['truncation_rate']:.4f} mean_tokens={row['mean_tokens']:.1f}")  # fmt: skip
    print(f"Samples, summary and plot written to {args.output_dir}.")
