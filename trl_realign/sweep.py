"""
Hyperparameter sweeps over realignment settings (λ, β, learning rate, ...): their configuration, their points and each
point's arguments, the same sweep for `wandb sweep` / `wandb agent`, and what a training command does under the agent.
`trl-realign sweep` ([`~trl_realign.cli.sweep.run_sweep`]) runs the points, one wandb run each in one group.

The sweep file uses wandb's sweep vocabulary (`method`, `parameters` with `values` / `value` / `min`+`max` +
`distribution`), so one file serves both ways of running it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any


SWEEP_METHODS = ("grid", "random")
TRAINING_COMMANDS = ("trra", "sft", "dpo")
# What a TrRa sweep may vary while its teachers see the same rows, so that every point trains from one teacher cache
# (the data, tokenizer, preprocessing and the teachers themselves are fixed by the recipe)
CACHE_SAFE_KEYS = frozenset({
    "realign_lambda", "beta", "divergence", "temperature", "learning_rate", "seed", "data_seed", "max_steps",
    "num_train_epochs", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "gradient_accumulation_steps",
    "per_device_train_batch_size", "loss_token_chunk_size", "loss_vocab_chunk_size", "logging_steps", "save_steps",
    "eval_steps", "save_strategy", "eval_strategy", "disable_dropout",
})  # fmt: skip


@dataclass
class SweepConfig:
    r"""
    Configuration of `trl-realign sweep`.

    Parameters:
        command (`str`): training subcommand run at every point: `"trra"`, `"sft"` or `"dpo"`.
        recipe (`str`, *optional*): YAML recipe every point starts from (passed as `--config`).
        method (`str`, defaults to `"grid"`): `"grid"` (every combination of `values`) or `"random"` (`count` draws).
        parameters (`dict`): swept options, each `{values: [...]}`, `{value: x}` or, for random sweeps,
            `{min: a, max: b, distribution: uniform | log_uniform_values}`. Keys are options of the training command.
        count (`int`, *optional*): number of points of a random sweep.
        seed (`int`, defaults to `0`): seed of the random draws.
        overrides (`dict`, *optional*): options applied to every point (e.g. `{max_steps: 50}`).
        group (`str`, *optional*): wandb group of the runs; defaults to the last part of `output_dir`.
        project (`str`, *optional*): wandb project (`WANDB_PROJECT`).
        output_dir (`str`, defaults to `"sweeps/sweep"`): each point trains into `{output_dir}/{run name}`.
        metric (`str`, defaults to `"train/loss"`): metric the exported wandb sweep minimises.
        export_wandb_sweep (`str`, *optional*): write the sweep as a wandb sweep YAML to this path instead of running.
        dry_run (`bool`, defaults to `False`): print the command of every point without running it.
        teacher_cache (`bool`, defaults to `True`): for `trra`, capture the two teachers once
            (`trl-realign cache-teachers`) and train every point from that cache, when every swept key is one that
            leaves the teachers' inputs unchanged (λ, β, divergence, temperature, learning rate, seed, steps, ...).
        teacher_cache_dir (`str`, *optional*): where that cache goes; defaults to `{output_dir}/teacher_cache`.
    """

    command: str = field(
        default="trra", metadata={"help": "Training subcommand of every point.", "choices": list(TRAINING_COMMANDS)}
    )
    recipe: str | None = field(default=None, metadata={"help": "YAML recipe every point starts from."})
    method: str = field(default="grid", metadata={"help": "Sweep method.", "choices": list(SWEEP_METHODS)})
    parameters: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Swept options (JSON on the command line): {name: {values: [...]} | {value: x} | "
                  "{min: a, max: b, distribution: uniform|log_uniform_values}}."},
    )
    count: int | None = field(default=None, metadata={"help": "Number of points of a random sweep."})
    seed: int = field(default=0, metadata={"help": "Seed of the random draws."})
    overrides: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Options applied to every point (JSON on the command line)."}
    )
    group: str | None = field(default=None, metadata={"help": "wandb group of the runs (default: output_dir's name)."})
    project: str | None = field(default=None, metadata={"help": "wandb project (sets WANDB_PROJECT)."})
    output_dir: str = field(default="sweeps/sweep", metadata={"help": "Parent folder of the points' output_dir."})
    metric: str = field(default="train/loss", metadata={"help": "Metric the exported wandb sweep minimises."})
    export_wandb_sweep: str | None = field(
        default=None, metadata={"help": "Write a wandb sweep YAML (for `wandb sweep`) here instead of running."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print each point's command without running it."})
    teacher_cache: bool = field(
        default=True,
        metadata={"help": "trra: capture the teachers once and train every point from the cache (when the swept keys "
                  "leave the teachers' inputs unchanged); false runs the teachers live at every point."},
    )
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the sweep's teacher cache goes (default: {output_dir}/teacher_cache)."}
    )

    def __post_init__(self):
        if isinstance(self.parameters, str):
            self.parameters = json.loads(self.parameters)
        if isinstance(self.overrides, str):
            self.overrides = json.loads(self.overrides)
        self.overrides = dict(self.overrides or {})
        if self.command not in TRAINING_COMMANDS:
            raise ValueError(f"Unknown sweep `command={self.command!r}`; choose one of {list(TRAINING_COMMANDS)}.")
        if self.method not in SWEEP_METHODS:
            raise ValueError(f"Unknown sweep `method={self.method!r}`; choose one of {list(SWEEP_METHODS)}.")
        if not self.parameters or not isinstance(self.parameters, dict):
            raise ValueError("A sweep needs `parameters`, e.g. `parameters: {realign_lambda: {values: [0.5, 2, 5]}}`.")
        for name, spec in self.parameters.items():
            _check_spec(name, spec, self.method)
        if self.method == "random" and (self.count is None or self.count < 1):
            raise ValueError("A random sweep needs `count`, the number of points to draw (a positive integer).")
        if self.recipe is not None and not os.path.isfile(self.recipe):
            raise FileNotFoundError(f"Sweep recipe {self.recipe!r} not found.")
        reserved = {"output_dir", "run_name"} & (set(self.parameters) | set(self.overrides))
        if reserved:
            raise ValueError(f"{sorted(reserved)} are set per point by the sweep; use the sweep's `output_dir`.")
        if self.group is None:
            self.group = os.path.basename(os.path.normpath(self.output_dir))


def _check_spec(name: str, spec, method: str) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"Sweep parameter {name!r} must be a mapping such as {{values: [...]}}, got {spec!r}.")
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ValueError(f"Sweep parameter {name!r}: `values` must be a non-empty list.")
    elif "value" in spec:
        pass
    elif "min" in spec and "max" in spec:
        if method == "grid":
            raise ValueError(f"Sweep parameter {name!r}: a grid sweep needs `values`, not a `min`/`max` range.")
        distribution = spec.get("distribution", "uniform")
        if distribution not in ("uniform", "log_uniform_values"):
            raise ValueError(
                f"Sweep parameter {name!r}: distribution {distribution!r} is not supported locally; use 'uniform' or "
                "'log_uniform_values'."
            )
        low, high = float(spec["min"]), float(spec["max"])
        if not low < high or (distribution == "log_uniform_values" and low <= 0):
            raise ValueError(f"Sweep parameter {name!r}: need 0 < min < max (min < max for 'uniform').")
    else:
        raise ValueError(f"Sweep parameter {name!r} needs `values`, `value`, or `min` and `max`.")


def sweep_points(config: SweepConfig) -> list[dict[str, Any]]:
    """The points of the sweep, in order: the cartesian product of `values` (grid) or `count` seeded draws (random)."""
    names = list(config.parameters)
    if config.method == "grid":
        specs = [config.parameters[n] for n in names]
        choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in specs]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    rng = random.Random(config.seed)
    points = []
    for _ in range(config.count):
        point = {}
        for name in names:
            spec = config.parameters[name]
            if "values" in spec:
                point[name] = rng.choice(spec["values"])
            elif "value" in spec:
                point[name] = spec["value"]
            elif spec.get("distribution", "uniform") == "log_uniform_values":
                point[name] = math.exp(rng.uniform(math.log(float(spec["min"])), math.log(float(spec["max"]))))
            else:
                point[name] = rng.uniform(float(spec["min"]), float(spec["max"]))
        points.append(point)
    return points


def _flags(options: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def sweep_teacher_cache(config: SweepConfig) -> tuple[str | None, str]:
    """`(folder, why)`: the teacher cache every point trains from, or `None` and why the teachers run live."""
    if config.command != "trra":
        return None, f"`{config.command}` has no teachers to cache"
    if "teacher_cache" in config.overrides:
        return config.overrides["teacher_cache"], "the overrides name it"
    if not config.teacher_cache:
        return None, "`teacher_cache: false`"
    unsafe = sorted(set(config.parameters) - CACHE_SAFE_KEYS)
    if unsafe:
        return None, f"sweeping {unsafe} may change what the teachers see"
    return config.teacher_cache_dir or os.path.join(config.output_dir, "teacher_cache"), "captured once for the sweep"


def _base_args(config: SweepConfig) -> list[str]:
    args = ["--config", config.recipe] if config.recipe else []
    overrides = dict(config.overrides)
    overrides.setdefault("report_to", ["wandb"])
    cache, _ = sweep_teacher_cache(config)
    if cache is not None:
        overrides["teacher_cache"] = cache
    return args + _flags(overrides)


def capture_arguments(config: SweepConfig) -> list[str]:
    """Arguments of `trl-realign cache-teachers` for the sweep's cache (the recipe and overrides every point shares)."""
    return [*_base_args(config), "--output_dir", os.path.join(config.output_dir, "teacher_cache_capture")]


def run_name_of(config: SweepConfig, index: int, point: dict[str, Any]) -> str:
    """`{group}-{index}-{name}{value}-...`: unique and readable in the wandb UI."""
    parts = [f"{name}{value:.3g}" if isinstance(value, float) else f"{name}{value}" for name, value in point.items()]
    return "-".join([config.group, f"{index:02d}", *parts])


def point_arguments(config: SweepConfig, index: int, point: dict[str, Any]) -> list[str]:
    """Arguments of the training command for one point: recipe, overrides, the point, run name and output dir."""
    run_name = run_name_of(config, index, point)
    return [
        *_base_args(config), *_flags(point),
        "--run_name", run_name, "--output_dir", os.path.join(config.output_dir, run_name),
    ]  # fmt: skip


def to_wandb_sweep(config: SweepConfig) -> dict[str, Any]:
    """
    The same sweep as a wandb sweep configuration: `wandb sweep file.yaml` then `wandb agent <id>`. The agent starts
    `trl-realign <command> ...` without the swept values on the command line; the training entry point reads them
    from `wandb.config` (see [`apply_wandb_sweep_config`]).
    """
    sweep = {
        "name": config.group,
        "method": config.method,
        "metric": {"name": config.metric, "goal": "minimize"},
        "parameters": config.parameters,
        # Each agent run trains into `{output_dir}/{run id}` (see `apply_wandb_sweep_config`)
        "command": ["trl-realign", config.command, *_base_args(config), "--output_dir", config.output_dir],
    }  # fmt: skip
    if config.method == "random":
        sweep["run_cap"] = config.count
    return sweep


def wandb_sweep_config() -> tuple[dict[str, Any], str] | None:
    """
    The swept values and the run id when a wandb agent launched this process (`WANDB_SWEEP_ID` is set), else `None`.

    The main process starts the wandb run (which reads the agent's parameters) and the values are broadcast to the
    other processes, so that every rank trains with the same point. The run stays open; the Trainer's wandb callback
    logs into it.
    """
    if not os.environ.get("WANDB_SWEEP_ID"):
        return None
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    values = [None]
    if state.is_main_process:
        import wandb

        run = wandb.run or wandb.init()
        values = [(dict(run.config), run.id)]
    if state.num_processes > 1:
        broadcast_object_list(values)
    return values[0]


def apply_overrides(args: tuple, overrides: dict[str, Any]) -> tuple:
    """Replace fields of the parsed dataclasses by name (every key must be a field of one of them)."""
    remaining = dict(overrides)
    updated = []
    for obj in args:
        names = {f.name for f in dataclasses.fields(obj) if f.init}
        changes = {k: remaining.pop(k) for k in list(remaining) if k in names}
        updated.append(dataclasses.replace(obj, **changes) if changes else obj)
    if remaining:
        raise ValueError(f"The wandb sweep sets {sorted(remaining)}, which are not options of this command.")
    return tuple(updated)


def apply_wandb_sweep_config(args: tuple) -> tuple:
    """
    Under `wandb agent`: [`apply_overrides`] with the agent's values, and `output_dir` becomes `{output_dir}/{run id}`
    so that the sweep's runs do not overwrite each other. Unchanged otherwise.
    """
    sweep = wandb_sweep_config()
    if sweep is None:
        return args
    values, run_id = sweep
    args = apply_overrides(args, values)
    training_args = next((obj for obj in args if hasattr(obj, "output_dir") and hasattr(obj, "run_name")), None)
    if training_args is None:
        return args
    per_run = {
        "output_dir": os.path.join(training_args.output_dir, run_id),
        "run_name": training_args.run_name or run_id,
    }
    return tuple(dataclasses.replace(obj, **per_run) if obj is training_args else obj for obj in args)
