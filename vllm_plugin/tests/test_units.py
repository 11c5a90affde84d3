"""The plugin's pieces without an engine: λ parsing, the λ processor's row bookkeeping, the MRV2 model state on a
constructed batch, the two-path arithmetic, the load-time refusals, and registration."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from trl_realign_vllm import ARCHITECTURES, DEFAULT_LAMBDA_ENV, default_lambda, request_lambda
from trl_realign_vllm import lambda_processor
from trl_realign_vllm.checks import check_attention_backend, check_supported, num_adapters_of
from trl_realign_vllm.dual_path import DualPathAttention, mix_paths, run_both_paths
from trl_realign_vllm.lambda_processor import RealignLambdaProcessor, token_lambdas
from trl_realign_vllm.plugin import check_vllm_version, register


# vLLM 0.34 removed Model Runner V1 and its logits-processor API: the tests of the V1 route need 0.32 or 0.33
HAS_V1 = importlib.util.find_spec("vllm.v1.sample.logits_processor") is not None
needs_v1 = pytest.mark.skipif(not HAS_V1, reason="this vLLM has no Model Runner V1 (removed in 0.34)")


def params(**extra_args) -> SamplingParams:
    return SamplingParams(extra_args=extra_args or None)


# ------------------------------------------------------------------------------------------------------ λ parsing
def test_request_lambda_reads_extra_args_and_defaults(monkeypatch):
    monkeypatch.delenv(DEFAULT_LAMBDA_ENV, raising=False)
    assert request_lambda(params(realign_lambda=-0.5)) == -0.5
    assert request_lambda(params(realign_lambda=2)) == 2.0
    assert request_lambda(params()) == 1.0  # the stated default: the expanded model
    monkeypatch.setenv(DEFAULT_LAMBDA_ENV, "0.25")
    assert default_lambda() == 0.25 and request_lambda(params()) == 0.25
    monkeypatch.setenv(DEFAULT_LAMBDA_ENV, "required")
    assert default_lambda() is None
    with pytest.raises(ValueError, match="requires `realign_lambda`"):
        request_lambda(params())
    assert request_lambda(params(realign_lambda=0.0)) == 0.0


@pytest.mark.parametrize("huge", [10**400, -(10**400)], ids=["1e400", "-1e400"])
def test_lambda_beyond_float_range_is_a_value_error(huge):
    # vLLM 0.32's SamplingParams refuses ints beyond 64 bits itself; the plugin does not rely on it (an OverflowError
    # would be an HTTP 500): extra_args as a model state or another vLLM version may hand them over unchecked
    with pytest.raises(ValueError, match="`realign_lambda` must be finite"):
        request_lambda(SimpleNamespace(extra_args={"realign_lambda": huge}))


@pytest.mark.parametrize("setting", ["high", "nan", "inf", "-inf"])
def test_malformed_launch_default_is_refused(monkeypatch, setting):
    monkeypatch.setenv(DEFAULT_LAMBDA_ENV, setting)
    with pytest.raises(ValueError, match=DEFAULT_LAMBDA_ENV):
        default_lambda()


@pytest.mark.parametrize(
    "value, message",
    [("0.5", "must be a number"), (True, "must be a number"), (None, "must be a number"), ([0.5], "must be a number"),
     (math.nan, "must be finite"), (math.inf, "must be finite"), (-math.inf, "must be finite")],
)
def test_validate_params_refuses_bad_lambda(value, message):
    with pytest.raises(VLLMValidationError, match=message):
        RealignLambdaProcessor.validate_params(params(realign_lambda=value))
    RealignLambdaProcessor.validate_params(params(realign_lambda=1.5))  # no error


def test_validate_params_refuses_missing_lambda_where_required(monkeypatch):
    RealignLambdaProcessor.validate_params(params(other=1))
    monkeypatch.setenv(DEFAULT_LAMBDA_ENV, "required")
    with pytest.raises(VLLMValidationError, match="requires"):
        RealignLambdaProcessor.validate_params(params(other=1))


# ------------------------------------------------------------------------------- the λ processor (Model Runner V1)
def v1_processor(max_num_seqs=8) -> RealignLambdaProcessor:
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs), use_v2_model_runner=False)
    return RealignLambdaProcessor(config, torch.device("cpu"), False)


@needs_v1
def test_processor_rows_follow_adds_moves_and_swaps():
    from vllm.v1.sample.logits_processor.interface import BatchUpdate, MoveDirectionality

    # Against a plain list of which request sits in which row, under random batch changes like the runner's
    rng = random.Random(0)
    processor = v1_processor()
    rows: list[int | None] = [None] * 8  # request id per row
    lambdas = {}
    next_id = 0
    for _ in range(200):
        removed, added, moved = [], [], []
        occupied = [r for r, rid in enumerate(rows) if rid is not None]
        for r in rng.sample(occupied, k=min(len(occupied), rng.randint(0, 2))):
            rows[r] = None
            removed.append(r)
        for r in [r for r, rid in enumerate(rows) if rid is None][: rng.randint(0, 3)]:
            lambdas[next_id] = rng.choice([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, rng.uniform(-2, 3)])
            rows[r] = next_id
            added.append((r, params(realign_lambda=lambdas[next_id]), [1], []))
            next_id += 1
        for _ in range(rng.randint(0, 2)):
            a, b = rng.sample(range(8), 2)
            if rng.random() < 0.5:
                rows[a], rows[b] = rows[b], rows[a]
                moved.append((a, b, MoveDirectionality.SWAP))
            elif rows[a] is not None:
                rows[b], rows[a] = rows[a], None
                moved.append((a, b, MoveDirectionality.UNIDIRECTIONAL))
        processor.update_state(BatchUpdate(sum(r is not None for r in rows), removed, added, moved))
        for r, rid in enumerate(rows):
            if rid is not None:
                assert processor.row_lambdas[r].item() == pytest.approx(lambdas[rid], abs=1e-6), (r, rid)
    assert processor.apply(logits := torch.randn(3, 5)) is logits and processor.is_argmax_invariant()


@needs_v1
def test_token_lambdas_expand_rows_to_tokens():
    from vllm.v1.sample.logits_processor.interface import BatchUpdate

    processor = v1_processor()
    processor.update_state(
        BatchUpdate(3, [], [(i, params(realign_lambda=v), [1], []) for i, v in enumerate([0.5, -1.0, 2.0])], [])
    )
    # rows of 3, 1 and 2 tokens, then one padding token (takes the last row's λ)
    got = token_lambdas(torch.tensor([0, 3, 4, 6], dtype=torch.int32), 7, torch.device("cpu"))
    assert got.tolist() == [0.5, 0.5, 0.5, -1.0, 2.0, 2.0, 2.0]
    assert token_lambdas(None, 4, torch.device("cpu")).tolist() == [processor.default] * 4
    del processor
    with pytest.raises(RuntimeError, match="not active"):
        token_lambdas(None, 1, torch.device("cpu"))


# ---------------------------------------------------------------------------------------- Model Runner V2 state
@pytest.fixture(scope="module")
def mrv2_config(reference):
    from vllm.engine.arg_utils import EngineArgs

    spec = reference["families"]["llama"]
    args = EngineArgs(
        model=spec["paths"]["inra"], hf_overrides={"architectures": ["InRa" + spec["architecture"]]},
        dtype="float32", max_model_len=256, max_num_seqs=4, max_num_batched_tokens=32, block_size=32,
    )
    try:
        return args.create_engine_config()
    except RuntimeError as error:
        # vLLM 0.34's CPU platform refuses x86 without triton-cpu in its config fix-ups; the config it would have
        # built is all these tests need (the platform's own fix-ups stay unexercised here)
        if "requires Triton" not in str(error):
            raise
    from vllm.platforms import current_platform

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(current_platform), "check_and_update_config", classmethod(lambda cls, config: None))
        return args.create_engine_config()


def new_request(slot: int, lam) -> object:
    """The runner's `NewRequestData` (vLLM 0.34 made `prefill_token_ids` required)."""
    from vllm.v1.core.sched.output import NewRequestData

    prompt = [1, 2, 3]
    return NewRequestData(
        req_id=f"request-{slot}-{lam}", prompt_token_ids=prompt, mm_features=[],
        sampling_params=SamplingParams(extra_args=None if lam is None else {"realign_lambda": lam}),
        pooling_params=None, block_ids=([slot],), num_computed_tokens=0, lora_request=None, prefill_token_ids=prompt,
    )


def test_mrv2_state_gives_lambda_per_token_in_a_persistent_buffer(mrv2_config):
    from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers

    from trl_realign_vllm.model_state import RealignLambdaModelState
    from trl_realign_vllm.models import InRaLlamaForCausalLM

    assert InRaLlamaForCausalLM.get_model_state_cls() is RealignLambdaModelState
    device = torch.device("cpu")
    state = RealignLambdaModelState(mrv2_config, nn.Module(), None, device)
    slot_lambdas = {0: 0.5, 1: -0.5, 2: None, 3: 1.5}  # slot 2 gives no λ: the default
    for slot, lam in slot_lambdas.items():
        state.add_request(slot, new_request(slot, lam))

    # Batch rows in slot order 3, 0, 2 with 2, 5 and 1 tokens, padded to 10 tokens (as for a CUDA graph)
    buffers = InputBuffers(max_num_reqs=4, max_num_tokens=32, device=device)
    batch = dataclasses.replace(
        InputBatch.make_dummy(3, 8, buffers),
        idx_mapping=torch.tensor([3, 0, 2]),
        query_start_loc=torch.tensor([0, 2, 7, 8], dtype=torch.int32),
        num_tokens_after_padding=10,
    )
    captured = state.prepare_dummy_inputs(num_reqs=3, num_tokens=10)["realign_lambda"]
    got = state.prepare_inputs(batch, req_states=None)["realign_lambda"]
    want = [1.5] * 2 + [0.5] * 5 + [1.0] + [1.0] * 2  # padding takes the last row's λ
    assert got.tolist() == want
    # Replay reads what capture saw: the same storage, refilled in place
    assert got.data_ptr() == captured.data_ptr() and captured.tolist() == want

    # A reused slot takes the new request's λ
    state.add_request(0, new_request(0, 0.25))
    assert state.prepare_inputs(batch, req_states=None)["realign_lambda"][2].item() == 0.25


def test_inra_model_builds_and_loads_its_checkpoint_with_this_vllms_classes(mrv2_config, reference, tmp_path):
    # The narrowest piece of the model that runs without an engine (vLLM 0.34 cannot start one on this CPU): the class
    # built by vLLM's own layers (the second `Attention` per original layer, through this vLLM's `Attention`
    # signature) and every parameter loaded from the checkpoint's stock names, as vLLM's loader requires
    from safetensors.torch import load_file
    from vllm.config import set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment, destroy_model_parallel, init_distributed_environment,
        initialize_model_parallel,
    )

    from trl_realign_vllm.models import InRaLlamaForCausalLM

    spec = reference["families"]["llama"]
    with set_current_vllm_config(mrv2_config):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{tmp_path / 'init'}", backend="gloo"
        )
        try:
            initialize_model_parallel(1, 1)
            model = InRaLlamaForCausalLM(vllm_config=mrv2_config, prefix="")
            weights = {}
            for name in os.listdir(spec["paths"]["inra"]):
                if name.endswith(".safetensors"):
                    weights.update(load_file(os.path.join(spec["paths"]["inra"], name)))
            loaded = model.load_weights(weights.items())
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()
    assert {name for name, _ in model.named_parameters()} <= set(loaded)
    layers = model.model.layers
    assert model.num_adapters == spec["num_adapters"] == 2
    assert all(type(layer.self_attn.attn).__name__ == "Attention" for layer in layers[:2])
    # What vLLM's KV-cache planning reads: every attention registered by name, each with its own cache spec
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention import Attention

    registered = get_layers_from_vllm_config(mrv2_config, Attention)
    originals = range(2, len(layers))
    assert set(registered) == {f"model.layers.{i}.self_attn.attn" for i in range(len(layers))} | {
        f"model.layers.{i}.self_attn.attn_ref" for i in originals
    }
    for i in originals:
        stock, reference_attention = layers[i].self_attn.attn.aligned, layers[i].self_attn.attn.reference
        assert reference_attention.layer_name == f"model.layers.{i}.self_attn.attn_ref"
        for field in ("num_heads", "head_size", "num_kv_heads", "sliding_window", "attn_type"):
            assert getattr(reference_attention, field) == getattr(stock, field), (i, field)
        cache_spec = reference_attention.get_kv_cache_spec(mrv2_config)
        assert cache_spec is not None and cache_spec == stock.get_kv_cache_spec(mrv2_config)


def test_mrv2_admission_refuses_bad_lambda_through_vllms_validator(mrv2_config):
    # What the frontend runs at admission under Model Runner V2 (the only runner from 0.34 on): the validator that
    # vLLM builds from the `vllm.logits_processors` entry points, which only takes V2-interface classes
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2

    validate = build_custom_logits_processors_params_validator(())
    validate(params(realign_lambda=0.5))
    for value, message in (("0.5", "must be a number"), (math.inf, "must be finite"), (True, "must be a number")):
        with pytest.raises(VLLMValidationError, match=message):
            validate(params(realign_lambda=value))
    # The runner then builds the processor with the engine config and the request state, and hands it each request
    processor = RealignLambdaProcessor(mrv2_config, None)
    assert isinstance(processor, V2) and processor.add_request(0, params(realign_lambda=0.5)) is False
    assert processor.apply(logits := torch.randn(2, 5), None) is logits


def test_the_mix_is_in_forward_so_every_logits_hook_projects_it():
    # With tensor parallel and batch-sharded sampling (MRV2) vLLM calls `compute_logits_local` instead of
    # `compute_logits`, and 0.34's model state calls `compute_sample_logits`: the plugin defines none of them, so each
    # projects the rows that `forward` already mixed.
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    from trl_realign_vllm import models
    from trl_realign_vllm.model_state import RealignLambdaModelState

    hooks = ("compute_logits", "compute_logits_local", "compute_sample_logits")
    for name in ARCHITECTURES.values():
        cls = getattr(models, name)
        stock = cls.__mro__[2]  # InRa<Family>ForCausalLM(InRaMixin, <Family>ForCausalLM)
        assert cls.__mro__[1] is models.InRaMixin and stock.__name__ == name.removeprefix("InRa")
        for hook in hooks:
            assert getattr(cls, hook, None) is getattr(stock, hook, None), (name, hook)
    for hook in hooks:
        assert getattr(RealignLambdaModelState, hook, None) is getattr(DefaultModelState, hook, None), hook

    torch.manual_seed(0)
    model = SimpleNamespace(model=ToyDecoder(4), num_adapters=2)
    input_ids, positions = torch.tensor([1, 5, 7]), torch.tensor([0.0, 1.0, 2.0])
    lambdas = torch.tensor([0.0, 0.5, 1.5])
    with torch.no_grad():
        got = models.InRaMixin.forward(model, input_ids, positions, realign_lambda=lambdas)
        both = run_both_paths(model.model, 2, input_ids, positions, None)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, mix_paths(both, lambdas), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- two-path arithmetic
def test_mix_paths_is_the_lambda_mix_in_fp32():
    torch.manual_seed(0)
    normed = torch.randn(8, 16, dtype=torch.bfloat16)
    lambdas = torch.tensor([0.0, 1.0, 0.3, -0.5])
    reference, aligned = normed[:4].double(), normed[4:].double()
    want = lambdas.double()[:, None] * aligned + (1 - lambdas.double()[:, None]) * reference
    got = mix_paths(normed, lambdas)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.to(torch.bfloat16).double())
    assert torch.equal(got[0], normed[0]) and torch.equal(got[1], normed[5])  # exact at λ = 0 and 1


class Tag(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, query, key, value):
        return self.factor * (query + key + value)


def test_dual_path_attention_routes_rows():
    attention = DualPathAttention(aligned=Tag(2.0), reference=Tag(-1.0))
    q, k, v = (torch.randn(6, 4) for _ in range(3))
    got = attention(q, k, v)
    torch.testing.assert_close(got[:3], -(q + k + v)[:3])
    torch.testing.assert_close(got[3:], 2 * (q + k + v)[3:])


class ToyLayer(nn.Module):
    """vLLM's decoder-layer contract: (positions, hidden, residual) -> (delta, residual), pre-norm residual stream."""

    def __init__(self, seed):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, generator=torch.Generator().manual_seed(seed)))

    def forward(self, positions, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return torch.tanh(residual @ self.weight) + positions[:, None], residual


class ToyDecoder(nn.Module):
    def __init__(self, num_layers):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(ToyLayer(i) for i in range(num_layers))

    def embed_input_ids(self, input_ids):
        return self.embed(input_ids)

    def norm(self, hidden, residual):
        total = hidden + residual
        return total / total.norm(dim=-1, keepdim=True), total

    def single_path(self, input_ids, positions, layers):
        hidden, residual = self.embed_input_ids(input_ids), None
        for layer in layers:
            hidden, residual = layer(positions, hidden, residual)
        return self.norm(hidden, residual)[0]


def test_run_both_paths_equals_each_path_run_alone():
    torch.manual_seed(0)
    decoder, num_adapters = ToyDecoder(4), 2
    input_ids, positions = torch.tensor([1, 5, 7]), torch.tensor([0.0, 1.0, 2.0])
    with torch.no_grad():
        both = run_both_paths(decoder, num_adapters, input_ids, positions, None)
        path_a = decoder.single_path(input_ids, positions, decoder.layers[num_adapters:])
        path_b = decoder.single_path(input_ids, positions, decoder.layers)
    torch.testing.assert_close(both[:3], path_a, rtol=0, atol=0)
    torch.testing.assert_close(both[3:], path_b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- load-time refusals
def test_num_adapters_of_reads_and_checks_the_marker():
    config = SimpleNamespace(num_hidden_layers=3, layer_adapter={"num_adapters": 1, "base_num_hidden_layers": 2})
    assert num_adapters_of(config) == 1
    with pytest.raises(ValueError, match="no `layer_adapter` marker"):
        num_adapters_of(SimpleNamespace(num_hidden_layers=3))
    for marker in ({"num_adapters": 0}, {"num_adapters": "1"}, {"num_adapters": True}, [1]):
        with pytest.raises(ValueError, match="Malformed"):
            num_adapters_of(SimpleNamespace(num_hidden_layers=3, layer_adapter=marker))
    for marker in ({"num_adapters": 3}, {"num_adapters": 1, "base_num_hidden_layers": 3}):
        with pytest.raises(ValueError, match="cannot be"):
            num_adapters_of(SimpleNamespace(num_hidden_layers=3, layer_adapter=marker))


def engine_config(**changes):
    from vllm.config.compilation import CUDAGraphMode

    config = SimpleNamespace(
        parallel_config=SimpleNamespace(pipeline_parallel_size=1, decode_context_parallel_size=1,
                                        prefill_context_parallel_size=1),
        lora_config=None, speculative_config=None, quant_config=None,
        cache_config=SimpleNamespace(cache_dtype="auto"), model_config=SimpleNamespace(is_multimodal_model=False),
        compilation_config=SimpleNamespace(cudagraph_mode=CUDAGraphMode.NONE),
    )
    if HAS_V1:  # vLLM 0.34's config has no `use_v2_model_runner`: Model Runner V2 is its only runner
        config.use_v2_model_runner = False
    for path, value in changes.items():
        target = config
        *parents, name = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return config


@pytest.mark.parametrize(
    "change, message",
    [({"parallel_config.pipeline_parallel_size": 2}, "pipeline parallel"), ({"lora_config": object()}, "LoRA"),
     ({"speculative_config": object()}, "speculative decoding"), ({"quant_config": object()}, "quantization"),
     ({"cache_config.cache_dtype": "fp8"}, "quantized KV cache"),
     # Micro-batches each get their own attention metadata (a list), where λ's token rows are not looked for
     ({"parallel_config.use_ubatching": True}, "micro-batching")],
)
def test_unsupported_engine_settings_are_refused(change, message):
    hf_config = SimpleNamespace(layer_types=None)
    check_supported(engine_config(), hf_config)
    with pytest.raises(ValueError, match=message):
        check_supported(engine_config(**change), hf_config)


def test_mixed_sliding_layers_and_cuda_graph_modes_are_refused(monkeypatch):
    from vllm.config.compilation import CUDAGraphMode
    from vllm.platforms import current_platform

    with pytest.raises(ValueError, match="sliding-window and full-attention"):
        check_supported(engine_config(), SimpleNamespace(layer_types=["full_attention", "sliding_attention"]))
    with pytest.raises(ValueError, match="dual_chunk_attention_config"):  # path A's attention would be built without
        check_supported(engine_config(), SimpleNamespace(layer_types=None, dual_chunk_attention_config={"a": 1}))
    monkeypatch.setattr(current_platform, "is_cuda_alike", lambda: True)
    plain = SimpleNamespace(layer_types=None)
    with pytest.raises(ValueError, match="piecewise CUDA graphs"):
        check_supported(engine_config(**{"compilation_config.cudagraph_mode": CUDAGraphMode.FULL_AND_PIECEWISE}), plain)
    full = {"compilation_config.cudagraph_mode": CUDAGraphMode.FULL_DECODE_ONLY}
    if HAS_V1:
        with pytest.raises(ValueError, match="V1 model runner"):
            check_supported(engine_config(**full), plain)
        full["use_v2_model_runner"] = True
    check_supported(engine_config(**full), plain)


# ------------------------------------------------------------------------------------------------- the GPU check
def test_gpu_check_dry_run_passes_here(reference):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "check_gpu_mrv2.py")
    result = subprocess.run(
        [sys.executable, script, os.environ["TRL_REALIGN_VLLM_REFERENCE"], "--dry-run"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["ok"] and report["dry_run"] and len(report["plan"]["batches"]) == len(reference["families"]) + 1


def test_v1_attention_backends_without_query_start_loc_are_refused():
    from vllm.v1.attention.backend import AttentionMetadataBuilder
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    check_attention_backend(CPUAttentionBackend, use_v2_model_runner=False)

    @dataclasses.dataclass
    class PlannedMetadata:  # as FlashInfer's: per-request indptrs, no query_start_loc
        qo_indptr: torch.Tensor

    class Builder(AttentionMetadataBuilder[PlannedMetadata]):
        pass

    class PlannedBackend:
        get_name = staticmethod(lambda: "PLANNED")
        get_builder_cls = staticmethod(lambda: type("SubBuilder", (Builder,), {}))  # the generic is found up the MRO

    with pytest.raises(ValueError, match="query_start_loc, which the PLANNED attention backend"):
        check_attention_backend(PlannedBackend, use_v2_model_runner=False)
    check_attention_backend(PlannedBackend, use_v2_model_runner=True)  # V2 reads it from its own input batch


# ------------------------------------------------------------------------------------------------- registration
def test_version_guard():
    for admitted in ("0.32.0", "0.32.7", "0.33.0", "0.33.1", "0.34.0", "0.34.2rc1"):
        check_vllm_version(admitted)
    for other in ("0.31.2", "0.35.0", "1.32.0", "0.3.4"):
        with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32 to 0\.34 .*vLLM " + other.replace(".", r"\.")):
            check_vllm_version(other)


def test_entry_points_and_registered_architectures():
    from vllm import ModelRegistry

    plugins = {ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
    processors = {ep.value for ep in importlib.metadata.entry_points(group="vllm.logits_processors")}
    assert "trl_realign_vllm.plugin:register" in plugins
    assert "trl_realign_vllm.lambda_processor:RealignLambdaProcessor" in processors
    register()
    assert set(ARCHITECTURES.values()) <= set(ModelRegistry.get_supported_archs())
    # Both runners' loaders accept the processor class (Model Runner V1's where this vLLM still has it)
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2

    assert issubclass(RealignLambdaProcessor, V2)
    if HAS_V1:
        from vllm.v1.sample.logits_processor.interface import LogitsProcessor as V1

        assert issubclass(RealignLambdaProcessor, V1)
    assert lambda_processor.RealignLambdaProcessor is RealignLambdaProcessor
