"""`trl-realign trra`: training-time realignment (TrRa, TrRa-iter) from a YAML recipe or flags."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrRaScriptArguments:
    """Script options beyond `TrRaConfig`: how many iterations of TrRa-iter to run."""

    trra_iterations: int = field(
        default=1, metadata={"help": "TrRa-iter: number of iterations (each uses the last result as aligned model)."}
    )


def make_parser(subparsers=None, prog: str | None = None):
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..data.prepare import DatasetPreparationArguments
    from ..trainers import TrRaConfig
    from .launch import LAUNCHER_EPILOG

    dataclass_types = (ScriptArguments, TrRaConfig, ModelConfig, TrRaScriptArguments, DatasetPreparationArguments)
    if subparsers is not None:
        return subparsers.add_parser("trra", help="Training-time realignment (TrRa)", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=__doc__, epilog=LAUNCHER_EPILOG)


def check(script_args, training_args, model_args, trra_args, preparation_args) -> None:
    from .errors import RefusedInputError, UsageError
    from .parsing import check_models_and_data

    check_models_and_data("trra", script_args, model_args, training_args)
    if training_args.teacher_cache and trra_args.trra_iterations == 1:
        from ..data.teacher_cache import TeacherCache

        TeacherCache(training_args.teacher_cache)  # missing, incomplete or of another format: refused before loading
    if trra_args.trra_iterations < 1:
        raise UsageError(f"`trra_iterations` must be at least 1, got {trra_args.trra_iterations}", "pass 1 or more")
    if trra_args.trra_iterations > 1 and (model_args.use_peft or training_args.resume_from_checkpoint):
        raise RefusedInputError(
            "`--trra_iterations > 1` trains full models from A in every iteration and cannot resume one",
            "drop `--use_peft` / `--resume_from_checkpoint`, or run the iterations one by one with "
            "`--trra_iterations 1`, passing the previous result as `--aligned_model_name_or_path`",
        )


def main(script_args, training_args, model_args, trra_args, preparation_args=None):
    from trl import get_peft_config

    from ..data.prepare import DatasetPreparationArguments
    from ..trainers import TrRaTrainer, train_trra_iterations
    from .training import load_training_data, set_model_init_kwargs, train_and_save

    set_model_init_kwargs(training_args, model_args)
    preparation_args = preparation_args or DatasetPreparationArguments()
    train_dataset, eval_dataset = load_training_data(
        "trra", script_args, preparation_args, training_args, model_args.model_name_or_path
    )
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
    train_and_save(trainer, training_args)


def run(argv: list[str]) -> None:
    from .training import run_training_command

    run_training_command("trra", make_parser(prog="trl-realign trra"), argv, check, main)
