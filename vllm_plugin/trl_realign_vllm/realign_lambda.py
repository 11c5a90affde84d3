"""λ as a request carries it: `SamplingParams(extra_args={"realign_lambda": λ})`, or `vllm_xargs` over HTTP."""

from __future__ import annotations

import math
import os
from numbers import Real


LAMBDA_KEY = "realign_lambda"
# The launch setting: a number used for requests that give no λ, or "required" to refuse such requests at admission.
DEFAULT_LAMBDA_ENV = "TRL_REALIGN_DEFAULT_LAMBDA"
# The expanded (aligned) model, as `trl_realign.InRaForCausalLM` defaults to
DEFAULT_LAMBDA = 1.0
REQUIRED = "required"


def _finite_number(value, what: str) -> float:
    # bool is an int subclass, and a numeric string is still a string: both are refused rather than coerced
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range: infinite as far as λ goes
        value = math.inf if value > 0 else -math.inf
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}.")
    return value


def default_lambda() -> float | None:
    """λ for requests that give none (from `$TRL_REALIGN_DEFAULT_LAMBDA`, else 1.0); `None` when λ is required."""
    raw = os.environ.get(DEFAULT_LAMBDA_ENV, "").strip()
    if not raw:
        return DEFAULT_LAMBDA
    if raw.lower() == REQUIRED:
        return None
    try:
        number = float(raw)
    except ValueError:
        number = raw
    try:
        return _finite_number(number, f"${DEFAULT_LAMBDA_ENV}")
    except ValueError as error:
        raise ValueError(f"{error} Set it to a finite number or to {REQUIRED!r}.") from None


def request_lambda(sampling_params) -> float:
    """
    The λ of one request: its `extra_args["realign_lambda"]`, else the launch default.

    Raises `ValueError` with a message for the client when λ is not a finite number, or missing while the launch
    setting makes it required.
    """
    extra_args = getattr(sampling_params, "extra_args", None) or {}
    if LAMBDA_KEY not in extra_args:
        default = default_lambda()
        if default is None:
            raise ValueError(
                f"This server requires `{LAMBDA_KEY}` with every request ({DEFAULT_LAMBDA_ENV}={REQUIRED}): send "
                f'`extra_body={{"vllm_xargs": {{"{LAMBDA_KEY}": 0.5}}}}` (HTTP) or '
                f'`SamplingParams(extra_args={{"{LAMBDA_KEY}": 0.5}})`.'
            )
        return default
    return _finite_number(extra_args[LAMBDA_KEY], f"`{LAMBDA_KEY}`")
