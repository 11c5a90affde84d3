"""
λ bookkeeping as a logits processor, loaded by vLLM for every engine through the `vllm.logits_processors` entry point.

It never changes logits (a processor sees one logit row per request, after penalties and masks, so it cannot mix two
paths). It does two things:
- admission: `validate_params` refuses a bad λ, which the OpenAI server turns into HTTP 400;
- Model Runner V1 (the runner on CPU, vLLM 0.32 and 0.33 only): `update_state` sees each step's persistent-batch order
  before the forward, so it keeps one λ per batch row, which the model reads back with `token_lambdas`.
vLLM's two runners load processors of two interfaces from the same entry point group; this class implements both where
both exist, and the V2 one only on vLLM 0.34, which deleted the V1 interface (on Model Runner V2, λ reaches the model
through `model_state.RealignLambdaModelState` instead).
"""

from __future__ import annotations

import weakref

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor

from .realign_lambda import DEFAULT_LAMBDA, LAMBDA_KEY, default_lambda, request_lambda
from .runners import HAS_MODEL_RUNNER_V1, uses_model_runner_v2


if HAS_MODEL_RUNNER_V1:
    from vllm.v1.sample.logits_processor.interface import LogitsProcessor as V1LogitsProcessor
    from vllm.v1.sample.logits_processor.interface import MoveDirectionality

    _INTERFACES = (V1LogitsProcessor, V2LogitsProcessor)
else:
    _INTERFACES = (V2LogitsProcessor,)


# The V1-runner instance of this process (one engine per worker process); the model reads per-row λ from it
_active: weakref.ReferenceType | None = None


class RealignLambdaProcessor(*_INTERFACES):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        try:
            request_lambda(sampling_params)
        except ValueError as error:
            raise VLLMValidationError(str(error), parameter=LAMBDA_KEY) from None

    def __init__(self, vllm_config, *runner_args) -> None:
        # V1 passes (device, is_pin_memory), V2 passes (req_states)
        global _active
        self.default = default_lambda()
        if self.default is None:  # required: admission lets no request through without λ
            self.default = DEFAULT_LAMBDA
        self.row_lambdas = torch.full((vllm_config.scheduler_config.max_num_seqs,), self.default)
        if not uses_model_runner_v2(vllm_config):
            _active = weakref.ref(self)

    # ------------------------------------------------------------------------------------------- Model Runner V1
    def is_argmax_invariant(self) -> bool:
        return True  # never changes logits

    def update_state(self, batch_update) -> None:
        if batch_update is None:
            return
        # vLLM's order: removed, added, moved. A removed row needs nothing (an added or moved request overwrites it).
        for index, params, _, _ in batch_update.added:
            self.row_lambdas[index] = request_lambda(params)
        for source, target, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self.row_lambdas[[source, target]] = self.row_lambdas[[target, source]]
            else:
                self.row_lambdas[target] = self.row_lambdas[source]

    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        return logits

    # ------------------------------------------------------------------------------------------- Model Runner V2
    def add_request(self, req_idx: int, sampling_params) -> bool:
        return False  # modifies no logits; the model state carries λ


def token_lambdas(query_start_loc: torch.Tensor | None, num_tokens: int, device) -> torch.Tensor:
    """
    λ of each of this step's `num_tokens` input tokens on Model Runner V1, from the rows' λ and the attention
    metadata's `query_start_loc` (the tokens of batch row r are [qsl[r], qsl[r+1])). Padding tokens get the last row's.
    """
    processor = _active() if _active is not None else None
    if processor is None:
        raise RuntimeError(
            "trl-realign-vllm's RealignLambdaProcessor is not active in this worker: check that the "
            "`vllm.logits_processors` entry point of trl-realign-vllm is installed and not filtered out."
        )
    if query_start_loc is None:  # a profiling or warm-up run: no requests, any λ will do
        return torch.full((num_tokens,), processor.default, device=device)
    query_start_loc = query_start_loc.to(device)
    num_rows = query_start_loc.shape[0] - 1
    token_index = torch.arange(num_tokens, device=device, dtype=query_start_loc.dtype)
    rows = torch.searchsorted(query_start_loc[1:], token_index, right=True).clamp_(max=num_rows - 1)
    return processor.row_lambdas.to(device)[rows]
