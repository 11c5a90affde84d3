"""`trl-realign expand`: write an expanded checkpoint (L + n layers, identity-initialised adapter) to disk."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExpandArguments:
    """
    Options of `trl-realign expand`. The output is a plain checkpoint that `AutoModelForCausalLM.from_pretrained`
    loads without this package; train from it under DeepSpeed ZeRO-3, which shards weights at load time.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model to expand (hub id or folder)."})
    output_dir: str | None = field(default=None, metadata={"help": "Folder of the expanded checkpoint."})
    num_adapters: int = field(default=1, metadata={"help": "Adapter layers inserted below the original ones."})
    init: str = field(
        default="identity",
        metadata={"help": "'identity': zeroed output projections (exact identity); 'kaiming': the paper's ablation.",
                  "choices": ["identity", "kaiming"]},
    )
    dtype: str = field(default="auto", metadata={"help": "dtype to load and save the weights in ('auto' keeps them)."})
    model_revision: str = field(default="main", metadata={"help": "Revision of the base model."})
    seed: int = field(default=42, metadata={"help": "Seed of the 'kaiming' init (TrainingArguments' default)."})


def make_parser(prog: str | None = "trl-realign expand"):
    from trl import TrlParser

    return TrlParser((ExpandArguments,), prog=prog, description=__doc__)


def check(args: ExpandArguments) -> None:
    from .errors import UsageError
    from .parsing import check_model_arg, check_required

    check_required("expand", {"model_name_or_path": (args.model_name_or_path, "the base model"),
                              "output_dir": (args.output_dir, "the folder of the expanded checkpoint")})  # fmt: skip
    check_model_arg(args.model_name_or_path, "expand", "the base model")
    if args.num_adapters < 1:
        raise UsageError(f"`num_adapters` must be at least 1, got {args.num_adapters}", "pass 1 or more")


def run(argv: list[str]) -> None:
    from transformers import set_seed

    from ..modeling.adapter import expand_model
    from .parsing import parse_and_check

    (args,) = parse_and_check(make_parser(), "expand", argv, check).args
    set_seed(args.seed)
    expand_model(
        args.model_name_or_path, args.output_dir, num_adapters=args.num_adapters, init=args.init, dtype=args.dtype,
        revision=args.model_revision,
    )  # fmt: skip
    print(f"Expanded checkpoint written to {args.output_dir}.")
