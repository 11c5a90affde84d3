"""The `trl-realign` console script."""

from __future__ import annotations

import argparse
import sys


def _quickstart(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="trl-realign quickstart",
        description="Offline TrRa demo on a synthetic arithmetic task: trains tiny models A and B on CPU, then TrRa "
        "students at several λ, and prints a table like the paper's Table 1.",
    )
    parser.add_argument("--output_dir", default="quickstart_output", help="Where the table and models are written.")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0], help="λ of the students.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from ..quickstart import run_quickstart

    run_quickstart(output_dir=args.output_dir, lambdas=tuple(args.lambdas), seed=args.seed)


def _trra(argv: list[str]) -> None:
    from .trra import main, make_parser

    parser = make_parser(prog="trl-realign trra")
    main(*parser.parse_args_and_config(argv))


COMMANDS = {
    "quickstart": (_quickstart, "offline TrRa demo with a Table-1-style summary"),
    "trra": (_trra, "training-time realignment from a YAML recipe (--config) or flags"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<12}{help_}" for name, (_, help_) in COMMANDS.items())
        message = f"usage: trl-realign <command> [options]\n\ncommands:\n{lines}\n"
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"trl-realign: unknown command {argv[0]!r}\n\n{message}")
        print(message)
        return
    command, _ = COMMANDS[argv[0]]
    command(argv[1:])


if __name__ == "__main__":
    main()
