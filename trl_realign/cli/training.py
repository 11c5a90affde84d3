"""What every training subcommand does around its trainer: parse, check, relaunch under accelerate, load the data."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .launch import relaunch
from .parsing import parse_and_check


def run_training_command(
    command: str,
    parser,
    argv: list[str],
    check: Callable[..., None],
    train: Callable[..., None],
) -> None:
    """
    Parse `argv`, run the cheap checks in `check(*args)` (files exist, required options are set), then either run
    the same subcommand under `accelerate launch` (when launcher options were given) or train in this process.

    Under `wandb agent` the swept values from `wandb.config` replace the parsed ones before training.
    """
    import torch.distributed

    from ..sweep import apply_wandb_sweep_config

    parsed = parse_and_check(parser, command, argv, check, allow_launcher=True)
    if parsed.note is not None:
        print(parsed.note, file=sys.stderr, flush=True)
    if parsed.launch_args:
        relaunch(command, parsed.script_args, parsed.launch_args)
        return
    train(*apply_wandb_sweep_config(parsed.args))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Otherwise gloo's threads can outlive the interpreter and abort a process at exit
        torch.distributed.destroy_process_group()


def load_training_data(
    command: str, script_args, preparation_args, training_args, tokenizer_name_or_path: str | None
):
    """
    Load `script_args.dataset_name` (hub id, folder or file) and apply the dataset preparation to its train and test
    splits. The main process prepares first so that the other processes reuse its `datasets` cache.

    Returns:
        `(train_dataset, eval_dataset)`; `eval_dataset` is `None` unless evaluation is enabled.
    """
    from accelerate import PartialState

    from ..data.loading import load_dataset_source
    from ..data.prepare import prepare_dataset
    from .errors import RefusedInputError, refused_inputs

    data_fix = "check `--dataset_name` and the `--dataset_preparation` options"
    with refused_inputs(command, data_fix):
        dataset = load_dataset_source(script_args.dataset_name, config=script_args.dataset_config)
    if script_args.dataset_train_split not in dataset:
        raise RefusedInputError(
            f"split {script_args.dataset_train_split!r} not found in {script_args.dataset_name!r} (it has "
            f"{list(dataset)})",
            "set `--dataset_train_split`",
        )
    tokenizer = None
    if preparation_args.dataset_preparation not in (None, "ultrafeedback"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    with PartialState().main_process_first(), refused_inputs(command, data_fix):
        seed = training_args.seed
        train_dataset = prepare_dataset(dataset[script_args.dataset_train_split], preparation_args, tokenizer, seed)
        eval_dataset = None
        if training_args.eval_strategy != "no":
            eval_dataset = prepare_dataset(dataset[script_args.dataset_test_split], preparation_args, tokenizer, seed)
    return train_dataset, eval_dataset


def set_model_init_kwargs(training_args, model_args) -> None:
    """Pass `ModelConfig`'s loading options (revision, attention implementation, dtype) to the trainer."""
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }


def check_no_model_lora(model_args, command: str) -> None:
    from .errors import RefusedInputError

    if model_args.use_peft:
        raise RefusedInputError(
            f"`trl-realign {command}` trains the layer adapter, and `use_peft` would put LoRA on the frozen original "
            "layers",
            "for LoRA on the adapter set `adapter_lora: true` (and `adapter_lora_r`, ...) instead of `use_peft`",
        )


def check_expanded_under_zero3(model_name_or_path: str, command: str) -> None:
    """
    ZeRO-3 partitions weights as they load, so the trainer cannot copy a layer to build the adapter: training must
    start from an expanded checkpoint. Checked on the config alone, before any weight loads.
    """
    from transformers import AutoConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from ..modeling.adapter import get_layer_adapter_config
    from .errors import RefusedInputError

    if not is_deepspeed_zero3_enabled():
        return
    if get_layer_adapter_config(AutoConfig.from_pretrained(model_name_or_path)) is None:
        raise RefusedInputError(
            f"under DeepSpeed ZeRO-3, `trl-realign {command}` needs an expanded checkpoint (weights are sharded at "
            "load, so the adapter layer cannot be copied then)",
            f"run `trl-realign expand --model_name_or_path {model_name_or_path} --output_dir <folder>` and train from "
            "`<folder>`",
        )


def train_and_save(trainer, training_args) -> None:
    """Train (resuming when asked) and write the final model with its tokenizer to `output_dir`."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)  # writes the tokenizer too
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
