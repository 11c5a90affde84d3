"""`trl-realign prepare`: run a dataset preparation once and write the result (json/jsonl/parquet file or a folder)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class PrepareScriptArguments:
    """Input and output of `trl-realign prepare`; the `dataset_preparation` options choose the preparation."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Raw dataset: hub id, local folder, or local .json/.jsonl/.parquet file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to prepare."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer that renders prompts and counts tokens (openr1_* preparations)."}
    )
    output_path: str | None = field(
        default=None,
        metadata={"help": "Where to write: a .jsonl/.json/.parquet file, or a folder (save_to_disk); a training "
                  "recipe then takes it as `dataset_name`."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of random choices (UltraFeedback rejected answers)."})


def make_parser(prog: str | None = "trl-realign prepare"):
    from trl import TrlParser

    from ..data.prepare import DatasetPreparationArguments

    return TrlParser((PrepareScriptArguments, DatasetPreparationArguments), prog=prog, description=__doc__)


def check(args: PrepareScriptArguments, preparation_args) -> None:
    from .parsing import check_dataset_arg

    check_dataset_arg(args.dataset_name, "prepare")
    if args.output_path is None:
        raise ValueError("`trl-realign prepare` needs `--output_path` (a .jsonl/.json/.parquet file or a folder).")
    if preparation_args.dataset_preparation is None:
        raise ValueError(
            "Choose the preparation with `--dataset_preparation` (openr1_math, openr1_short_cot, ultrafeedback)."
        )
    if preparation_args.dataset_preparation != "ultrafeedback" and args.tokenizer_name_or_path is None:
        raise ValueError(
            f"`{preparation_args.dataset_preparation}` needs `--tokenizer_name_or_path` (the model's tokenizer)."
        )


def run(argv: list[str]) -> None:
    from ..data.loading import load_dataset_source
    from ..data.prepare import prepare_dataset
    from .parsing import parse_command_line

    args, preparation_args = parse_command_line(make_parser(), "prepare", argv, allow_launcher=False).args
    check(args, preparation_args)
    tokenizer = None
    if args.tokenizer_name_or_path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    dataset = load_dataset_source(args.dataset_name, config=args.dataset_config)[args.dataset_split]
    prepared = prepare_dataset(dataset, preparation_args, tokenizer, seed=args.seed)
    suffix = os.path.splitext(args.output_path)[1].lower()
    if suffix in (".jsonl", ".json"):
        prepared.to_json(args.output_path, force_ascii=False)  # JSON lines, which the json loader also reads
    elif suffix == ".parquet":
        prepared.to_parquet(args.output_path)
    else:
        prepared.save_to_disk(args.output_path)
    print(f"Wrote {len(prepared)} rows (from {len(dataset)} raw rows) to {args.output_path}.")
