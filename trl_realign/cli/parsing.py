"""Argument handling shared by the subcommands: TrlParser conventions, strict checks before any model loads."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class ParsedCommand:
    """What a subcommand needs after parsing: its dataclasses, and how (if at all) to relaunch under accelerate."""

    args: tuple
    launch_args: list[str]
    script_args: list[str]


def check_config_file(argv: list[str]) -> None:
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("`--config` needs the path of a YAML recipe.")
        path = argv[index + 1]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file {path!r} not found. Pass the path of a YAML recipe to `--config`.")


def parse_command_line(parser, command: str, argv: list[str], allow_launcher: bool = True) -> ParsedCommand:
    """
    Parse `argv` (flags and `--config recipe.yaml`, flags win) with a `TrlParser`.

    Unknown YAML keys are an error that lists them. Unconsumed command-line options must be `accelerate launch`
    options (when `allow_launcher`); they are returned apart, together with the arguments to run the subcommand again
    under the launcher.
    """
    from .launch import split_launcher_args, without_subsequence

    argv = list(argv)
    check_config_file(argv)
    *args, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if config_remaining:
        keys = [token[2:] for token in config_remaining[::2]]
        raise ValueError(
            f"Unknown keys in the YAML recipe for `trl-realign {command}`: {keys}. Remove them or fix their spelling "
            f"(`trl-realign {command} --help` lists every option); launcher options such as `num_processes` go on "
            "the command line."
        )
    if cli_remaining and not allow_launcher:
        raise ValueError(f"Unknown arguments for `trl-realign {command}`: {cli_remaining}. See `--help`.")
    launch_args = split_launcher_args(cli_remaining, command)
    return ParsedCommand(tuple(args), launch_args, without_subsequence(argv, cli_remaining))


def check_dataset_arg(dataset_name: str | None, command: str) -> None:
    from ..data.loading import check_dataset_source

    if dataset_name is None:
        raise ValueError(
            f"`trl-realign {command}` needs training data: pass `--dataset_name` (a hub id, a local folder, or a "
            "local .json/.jsonl/.parquet file), or set `dataset_name:` in the recipe."
        )
    check_dataset_source(dataset_name)


def check_model_arg(model_name_or_path: str | None, command: str, what: str = "the model") -> None:
    if model_name_or_path is None:
        raise ValueError(f"`trl-realign {command}` needs {what}: pass `--model_name_or_path` (a hub id or a folder).")
    if (model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1) and not os.path.isdir(
        os.path.expanduser(model_name_or_path)
    ):
        raise FileNotFoundError(f"Model folder {model_name_or_path!r} does not exist.")
