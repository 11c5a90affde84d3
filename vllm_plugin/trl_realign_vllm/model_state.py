"""
Model Runner V2 (vLLM's GPU default): λ reaches the model's forward as a real tensor input, `realign_lambda` `[T]`.

The state keeps λ per request slot and, each step, gathers it per input token into one persistent buffer; capture
(`prepare_dummy_inputs`) and replay (`prepare_inputs`) hand the model views of that same buffer, so a CUDA graph
captured once reads each step's λ. Imported only by the worker that builds the model state (it needs MRV2's modules).

It overrides only `add_request`, `prepare_inputs` and `prepare_dummy_inputs`, whose signatures vLLM 0.32 to 0.34 keep;
what those versions changed around them (`input_batch.pcp`, `capture_inner_cudagraphs(stream=)`,
`compute_sample_logits`, a required `NewRequestData.prefill_token_ids`) stays with `DefaultModelState`. λ is written to
the device buffer in `add_request` itself, not through vLLM's `StagedWriteTensor`, so 0.34's by-reference staging does
not apply.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.worker.gpu.model_states.default import DefaultModelState

from .realign_lambda import DEFAULT_LAMBDA, LAMBDA_KEY, default_lambda, request_lambda


class RealignLambdaModelState(DefaultModelState):
    def __init__(self, vllm_config, model, encoder_cache, device: torch.device):
        super().__init__(vllm_config, model, encoder_cache, device)
        default = default_lambda()
        self.default_lambda = DEFAULT_LAMBDA if default is None else default
        self.request_lambdas = torch.full((self.max_num_reqs,), self.default_lambda, device=device)
        self.token_lambdas = torch.full((self.max_num_tokens,), self.default_lambda, device=device)
        self._token_index = torch.arange(self.max_num_tokens, dtype=torch.int32, device=device)

    def add_request(self, req_index: int, new_req_data) -> None:
        super().add_request(req_index, new_req_data)
        # Validated at admission; a slot is reused by later requests, so it is always overwritten here
        self.request_lambdas[req_index] = request_lambda(new_req_data.sampling_params)

    def prepare_inputs(self, input_batch, req_states) -> dict[str, Any]:
        model_inputs = super().prepare_inputs(input_batch, req_states)
        num_reqs, num_tokens = input_batch.num_reqs, input_batch.num_tokens_after_padding
        # token -> batch row (tokens of row r are [qsl[r], qsl[r+1])) -> request slot; padding takes the last row
        ends = input_batch.query_start_loc[1 : num_reqs + 1]
        rows = torch.searchsorted(ends, self._token_index[:num_tokens], right=True).clamp_(max=max(num_reqs - 1, 0))
        slots = input_batch.idx_mapping[rows]
        torch.index_select(self.request_lambdas, 0, slots, out=self.token_lambdas[:num_tokens])
        model_inputs[LAMBDA_KEY] = self.token_lambdas[:num_tokens]
        return model_inputs

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        model_inputs = super().prepare_dummy_inputs(num_reqs, num_tokens)
        model_inputs[LAMBDA_KEY] = self.token_lambdas[:num_tokens]
        return model_inputs
