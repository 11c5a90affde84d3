"""`trl-realign sweep`: a grid or random sweep over λ, β, learning rate, ... (one wandb run per point, one group)."""

from __future__ import annotations

import importlib

from .._compat import parser_actions


def make_parser(prog: str | None = "trl-realign sweep"):
    from trl import TrlParser

    from ..sweep import SweepConfig
    from .launch import LAUNCHER_EPILOG

    epilog = LAUNCHER_EPILOG + " They apply to every point."
    return TrlParser((SweepConfig,), prog=prog, description=__doc__, epilog=epilog)


def check(config) -> None:
    """Every swept or overridden key must be an option of the training command, checked before anything trains."""
    command_parser = importlib.import_module(f".{config.command}", __package__).make_parser(prog=None)
    options = {action.dest for action in parser_actions(command_parser)}
    unknown = sorted((set(config.parameters) | set(config.overrides)) - options)
    if unknown:
        raise ValueError(
            f"The sweep sets {unknown}, which are not options of `trl-realign {config.command}` "
            f"(see `trl-realign {config.command} --help`)."
        )


def run(argv: list[str]) -> None:
    import yaml

    from ..sweep import run_sweep, to_wandb_sweep
    from .parsing import parse_command_line

    parsed = parse_command_line(make_parser(), "sweep", argv)
    (config,) = parsed.args
    check(config)
    if config.export_wandb_sweep is not None:
        with open(config.export_wandb_sweep, "w") as f:
            yaml.safe_dump(to_wandb_sweep(config), f, sort_keys=False)
        print(f"Wrote the wandb sweep to {config.export_wandb_sweep}: run `wandb sweep {config.export_wandb_sweep}`, "
              "then `wandb agent <sweep id>`.")  # fmt: skip
        return
    run_sweep(config, launch_args=parsed.launch_args)
