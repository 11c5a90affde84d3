"""`trl-realign sft`: supervised fine-tuning of the layer adapter only (InRa training, paper §3.2 and §4.2)."""

from __future__ import annotations


def make_parser(prog: str | None = "trl-realign sft"):
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..data.prepare import DatasetPreparationArguments
    from ..trainers.layer_adapter_sft_config import LayerAdapterSFTConfig
    from .launch import LAUNCHER_EPILOG

    dataclass_types = (ScriptArguments, LayerAdapterSFTConfig, ModelConfig, DatasetPreparationArguments)
    return TrlParser(dataclass_types, prog=prog, description=__doc__, epilog=LAUNCHER_EPILOG)


def check(script_args, training_args, model_args, preparation_args) -> None:
    from .parsing import check_dataset_arg, check_model_arg
    from .training import check_no_model_lora

    check_model_arg(model_args.model_name_or_path, "sft", "the base or expanded model")
    check_dataset_arg(script_args.dataset_name, "sft")
    check_no_model_lora(model_args, "sft")


def main(script_args, training_args, model_args, preparation_args) -> None:
    from ..trainers.layer_adapter_sft_trainer import LayerAdapterSFTTrainer
    from .training import check_expanded_under_zero3, load_training_data, set_model_init_kwargs

    check_expanded_under_zero3(model_args.model_name_or_path, "sft")
    set_model_init_kwargs(training_args, model_args)
    train_dataset, eval_dataset = load_training_data(
        script_args, preparation_args, training_args, model_args.model_name_or_path
    )
    trainer = LayerAdapterSFTTrainer(
        model=model_args.model_name_or_path, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Expanded model with the trained adapter saved to {training_args.output_dir}.")


def run(argv: list[str]) -> None:
    from .training import run_training_command

    run_training_command("sft", make_parser(), argv, check, main)
