"""`trl-realign onpolicy`: on-policy TrRa (the student samples, the fused two-model teacher scores) from a recipe."""

from __future__ import annotations


def make_parser(subparsers=None, prog: str | None = None):
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..data.prepare import DatasetPreparationArguments
    from ..trainers import OnPolicyTrRaConfig
    from .launch import LAUNCHER_EPILOG

    dataclass_types = (ScriptArguments, OnPolicyTrRaConfig, ModelConfig, DatasetPreparationArguments)
    if subparsers is not None:
        return subparsers.add_parser("onpolicy", help="On-policy TrRa", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=__doc__, epilog=LAUNCHER_EPILOG)


def check(script_args, training_args, model_args, preparation_args) -> None:
    from .parsing import check_models_and_data

    check_models_and_data("onpolicy", script_args, model_args, training_args)


def main(script_args, training_args, model_args, preparation_args=None):
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from ..data.prepare import DatasetPreparationArguments
    from ..trainers import OnPolicyTrRaTrainer
    from .training import load_training_data, set_model_init_kwargs, train_and_save

    set_model_init_kwargs(training_args, model_args)
    preparation_args = preparation_args or DatasetPreparationArguments()
    train_dataset, eval_dataset = load_training_data(
        "onpolicy", script_args, preparation_args, training_args, model_args.model_name_or_path
    )
    # TRL's DistillationTrainer pads prompts on the left for generation
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, padding_side="left", truncation_side="left"
    )
    trainer = OnPolicyTrRaTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    train_and_save(trainer, training_args)


def run(argv: list[str]) -> None:
    from .training import run_training_command

    run_training_command("onpolicy", make_parser(prog="trl-realign onpolicy"), argv, check, main)
