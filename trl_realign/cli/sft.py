"""`trl-realign sft`: see [`adapter_training`], which holds the adapter-training commands."""

from __future__ import annotations

from .adapter_training import SFT as _COMMAND


def make_parser(prog: str | None = "trl-realign sft"):
    return _COMMAND.make_parser(prog)


check, main, run = _COMMAND.check, _COMMAND.main, _COMMAND.run
