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
    from .parsing import check_dataset_arg, check_required

    required = {
        "dataset_name": (args.dataset_name, "the raw data"),
        "output_path": (args.output_path, "where to write: a .jsonl/.json/.parquet file or a folder"),
        "dataset_preparation": (
            preparation_args.dataset_preparation, "the preparation: openr1_math, openr1_short_cot or ultrafeedback"
        ),
    }
    if preparation_args.dataset_preparation not in (None, "ultrafeedback"):
        required["tokenizer_name_or_path"] = (args.tokenizer_name_or_path, "the model's tokenizer")
    check_required("prepare", required)
    check_dataset_arg(args.dataset_name, "prepare")


def run(argv: list[str]) -> None:
    from ..data.loading import load_dataset_source
    from ..data.prepare import prepare_dataset
    from .errors import refused_inputs
    from .parsing import parse_and_check

    args, preparation_args = parse_and_check(make_parser(), "prepare", argv, check).args
    tokenizer = None
    if args.tokenizer_name_or_path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    with refused_inputs("prepare", "check `--dataset_name`, `--dataset_split` and the `--dataset_preparation` options"):
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
