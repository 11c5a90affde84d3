"""
Shared engines for the plugin tests (each engine load takes about a minute on a 2-core CPU).

The reference tokens come from the main environment through `$TRL_REALIGN_VLLM_REFERENCE` (the JSON file that
`scripts/make_reference.py` writes; `scripts/run_tests.sh` builds it). Each `engine_results` entry starts one engine,
runs everything the tests check on it, shuts it down and keeps the outputs for the session.
"""

from __future__ import annotations

import gc
import json
import os

import pytest


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Chunked prefill is forced by a 32-token step budget (prompts are up to 53 tokens), prefix caching shares the 32-token
# prefix block, and 8 sequences at a time make 30 requests join and leave the running batch (continuous batching).
ENGINE_ARGS = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=256,
    block_size=32,
    enable_prefix_caching=True,
    enable_chunked_prefill=True,
    max_num_batched_tokens=32,
    max_num_seqs=8,
    seed=0,
)


@pytest.fixture(scope="session")
def reference() -> dict:
    path = os.environ.get("TRL_REALIGN_VLLM_REFERENCE")
    if not path or not os.path.isfile(path):
        pytest.fail(
            "Set TRL_REALIGN_VLLM_REFERENCE to the reference.json written by scripts/make_reference.py (with the main "
            "environment's python), or run scripts/run_tests.sh, which does both."
        )
    with open(path) as f:
        return json.load(f)


def requests_of(reference: dict, family: str) -> list[tuple[float, int]]:
    """(λ, prompt index) of the mixed-λ batch: every λ of the reference with every prompt, interleaved."""
    prompts = reference["families"][family]["prompts"]
    return [(lam, i) for i in range(len(prompts)) for lam in reference["lambdas"]]


def expected_tokens(reference: dict, family: str) -> list[list[int]]:
    tokens = reference["families"][family]["tokens"]
    return [tokens[str(lam)][i] for lam, i in requests_of(reference, family)]


def greedy_params(lam=None, n: int = 1, new_tokens: int = 24):
    from vllm import SamplingParams

    extra_args = None if lam is None else {"realign_lambda": lam}
    # vLLM refuses n > 1 with temperature 0; sampling from the top-1 token is greedy decoding all the same
    sampling = dict(temperature=0.0) if n == 1 else dict(temperature=1.0, top_k=1)
    return SamplingParams(n=n, max_tokens=new_tokens, ignore_eos=True, extra_args=extra_args, **sampling)


class Engine:
    """An offline `vllm.LLM`, shut down (worker processes included) on `close`."""

    def __init__(self, model: str, architecture: str | None, **overrides):
        from vllm import LLM

        hf_overrides = dict(overrides.pop("hf_overrides", {}))
        if architecture is not None:
            hf_overrides["architectures"] = [architecture]
        self.llm = LLM(model=model, hf_overrides=hf_overrides or None, **{**ENGINE_ARGS, **overrides})

    def generate(self, prompts: list[list[int]], params) -> list[list[list[int]]]:
        """Token ids of every sample (`n` of them) of every prompt, in prompt order."""
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [[list(sample.token_ids) for sample in output.outputs] for output in outputs]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def run_mixed_batch(engine: Engine, reference: dict, family: str) -> list[list[int]]:
    prompts = reference["families"][family]["prompts"]
    requests = requests_of(reference, family)
    outputs = engine.generate(
        [prompts[i] for _, i in requests], [greedy_params(lam, new_tokens=reference["new_tokens"]) for lam, _ in requests]
    )
    return [samples[0] for samples in outputs]
