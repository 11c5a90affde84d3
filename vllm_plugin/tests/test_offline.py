"""Offline `vllm.LLM` (Model Runner V1, CPU) against the main package's `InRaForCausalLM.generate` tokens."""

from __future__ import annotations

import math

import pytest

from conftest import Engine, expected_tokens, greedy_params, requests_of, run_mixed_batch


# family -> how its engine is launched: the marked checkpoint, or (Mistral) the plain L+n one with num_adapters given
LAUNCH = {"llama": "inra", "qwen2": "inra", "mistral": "plain"}
BAD_LAMBDAS = {"string": "high", "nan": math.nan, "inf": math.inf, "bool": True}


def inra_engine(reference, family, **overrides) -> Engine:
    spec = reference["families"][family]
    hf_overrides = {}
    if LAUNCH[family] == "plain":
        hf_overrides["layer_adapter"] = {"num_adapters": spec["num_adapters"]}
    return Engine(spec["paths"][LAUNCH[family]], "InRa" + spec["architecture"], hf_overrides=hf_overrides, **overrides)


def refusal(engine: Engine, prompt, params) -> str:
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as error:
        engine.generate([prompt], params)
    return str(error.value)


@pytest.fixture(scope="session")
def runs(reference):
    """family -> what its TP1 engine produced (one engine load per family, in this process's session)."""
    cache = {}

    def run(family):
        if family in cache:
            return cache[family]
        engine = inra_engine(reference, family)
        try:
            result = {"mixed": run_mixed_batch(engine, reference, family)}
            if family == "llama":
                prompts = reference["families"][family]["prompts"]
                new = reference["new_tokens"]
                result["n2"] = {lam: engine.generate(prompts, greedy_params(lam, n=2, new_tokens=new)) for lam in (0.5, 1.5)}
                result["no_lambda"] = [s[0] for s in engine.generate(prompts, greedy_params(new_tokens=new))]
                result["refusals"] = {
                    name: refusal(engine, prompts[0], greedy_params(value, new_tokens=new))
                    for name, value in BAD_LAMBDAS.items()
                }
                # The engine still serves after the refusals
                result["after_refusals"] = engine.generate([prompts[0]], greedy_params(0.25, new_tokens=new))[0][0]
        finally:
            engine.close()
        cache[family] = result
        return result

    return run


@pytest.mark.parametrize("family", sorted(LAUNCH))
def test_mixed_lambda_batch_matches_transformers(reference, runs, family):
    got = runs(family)["mixed"]
    want = expected_tokens(reference, family)
    mismatches = [(lam, i) for (lam, i), g, w in zip(requests_of(reference, family), got, want) if g != w]
    assert not mismatches, f"{len(mismatches)}/{len(want)} (λ, prompt) pairs differ from InRaForCausalLM: {mismatches}"


def test_each_of_n_greedy_samples_matches(reference, runs):
    tokens = reference["families"]["llama"]["tokens"]
    for lam, outputs in runs("llama")["n2"].items():
        for i, samples in enumerate(outputs):
            assert samples == [tokens[str(lam)][i]] * 2, (lam, i)


def test_request_without_lambda_gets_the_default(reference, runs):
    # $TRL_REALIGN_DEFAULT_LAMBDA unset: 1.0, the expanded model
    assert runs("llama")["no_lambda"] == reference["families"]["llama"]["tokens"]["1.0"]


def test_bad_lambda_refused_at_admission_and_engine_keeps_serving(reference, runs):
    result = runs("llama")
    assert "must be a number" in result["refusals"]["string"]
    assert "must be a number" in result["refusals"]["bool"]
    assert "must be finite" in result["refusals"]["nan"]
    assert "must be finite" in result["refusals"]["inf"]
    assert result["after_refusals"] == reference["families"]["llama"]["tokens"]["0.25"][0]


def test_lambda_zero_equals_stock_vllm_on_the_base_checkpoint(reference, runs):
    spec = reference["families"]["llama"]
    stock = Engine(spec["paths"]["base"], None)
    try:
        base_tokens = [s[0] for s in stock.generate(spec["prompts"], greedy_params(new_tokens=reference["new_tokens"]))]
    finally:
        stock.close()
    inra_at_zero = [g for (lam, _), g in zip(requests_of(reference, "llama"), runs("llama")["mixed"]) if lam == 0.0]
    assert inra_at_zero == base_tokens


def test_tensor_parallel_2_equals_1(reference, runs, monkeypatch):
    # Two CPU workers, gloo; one core each
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    engine = inra_engine(reference, "qwen2", tensor_parallel_size=2, distributed_executor_backend="mp")
    try:
        tp2 = run_mixed_batch(engine, reference, "qwen2")
    finally:
        engine.close()
    assert tp2 == runs("qwen2")["mixed"]
