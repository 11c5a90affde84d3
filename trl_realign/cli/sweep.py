"""`trl-realign sweep`: a grid or random sweep over λ, β, learning rate, ... (one wandb run per point, one group)."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from ..sweep import SweepConfig

from .._compat import parser_actions
from .errors import UsageError


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
        raise UsageError(
            f"the sweep sets {unknown}, which are not options of `trl-realign {config.command}`",
            f"fix their spelling; `trl-realign {config.command} --help` lists the options",
        )


@contextlib.contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_sweep(config: SweepConfig, launch_args: list[str] | None = None) -> list[dict[str, Any]]:
    """
    Train one model per point, each logged as its own wandb run in the group `config.group`.

    Without launcher options the points run one after the other in this process: each point's wandb run is started
    here with its group, name and point as config, and the Trainer's wandb callback logs into it. With launcher
    options (e.g. `--num_processes 8 --accelerate_config zero3`) each point runs under `accelerate launch`, and the
    group reaches the launched processes through `WANDB_RUN_GROUP`.

    Returns:
        `list[dict]`: per point, `point`, `run_name`, `output_dir`, and for in-process runs the wandb `run_id`.
    """
    from ..sweep import capture_arguments, point_arguments, run_name_of, sweep_points, sweep_teacher_cache
    from .launch import relaunch
    from .main import run_command

    records = []
    cache, why = sweep_teacher_cache(config)
    print(f"[sweep {config.group}] teacher cache: {cache or 'none'} ({why})", flush=True)
    if cache is not None and "teacher_cache" not in config.overrides:
        capture = capture_arguments(config)
        if config.dry_run:
            print("  trl-realign " + " ".join(["cache-teachers", *capture]), flush=True)
        elif launch_args:
            relaunch("cache-teachers", capture, list(launch_args))
        else:
            run_command(["cache-teachers", *capture])
    with _environment(WANDB_RUN_GROUP=config.group, WANDB_PROJECT=config.project):
        for index, point in enumerate(sweep_points(config)):
            run_name = run_name_of(config, index, point)
            args = point_arguments(config, index, point)
            record = {"point": point, "run_name": run_name, "output_dir": os.path.join(config.output_dir, run_name),
                      "run_id": None}  # fmt: skip
            print(f"[sweep {config.group}] point {index}: {point}", flush=True)
            if config.dry_run:
                print("  trl-realign " + " ".join([config.command, *args]), flush=True)
            elif launch_args:
                relaunch(config.command, args, list(launch_args))
            else:
                import wandb

                run = wandb.init(
                    project=config.project, group=config.group, name=run_name, config=point, reinit="finish_previous"
                )
                record["run_id"] = run.id
                try:
                    run_command([config.command, *args])
                finally:
                    wandb.finish()
            records.append(record)
    return records


def run(argv: list[str]) -> None:
    import yaml

    from ..sweep import to_wandb_sweep
    from .parsing import parse_and_check

    parsed = parse_and_check(make_parser(), "sweep", argv, check, allow_launcher=True)
    (config,) = parsed.args
    if config.export_wandb_sweep is not None:
        from ..sweep import capture_arguments, sweep_teacher_cache

        with open(config.export_wandb_sweep, "w") as f:
            yaml.safe_dump(to_wandb_sweep(config), f, sort_keys=False)
        first = ""
        if sweep_teacher_cache(config)[0] is not None and "teacher_cache" not in config.overrides:
            first = f"`trl-realign cache-teachers {' '.join(capture_arguments(config))}` (the runs read its cache), "
        print(f"Wrote the wandb sweep to {config.export_wandb_sweep}: run {first}`wandb sweep "
              f"{config.export_wandb_sweep}`, then `wandb agent <sweep id>`.")  # fmt: skip
        return
    run_sweep(config, launch_args=parsed.launch_args)
