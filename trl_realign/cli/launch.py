"""
Launcher options of the training subcommands: `--num_processes 8 --accelerate_config zero3` re-runs the same subcommand
under `accelerate launch`, so a recipe runs on one process or on eight with the same command line.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from importlib import resources

from .._compat import parser_actions, require_deepspeed
from .errors import MissingExtraError, MissingPathError, UsageError


ACCELERATE_CONFIGS = ("zero2", "zero3", "zero3_offload")
# Options of `accelerate launch` that make no sense here: we always launch our own module
_NOT_PASSED_THROUGH = {"--help", "-h", "--module", "-m", "--no_python", "--no-python"}

LAUNCHER_EPILOG = (
    "Launcher options: with any of them the command re-runs itself under `accelerate launch`: --num_processes N, "
    "--config_file ACCELERATE_YAML, --accelerate_config {" + ",".join(ACCELERATE_CONFIGS) + "} (DeepSpeed configs "
    "that ship with trl-realign), and every other `accelerate launch` option (--main_process_port, "
    "--mixed_precision, ...)."
)


def accelerate_config_path(name: str) -> str:
    """Path of the accelerate config that ships with the package under `name` ("zero2", "zero3", "zero3_offload")."""
    if name not in ACCELERATE_CONFIGS:
        raise UsageError(
            f"unknown `--accelerate_config {name}`; the package ships {list(ACCELERATE_CONFIGS)}",
            "pass one of them, or your own accelerate config file with `--config_file path.yaml` instead",
        )
    try:
        require_deepspeed(f"`--accelerate_config {name}`")
    except ImportError as error:
        what = f"`--accelerate_config {name}` needs DeepSpeed, which is not installed"
        raise MissingExtraError(what, "`pip install 'trl-realign[deepspeed]'`") from error
    path = resources.files("trl_realign").joinpath("accelerate_configs", f"{name}.yaml")
    return str(path)


@functools.cache
def _launcher_actions() -> dict:
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    return {
        option: action
        for action in parser_actions(parser)
        for option in action.option_strings
        if option not in _NOT_PASSED_THROUGH
    }


def split_launcher_args(remaining: list[str], command: str) -> list[str]:
    """
    Check that the arguments the subcommand's parser did not consume are `accelerate launch` options (or
    `--accelerate_config NAME`) and return them as `accelerate launch` arguments, with `--accelerate_config`
    resolved to `--config_file <packaged yaml>`. Anything else is an error that names it.
    """
    actions = _launcher_actions()
    launch_args: list[str] = []
    i = 0
    while i < len(remaining):
        token = remaining[i]
        option, has_inline_value, inline_value = token.partition("=")
        if option == "--accelerate_config":
            value = inline_value if has_inline_value else (remaining[i + 1] if i + 1 < len(remaining) else None)
            if value is None:
                raise UsageError("`--accelerate_config` needs a value", "one of " + ", ".join(ACCELERATE_CONFIGS))
            launch_args += ["--config_file", accelerate_config_path(value)]
            i += 1 if has_inline_value else 2
            continue
        action = actions.get(option)
        if action is None or not option.startswith("-"):
            raise UsageError(
                f"unknown argument {token!r} for `trl-realign {command}`: it is neither an option of this command nor "
                "an `accelerate launch` option",
                f"check its spelling; `trl-realign {command} --help` lists the options",
            )
        takes_value = action.nargs != 0
        if takes_value and not has_inline_value:
            if i + 1 >= len(remaining):
                raise UsageError(f"`{option}` needs a value", f"pass it as `{option} VALUE`")
            value = remaining[i + 1]
            launch_args += [option, value]
            i += 2
        else:
            value = inline_value
            launch_args.append(token)
            i += 1
        if action.dest == "config_file" and not os.path.isfile(value):
            raise MissingPathError(
                f"accelerate config file {value!r} (`{option}`) not found", "pass the path of an existing file"
            )
    config_files = [a for a in launch_args if a.partition("=")[0] in ("--config_file", "--config-file")]
    if len(config_files) > 1:
        raise UsageError(
            "both `--accelerate_config` and `--config_file` given",
            "pass either `--accelerate_config NAME` or `--config_file FILE`, not both",
        )
    return launch_args


def without_subsequence(tokens: list[str], subsequence: list[str]) -> list[str]:
    """`tokens` with the ordered `subsequence` removed (the parser returns unconsumed tokens in their order)."""
    pending = iter(subsequence)
    current = next(pending, None)
    kept = []
    for token in tokens:
        if current is not None and token == current:
            current = next(pending, None)
        else:
            kept.append(token)
    return kept


def launch_command(command: str, script_args: list[str], launch_args: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `trl-realign <command> <script_args>` in every process."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", *launch_args,
        "-m", "trl_realign.cli.main", command, *script_args,
    ]  # fmt: skip


def relaunch(command: str, script_args: list[str], launch_args: list[str]) -> None:
    """Run the subcommand under `accelerate launch` and exit with its status (only the launcher options removed)."""
    env = dict(os.environ)
    # Left behind by an earlier DeepSpeed run in this process, it would switch DeepSpeed on for a plain launch
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    result = subprocess.run(launch_command(command, script_args, launch_args), env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)
