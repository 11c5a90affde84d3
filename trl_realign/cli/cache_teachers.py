"""`trl-realign cache-teachers`: run a TrRa recipe's teachers A and B once over its data and store their hidden states.

`trl-realign trra --config recipe.yaml --teacher_cache DIR` (and every point of `trl-realign sweep`) then trains from
the cache without loading either teacher. Takes the same recipe and flags as `trl-realign trra`.
"""

from __future__ import annotations


def make_parser(prog: str | None = None):
    from .trra import make_parser as make_trra_parser

    parser = make_trra_parser(prog=prog)
    parser.description = __doc__
    return parser


def check(script_args, training_args, model_args, trra_args, preparation_args) -> None:
    from .parsing import check_models_and_data, check_required

    check_models_and_data("cache-teachers", script_args, model_args, training_args)
    check_required("cache-teachers", {"teacher_cache": (training_args.teacher_cache, "the folder to write")})


def main(script_args, training_args, model_args, trra_args, preparation_args=None):
    from ..data.prepare import DatasetPreparationArguments
    from ..trainers import build_teacher_cache
    from .training import load_training_data, set_model_init_kwargs

    set_model_init_kwargs(training_args, model_args)
    train_dataset, eval_dataset = load_training_data(
        "cache-teachers", script_args, preparation_args or DatasetPreparationArguments(), training_args,
        model_args.model_name_or_path,
    )
    directory = build_teacher_cache(
        model_args.model_name_or_path,
        training_args.aligned_model_name_or_path,
        training_args,
        train_dataset,
        eval_dataset,
    )
    from accelerate import PartialState

    from ..trainers.teacher_cache_capture import describe_teacher_cache

    if PartialState().is_main_process:
        print(describe_teacher_cache(directory))


def run(argv: list[str]) -> None:
    from .training import run_training_command

    run_training_command("cache-teachers", make_parser(prog="trl-realign cache-teachers"), argv, check, main)
