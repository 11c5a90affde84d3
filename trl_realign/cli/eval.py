"""`trl-realign eval`: λ sweep evaluation (accuracy and generated tokens per λ, summary files and plot)."""

from __future__ import annotations


def make_parser(prog: str | None = "trl-realign eval"):
    from trl import TrlParser

    from ..evaluation import EvalConfig

    return TrlParser((EvalConfig,), prog=prog, description=__doc__)


def check(args) -> None:
    """Input files and model folders must exist before any model loads."""
    from ..data.loading import check_dataset_source
    from .errors import UsageError, refused_inputs
    from .parsing import check_model_arg, check_required

    check_required("eval", {"dataset_name": (args.dataset_name, "the evaluation data: a hub id, a folder or a file")})
    with refused_inputs("eval"):
        check_dataset_source(args.dataset_name)
    options = [(option, getattr(args, option)) for option in ("model_name_or_path", "ref_model_name_or_path")]
    options = [(option, path) for option, path in options if path is not None]
    options += [("checkpoints", path) for path in args.checkpoints or []]
    if not options:
        raise UsageError(
            "`trl-realign eval` needs a model",
            "pass `--model_name_or_path` (InRa), with `--ref_model_name_or_path` (DeRa), or `--checkpoints` (plain "
            "models, one λ label each)",
        )
    for option, path in options:
        check_model_arg(path, "eval", option=option)


def run(argv: list[str]) -> None:
    from ..evaluation import evaluate
    from .parsing import parse_and_check

    (args,) = parse_and_check(make_parser(), "eval", argv, check).args
    for row in evaluate(args):
        print(f"{row['model']:<40} λ={row['realign_lambda']:<6} accuracy={row['accuracy']:.4f} "
              f"truncated={row['truncation_rate']:.4f} mean_tokens={row['mean_tokens']:.1f}")  # fmt: skip
    print(f"Samples, summary and plot written to {args.output_dir}.")
