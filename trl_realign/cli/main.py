"""The `trl-realign` console script: one module per subcommand, each with a `run(argv)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import DEBUG_ENV, RefusedInputError, UsageError, UserError, debugging, raise_usage_errors, report


def _quickstart(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="trl-realign quickstart",
        description="Offline demo on a synthetic arithmetic task, on CPU in a few minutes: trains tiny models A (long "
        "traces) and B (concise), TrRa students at several λ (a table like the paper's Table 1), then a layer adapter "
        "on A swept with InRa over λ (the paper's Figure 4 in miniature). Models are cached in --output_dir.",
    )
    parser.add_argument("--output_dir", default="quickstart_output", help="Where the table and models are written.")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0], help="λ of the students.")
    parser.add_argument(
        "--inra_lambdas", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
        help="λ of the InRa sweep (one model, all λ in one batch).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed of data, models and sampling.")
    parser.add_argument(
        "--verbose", action="store_true",
        help="Also show the libraries' output (progress bars of every model load and training run, logs, warnings).",
    )
    args = raise_usage_errors(parser, "quickstart").parse_args(argv)
    from ..quickstart import QuickstartSettings, run_quickstart

    settings = QuickstartSettings(inra_lambdas=tuple(args.inra_lambdas))
    run_quickstart(
        output_dir=args.output_dir, lambdas=tuple(args.lambdas), seed=args.seed, settings=settings, verbose=args.verbose
    )


# name -> (module under trl_realign.cli with a `run(argv)`, one-line help); modules are imported only when used,
# so `trl-realign --help` stays fast
COMMANDS = {
    "trra": ("trra", "training-time realignment (TrRa, TrRa-iter) from a YAML recipe (--config) or flags"),
    "onpolicy": ("onpolicy_trra", "on-policy TrRa: the student samples, the fused teacher of A and B scores (vLLM optional)"),
    "cache-teachers": ("cache_teachers", "capture a TrRa recipe's two teachers once (trra/sweep --teacher_cache DIR reuse it)"),
    "sft": ("sft", "layer-adapter SFT (InRa training): only the inserted bottom layer(s) learn"),
    "dpo": ("dpo", "layer-adapter DPO; the reference is the model with its adapter bypassed"),
    "expand": ("expand", "write an expanded checkpoint (L + n layers, identity adapter) for training under ZeRO-3"),
    "generate": ("generate", "generate with an InRa model at one or several --realign_lambda"),
    "eval": ("eval", "λ sweep evaluation: accuracy and generated tokens per λ, with plots"),
    "sweep": ("sweep", "grid/random sweep over λ, β, learning rate (one wandb run per point), or a wandb sweep YAML"),
    "prepare": ("prepare", "prepare OpenR1-Math / short-CoT / UltraFeedback data and write it to disk"),
    "quickstart": (None, "offline demo: a TrRa table and an InRa λ sweep on a synthetic task"),
}


def _usage() -> str:
    lines = "\n".join(f"  {name:<12}{help_}" for name, (_, help_) in COMMANDS.items())
    return (
        f"usage: trl-realign <command> [options]\n\ncommands:\n{lines}\n\n"
        "Every command takes --help, and --debug (or TRL_REALIGN_DEBUG=1) to show the traceback of an error. Training "
        "commands (trra, sft, dpo, sweep) read --config recipe.yaml and run under `accelerate launch` when given "
        "launcher options, e.g. --num_processes 8 --accelerate_config zero3."
    )


def run_command(argv: list[str]) -> None:
    """Run `trl-realign <argv>` in this process; expected failures raise [`~trl_realign.cli.errors.UserError`]."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] not in COMMANDS:
        raise UsageError(f"unknown command {argv[0]!r}", f"the commands are {', '.join(COMMANDS)}")
    module_name, _ = COMMANDS[argv[0]]
    if module_name is None:
        _quickstart(argv[1:])
        return
    importlib.import_module(f".{module_name}", __package__).run(argv[1:])


def main(argv: list[str] | None = None) -> None:
    """
    The console script: [`run_command`], with an expected failure reported as one line on stderr and exit status 2
    (usage) or 1 (see [`~trl_realign.cli.errors`]).
    """
    debug, argv = debugging(sys.argv[1:] if argv is None else list(argv))
    if debug:  # processes relaunched under `accelerate launch` inherit it
        os.environ[DEBUG_ENV] = "1"
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        run_command(argv)
    except UserError as error:
        sys.exit(report(error, command, debug))
    except ValueError as error:
        # A teacher cache refused while the trainer matches its data to it (after the models load) is still the
        # user's input. Its module is looked up, not imported: unimported, it raised nothing (and --help stays fast)
        cache_module = sys.modules.get("trl_realign.data.teacher_cache")
        if cache_module is None or not isinstance(error, cache_module.TeacherCacheError):
            raise
        what, _, fix = str(error).rstrip(".").rpartition("; ")
        sys.exit(report(RefusedInputError(what or fix, fix if what else "see the README's Teacher cache section"),
                        command, debug))


if __name__ == "__main__":
    main()
