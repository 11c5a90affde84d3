"""
How a `trl-realign` command reports an expected failure: one line on stderr, `trl-realign <command>: error: <what>
(<the fix>)`, exit status 2 for a usage error and 1 otherwise; `--debug` or `TRL_REALIGN_DEBUG=1` adds the traceback.

Expected failures are the [`UserError`]s the CLI's own checks raise, and the `ValueError`, `TypeError` and
`FileNotFoundError` raised inside a [`refused_inputs`] block, which holds only parsing, the checks and data loading,
before any model loads. Everything else (a bug, a failure while loading or training) keeps its traceback.

Each `UserError` is also the built-in exception it stands for (`ValueError`, `FileNotFoundError`), so code that calls
the commands in-process catches what it caught before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback


DEBUG_FLAG = "--debug"
DEBUG_ENV = "TRL_REALIGN_DEBUG"


class UserError(Exception):
    """A failure the user can fix: `what` went wrong and `fix`, how to put it right."""

    exit_code = 1

    def __init__(self, what: str, fix: str):
        what, fix = what.strip().rstrip("."), fix.strip().rstrip(".")
        super().__init__(f"{what} ({fix})")
        self.what, self.fix = what, fix


class UsageError(UserError, ValueError):
    """A missing, unknown or malformed option (argparse's own errors included): exit status 2, as argparse's."""

    exit_code = 2


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named on the command line or in the recipe does not exist."""


class RefusedInputError(UserError, ValueError):
    """A value the checks refuse, or a setting this machine cannot run."""


class RefusedTypeError(UserError, TypeError):
    """An input of a type the checks refuse."""


class MissingExtraError(UserError, ImportError):
    """An option needs an optional dependency that is not installed."""


_CONVERTED = ((FileNotFoundError, MissingPathError), (ValueError, RefusedInputError), (TypeError, RefusedTypeError))


@contextlib.contextmanager
def refused_inputs(command: str, fix: str | None = None):
    """
    Within this block, the `ValueError`, `TypeError` and `FileNotFoundError` raised by checks (ours, or those of the
    config dataclasses of TRL and transformers) are the user's inputs being refused: they become [`UserError`]s that
    keep the message, with `fix` (by default: the command's help). Keep only work that runs before any model loads.
    """
    try:
        yield
    except UserError:
        raise
    except tuple(builtin for builtin, _ in _CONVERTED) as error:
        converted = next(user_error for builtin, user_error in _CONVERTED if isinstance(error, builtin))
        raise converted(" ".join(str(error).split()), fix or f"see `trl-realign {command} --help`") from error


def debugging(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether `--debug` (anywhere in `argv`) or `TRL_REALIGN_DEBUG` asks for tracebacks, and `argv` without it."""
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false")
    return debug, [token for token in argv if token != DEBUG_FLAG]


def report(error: UserError, command: str | None, debug: bool) -> int:
    """Write `error` to stderr as one line (after its traceback under `debug`) and return the exit status."""
    if debug:
        traceback.print_exception(error)
    prefix = "trl-realign" if command is None else f"trl-realign {command}"
    print(f"{prefix}: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return error.exit_code


def raise_usage_errors(parser, command: str):
    """Make `parser` raise a [`UsageError`] where argparse would print its usage and a second line, then exit."""

    def error(message: str):
        raise UsageError(message, f"see `trl-realign {command} --help`")

    parser.error = error
    return parser
