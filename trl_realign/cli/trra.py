"""`trl-realign trra`: training-time realignment from a YAML recipe or flags (TrlParser conventions)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class TrRaScriptArguments:
    """Script options beyond `TrRaConfig`: which iterations of TrRa-iter to run."""

    trra_iterations: int = field(
        default=1, metadata={"help": "TrRa-iter: number of iterations (each uses the last result as aligned model)."}
    )


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..trainers import TrRaConfig

    dataclass_types = (ScriptArguments, TrRaConfig, ModelConfig, TrRaScriptArguments)
    if subparsers is not None:
        return subparsers.add_parser("trra", help="Training-time realignment (TrRa)", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


def main(script_args, training_args, model_args, trra_args):
    from datasets import load_dataset
    from trl import get_peft_config

    from ..trainers import TrRaTrainer, train_trra_iterations

    if model_args.model_name_or_path is None:
        raise ValueError("Pass the reference model A as `--model_name_or_path` (or `model_name_or_path:` in YAML).")
    if script_args.dataset_name is None:
        raise ValueError("Pass the training data as `--dataset_name` (a hub id or a local folder).")
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    train_dataset = dataset[script_args.dataset_train_split]
    eval_dataset = dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None

    if trra_args.trra_iterations > 1:
        train_trra_iterations(
            model_args.model_name_or_path,
            training_args.aligned_model_name_or_path,
            training_args,
            trra_args.trra_iterations,
            train_dataset,
            eval_dataset=eval_dataset,
        )
        return
    trainer = TrRaTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
