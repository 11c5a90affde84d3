"""λ as the decode-time mixers (InRa, DeRa) take it: one number, or one value per batch row."""

from __future__ import annotations

import math
from numbers import Real

import torch


def check_realign_lambda(value, batch_size: int | None = None) -> float | torch.Tensor:
    """
    λ of `λ·z_aligned + (1−λ)·z_ref` as a float, or as a 1-D float32 tensor with one value per batch row.

    Lists and tuples become tensors (so that `generate()` repeats them with `num_return_sequences` and `num_beams` like
    the other per-row inputs) and a 0-d tensor becomes a float. Raises on anything non-finite or misshapen, and, given
    `batch_size`, on a per-row λ of another length.
    """
    if isinstance(value, (list, tuple)):
        value = torch.tensor([_as_float(v) for v in value], dtype=torch.float32)
    if isinstance(value, torch.Tensor) and value.dtype != torch.bool and not value.is_complex():
        if value.dim() == 0:
            value = value.item()
        elif value.dim() != 1:
            raise ValueError(
                "`realign_lambda` must be a number or a 1-D tensor with one value per batch row, got a tensor of "
                f"shape {tuple(value.shape)}."
            )
        else:
            value = value.float()
            if not torch.isfinite(value).all():
                raise ValueError(f"`realign_lambda` must be finite, got {value.tolist()}.")
            if batch_size is not None and value.shape[0] != batch_size:
                raise ValueError(
                    f"`realign_lambda` has {value.shape[0]} values but the batch has {batch_size} rows: pass one value "
                    "per input row (generate repeats them for `num_beams` / `num_return_sequences` itself) or a single "
                    "number."
                )
            return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            "`realign_lambda` must be a number or a tensor (or list) with one float per batch row, got "
            f"{type(value).__name__}."
        )
    value = _as_float(value)
    if not math.isfinite(value):
        raise ValueError(f"`realign_lambda` must be finite, got {value}.")
    return value


def _as_float(value) -> float:
    # An integer beyond float range (10**400) is infinite as a λ, not an OverflowError
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
