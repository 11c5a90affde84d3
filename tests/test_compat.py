"""The guarded private hooks: each works on the installed versions and fails loudly, naming versions, when changed."""

import argparse
import contextlib
import sys

import pytest
import torch
from packaging.version import Version
from torch import nn

from trl_realign import _compat
from trl_realign._compat import PrivateAPIError


@pytest.fixture(autouse=True)
def fresh_lookups():
    # Some checks are cached per process; a monkeypatched library must be looked at afresh, and the real one after
    _compat.cache_kwarg.cache_clear()
    _compat.check_cache_layer_api.cache_clear()
    yield
    _compat.cache_kwarg.cache_clear()
    _compat.check_cache_layer_api.cache_clear()


def assert_names_versions(error, distribution):
    message = str(error.value)
    assert distribution in message and _compat.installed_version(distribution) in message
    assert _compat.TESTED_RANGES[distribution] in message


def test_cache_kwarg_follows_the_installed_transformers(monkeypatch):
    import transformers
    import transformers.masking_utils

    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert _compat.cache_kwarg() == expected

    def renamed(config, inputs_embeds, attention_mask, kv_state, position_ids=None):
        pass

    _compat.cache_kwarg.cache_clear()
    monkeypatch.setattr(transformers.masking_utils, "create_causal_mask", renamed)
    with pytest.raises(PrivateAPIError, match="create_causal_mask") as error:
        _compat.cache_kwarg()
    assert_names_versions(error, "transformers")


def test_merge_cache_arguments():
    cache = object()
    assert _compat.merge_cache_arguments(cache, None) is cache
    assert _compat.merge_cache_arguments(None, cache) is cache
    assert _compat.merge_cache_arguments(None, None) is None
    with pytest.raises(ValueError, match="not both"):
        _compat.merge_cache_arguments(cache, object())


def test_cache_layer_api_is_checked(monkeypatch):
    from transformers.cache_utils import Cache

    _compat.check_cache_layer_api()  # the installed transformers passes
    _compat.check_cache_layer_api.cache_clear()

    def reshaped(self, query_length, layer_index, extra=None):
        pass

    monkeypatch.setattr(Cache, "get_mask_sizes", reshaped)
    with pytest.raises(PrivateAPIError, match="get_mask_sizes") as error:
        _compat.check_cache_layer_api()
    assert_names_versions(error, "transformers")


def test_addmm_fp32_accumulates_in_fp32_and_fails_loudly_when_trl_changes(monkeypatch):
    import trl.kernels.chunked_logprob as chunked_logprob

    a, b = torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(4, 5, dtype=torch.bfloat16)
    acc = torch.ones(3, 5)
    _compat.addmm_fp32(acc, a, b)
    torch.testing.assert_close(acc, 1 + a.float() @ b.float())

    monkeypatch.setattr(chunked_logprob, "_addmm_fp32", lambda out, x, y, beta=1: None)
    with pytest.raises(PrivateAPIError, match=r"takes \(out, x, y, beta\) instead of \(acc, a, b") as error:
        _compat.addmm_fp32(acc, a, b)
    assert_names_versions(error, "trl")
    monkeypatch.delattr(chunked_logprob, "_addmm_fp32")
    with pytest.raises(PrivateAPIError, match="_addmm_fp32` from trl, which does not exist"):
        _compat.addmm_fp32(acc, a, b)


def test_maybe_gather_lm_head_ctx_is_a_null_context_without_zero3(monkeypatch):
    import trl.trainer.utils

    weight = nn.Parameter(torch.ones(2, 2))
    with _compat.maybe_gather_lm_head_ctx(weight):
        assert torch.equal(weight, torch.ones(2, 2))
    monkeypatch.delattr(trl.trainer.utils, "maybe_gather_lm_head_ctx")
    with pytest.raises(PrivateAPIError, match="maybe_gather_lm_head_ctx") as error:
        _compat.maybe_gather_lm_head_ctx(weight)
    assert_names_versions(error, "trl")


def test_forward_redirection_runs_the_method_through_the_wrapper(monkeypatch):
    import trl.models.utils

    calls = []

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            calls.append("wrapper")
            return self.inner(*args, **kwargs)

    inner = nn.Linear(2, 2)
    out = _compat.forward_redirection()(Wrapper(inner), inner, lambda x: x * 3, torch.ones(2))
    assert torch.equal(out, torch.full((2,), 3.0)) and calls == ["wrapper"]

    monkeypatch.delattr(trl.models.utils, "_ForwardRedirection")
    with pytest.raises(PrivateAPIError, match="_ForwardRedirection") as error:
        _compat.forward_redirection()
    assert_names_versions(error, "trl")


def test_trainer_metrics():
    class Trainer:
        _metrics = {"train": {"loss": []}, "eval": {}}

    assert _compat.trainer_metrics(Trainer(), "train") is Trainer._metrics["train"]
    with pytest.raises(PrivateAPIError, match=r"_metrics\['train'\]") as error:
        _compat.trainer_metrics(object(), "train")
    assert_names_versions(error, "trl")


def test_full_shape_reads_deepspeeds_record_of_a_partitioned_parameter():
    assert _compat.full_shape(nn.Parameter(torch.ones(3, 2))) == (3, 2)
    partitioned = nn.Parameter(torch.empty(0))
    partitioned.ds_shape = torch.Size([7, 2])
    assert _compat.full_shape(partitioned) == (7, 2)
    with pytest.raises(PrivateAPIError, match="ds_shape") as error:
        _compat.full_shape(nn.Parameter(torch.empty(0)))
    assert_names_versions(error, "deepspeed")


def test_require_deepspeed_names_the_extra(monkeypatch):
    _compat.require_deepspeed("ZeRO training")  # installed with the test extra
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ImportError, match=r"ZeRO training needs DeepSpeed.*trl-realign\[deepspeed\]"):
        _compat.require_deepspeed("ZeRO training")


def test_parser_actions():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float)
    assert [action.dest for action in _compat.parser_actions(parser)] == ["help", "lr"]
    parser._actions = None
    with pytest.raises(PrivateAPIError, match="_actions"):
        _compat.parser_actions(parser)


def test_lookup_checks_the_call_signature_of_a_class():
    class Hook:
        def __call__(self, wrapper_module, original_module, method):
            pass

    module = type(sys)("fake_hooks")
    module.Hook = Hook
    with contextlib.ExitStack() as stack:
        stack.callback(sys.modules.pop, "fake_hooks", None)
        sys.modules["fake_hooks"] = module
        assert _compat.lookup("trl", "fake_hooks", "Hook", ("wrapper_module", "original_module")) is Hook
        with pytest.raises(PrivateAPIError, match=r"takes \(wrapper_module, original_module, method\)"):
            _compat.lookup("trl", "fake_hooks", "Hook", ("module", "method"))


def test_the_zero_configs_ask_for_the_deepspeed_extra(monkeypatch):
    from trl_realign.cli import launch

    assert launch.accelerate_config_path("zero2").endswith("zero2.yaml")
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ImportError, match=r"--accelerate_config zero2` needs DeepSpeed.*trl-realign\[deepspeed\]"):
        launch.accelerate_config_path("zero2")
