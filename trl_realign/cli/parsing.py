"""Argument handling shared by the subcommands: TrlParser conventions, strict checks before any model loads."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from .._compat import parser_actions
from .errors import MissingPathError, RefusedInputError, UsageError, UserError, raise_usage_errors, refused_inputs


@dataclass
class ParsedCommand:
    """What a subcommand needs after parsing: its dataclasses, and how (if at all) to relaunch under accelerate."""

    args: tuple
    launch_args: list[str]
    script_args: list[str]
    # Said once the checks have passed (a note before an error would make the error two lines)
    note: str | None = None


def check_config_file(argv: list[str]) -> dict | None:
    """The YAML recipe named by `--config`, read (`None` without one), or a one-line error if it cannot be."""
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise UsageError("`--config` needs the path of a YAML recipe", "pass it as `--config recipe.yaml`")
    path = argv[index + 1]
    if not os.path.isfile(path):
        raise MissingPathError(f"config file {path!r} not found", "pass the path of a YAML recipe to `--config`")
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _bf16_supported() -> bool:
    """Whether the machine has bf16 as `TrainingArguments` tests it: a GPU or XLA device with bf16 (use_cpu aside)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return is_torch_bf16_gpu_available() or is_torch_xla_available()


def _given(argv: list[str], recipe: dict | None, option: str) -> bool:
    in_recipe = isinstance(recipe, dict) and option in recipe
    return in_recipe or any(token == f"--{option}" or token.startswith(f"--{option}=") for token in argv)


def _precision_default(parser, command: str, argv: list[str], recipe: dict | None) -> str | None:
    """
    TRL's configs default to bf16, which transformers refuses on a machine without bf16 (a CPU-only one): there the
    default becomes float32, and the returned note says so. bf16 asked for by a flag or the recipe stays an error.
    """
    action = next((action for action in parser_actions(parser) if action.dest == "bf16"), None)
    if action is None or _given(argv, recipe, "bf16") or _bf16_supported():
        return None
    action.default = False
    return (
        f"trl-realign {command}: this machine has no bf16 support (no GPU with bf16), so training runs in float32 "
        "instead of TRL's default bf16; pass `--bf16 true --use_cpu true` for bf16 on the CPU."
    )


def _refuse_bf16(parser, argv: list[str]) -> None:
    """After transformers refused the arguments: if bf16 is what this machine cannot run, say so and how to fix it."""
    from .launch import without_subsequence

    config = argv[argv.index("--config") : argv.index("--config") + 2] if "--config" in argv else []
    # The recipe's values are the parser's defaults by now; `parse_known_args` builds no dataclass, so transformers'
    # check does not run (and refuse) again
    namespace, _ = parser.parse_known_args(without_subsequence(argv, config))
    asks_bf16 = getattr(namespace, "bf16", False) or getattr(namespace, "bf16_full_eval", False)
    if asks_bf16 and not getattr(namespace, "use_cpu", False) and not _bf16_supported():
        raise RefusedInputError(
            "the recipe or the flags ask for bf16, which this machine does not support (it has no GPU with bf16)",
            "pass `--bf16 false` or set `bf16: false` in the recipe to train in float32, or pass `--use_cpu true` "
            "for bf16 on the CPU",
        )


def parse_command_line(parser, command: str, argv: list[str], allow_launcher: bool = True) -> ParsedCommand:
    """
    Parse `argv` (flags and `--config recipe.yaml`, flags win) with a `TrlParser`.

    Unknown YAML keys are an error that lists them. Unconsumed command-line options must be `accelerate launch`
    options (when `allow_launcher`); they are returned apart, together with the arguments to run the subcommand again
    under the launcher. Every refusal is a [`~trl_realign.cli.errors.UserError`].
    """
    from .launch import split_launcher_args, without_subsequence

    argv = list(argv)
    raise_usage_errors(parser, command)
    with refused_inputs(command):
        recipe = check_config_file(argv)
        note = _precision_default(parser, command, argv, recipe)
        try:
            # The config dataclasses warn about defaults no option can change (transformers deprecates
            # `gradient_checkpointing`, which TRL's configs set): noise in front of every output or one-line error
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                *args, config_remaining, cli_remaining = parser.parse_args_and_config(
                    argv, return_remaining_strings=True, separate_remaining_strings=True
                )
        except UserError:
            raise
        except ValueError:
            _refuse_bf16(parser, argv)
            raise
    if config_remaining:
        keys = [token[2:] for token in config_remaining[::2]]
        raise UsageError(
            f"unknown keys in the YAML recipe for `trl-realign {command}`: {keys}",
            f"remove them or fix their spelling, `trl-realign {command} --help` lists every option; launcher options "
            "such as `num_processes` go on the command line",
        )
    if cli_remaining and not allow_launcher:
        raise UsageError(f"unknown arguments for `trl-realign {command}`: {cli_remaining}", "see `--help`")
    launch_args = split_launcher_args(cli_remaining, command)
    return ParsedCommand(tuple(args), launch_args, without_subsequence(argv, cli_remaining), note)


def parse_and_check(parser, command: str, argv: list[str], check, allow_launcher: bool = False) -> ParsedCommand:
    """[`parse_command_line`], then `check(*args)`, the command's cheap checks, with their refusals one-line errors."""
    parsed = parse_command_line(parser, command, argv, allow_launcher=allow_launcher)
    with refused_inputs(command):
        check(*parsed.args)
    return parsed


def check_required(command: str, required: dict[str, tuple[object, str]]) -> None:
    """`required` maps options to (value, what it is): name every one left unset, in one line."""
    missing = [f"{what} (`--{option}`)" for option, (value, what) in required.items() if value is None]
    if missing:
        needs = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        how = "pass it as a flag" if len(missing) == 1 else "pass them as flags"
        raise UsageError(f"`trl-realign {command}` needs {needs}", f"{how}, or in a YAML recipe: `--config FILE`")


def check_models_and_data(command: str, script_args, model_args, training_args=None) -> None:
    """
    The model(s) and data of a training command: all that are unset named in one error, then folders and files
    checked. With `training_args`, the command also needs the aligned model B (TrRa); without, the model to adapt.
    """
    model = "the reference model A" if training_args is not None else "the base or expanded model"
    required = {"model_name_or_path": (model_args.model_name_or_path, model)}
    if training_args is not None:
        required["aligned_model_name_or_path"] = (training_args.aligned_model_name_or_path, "the aligned model B")
    required["dataset_name"] = (script_args.dataset_name, "training data")
    check_required(command, required)
    for option, (path, what) in required.items():
        if option != "dataset_name":
            check_model_arg(path, command, what, option)
    check_dataset_arg(script_args.dataset_name, command)


def check_dataset_arg(dataset_name: str | None, command: str) -> None:
    from ..data.loading import check_dataset_source

    check_required(command, {"dataset_name": (dataset_name, "training data: a hub id, a folder or a data file")})
    with refused_inputs(command):
        check_dataset_source(dataset_name)


def check_model_arg(
    model_name_or_path: str | None, command: str, what: str = "the model", option: str = "model_name_or_path"
) -> None:
    check_required(command, {option: (model_name_or_path, f"{what}: a hub id or a folder")})
    if (model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1) and not os.path.isdir(
        os.path.expanduser(model_name_or_path)
    ):
        raise MissingPathError(
            f"model folder {model_name_or_path!r} ({what}) does not exist",
            f"pass an existing folder or a hub id to `--{option}`",
        )
